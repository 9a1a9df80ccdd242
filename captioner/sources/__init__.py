"""Data sources: where datasets come from and how their files are read safely."""
