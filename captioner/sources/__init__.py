"""Where captions and pictures come from: one module per data source, and the path
safety check they share (paths). `captioner prepare` turns a source's items into a
dataset in the CS231n layout.

- paths: the one check that a picture name or zip member stays inside its folder.
- coco: COCO-format annotations (any captions json) and the COCO 2014 zips with
  Karpathy's or the official split.
"""
