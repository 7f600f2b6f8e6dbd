"""desta: a reproducible pipeline for DeSTA2.5-style large audio language models (self-generated alignment)."""

__version__ = "0.1.0"
