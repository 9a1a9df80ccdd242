"""Data sources: where datasets come from and how their files are read safely. One module
per data source, and the safety checks they share (paths). `captioner prepare` turns a
source's items into a dataset in the CS231n layout.

- paths: the one check that a picture name or zip member stays inside its folder, and
  the one way a zip member is read (its declared size bounded first).
- coco: COCO-format annotations (any captions json) and the COCO 2014 zips with
  Karpathy's or the official split.
"""
