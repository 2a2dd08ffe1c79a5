"""alive: still image -> moderated, animated, encoded, C2PA-labelled story video."""

__version__ = "0.1.0"
