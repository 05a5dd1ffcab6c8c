"""Models assembled from detops ops (see each sub-package)."""

from . import detection  # noqa: F401
