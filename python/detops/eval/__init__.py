"""Evaluation metrics: COCO-style detection/instance-segmentation mAP equal to
pycocotools' (:mod:`detops.eval.coco`), semantic-segmentation metrics
(:mod:`detops.eval.segmentation`) and COCO mask encodings (:mod:`detops.eval.mask`).

Import explicitly: ``import detops.eval``.
"""

from . import mask
from .coco import (
    STAT_NAMES,
    COCOEvalResult,
    COCOParams,
    MeanAveragePrecision,
    coco_evaluate,
    coco_stats,
    plot_pr_curves,
)
from .segmentation import (
    SegmentationMetrics,
    confusion_matrix,
    segmentation_scores,
)

__all__ = [
    "STAT_NAMES",
    "COCOEvalResult",
    "COCOParams",
    "MeanAveragePrecision",
    "coco_evaluate",
    "coco_stats",
    "plot_pr_curves",
    "SegmentationMetrics",
    "confusion_matrix",
    "segmentation_scores",
    "mask",
]

__data_docs__ = {
    "STAT_NAMES": "The names of the 12 COCO summary numbers, in ``COCOeval.stats`` order, as torchmetrics "
                  "names them (``map``, ``map_50``, ``map_75``, ``map_small``, ..., ``mar_large``).",
}
