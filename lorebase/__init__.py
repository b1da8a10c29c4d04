"""lorebase: the backend of "How I write backends", in Python."""

__version__ = "0.1.0"
