"""Models assembled from detops ops (see each sub-package)."""

from . import cornernet  # noqa: F401
from . import detection  # noqa: F401
from . import detr  # noqa: F401
from . import hourglass  # noqa: F401
from . import localization  # noqa: F401
from . import segmentation  # noqa: F401
from . import yolo  # noqa: F401
