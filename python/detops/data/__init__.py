"""Data for training and evaluation with nothing downloaded: a deterministic
synthetic dataset of shapes (:class:`SyntheticShapes`), a loader for
COCO-format datasets on disk (:class:`CocoDetection`), and the transforms and
collate functions the models take.

Import explicitly: ``import detops.data``.
"""

from .coco import CocoDetection
from .synthetic import SHAPE_CLASSES, SyntheticShapes
from .transforms import Compose, InferenceSampler, RandomHorizontalFlip, collate_detection, collate_segmentation

__all__ = [
    "SHAPE_CLASSES",
    "SyntheticShapes",
    "CocoDetection",
    "Compose",
    "InferenceSampler",
    "RandomHorizontalFlip",
    "collate_detection",
    "collate_segmentation",
]

__data_docs__ = {
    "SHAPE_CLASSES": "Class names of :class:`SyntheticShapes` by label; label 0 is the background.",
}
