"""captioner: a NumPy image captioner you can read end to end."""

__version__ = "0.1.0"
