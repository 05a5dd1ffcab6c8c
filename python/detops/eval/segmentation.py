"""Semantic-segmentation metrics: confusion matrix, per-class IoU, mIoU, pixel
accuracy and mean class accuracy, with an ignore index. Runs where the tensors
are (one ``bincount`` per call, so GPU inputs stay on the GPU)."""

from __future__ import annotations

import torch
from torch import Tensor

from .distributed import all_reduce_sum, is_distributed

__all__ = ["confusion_matrix", "segmentation_scores", "SegmentationMetrics"]


def _check_labels(pred: Tensor, target: Tensor, num_classes: int) -> None:
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError("pred and target must be torch.Tensors")
    if pred.is_floating_point() or target.is_floating_point() or pred.dtype == torch.bool:
        raise TypeError(
            "pred and target must be integer class maps (take argmax of logits first), "
            f"got {pred.dtype} and {target.dtype}"
        )
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {list(pred.shape)} and {list(target.shape)}")
    if pred.device != target.device:
        raise ValueError(f"pred and target must be on the same device, got {pred.device} and {target.device}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """Confusion matrix ``[C, C]`` (int64): entry ``[i, j]`` counts pixels of true
    class ``i`` predicted as ``j``.

    Args:
        pred: predicted class per pixel, any shape (e.g. ``[N, H, W]``), integer.
        target: true class per pixel, same shape.
        num_classes: C.
        ignore_index: target value whose pixels are skipped (None: none skipped).

    Raises ValueError for labels outside ``[0, C)`` (other than ``ignore_index``
    in the target).
    """
    _check_labels(pred, target, num_classes)
    p = pred.reshape(-1).to(torch.int64)
    t = target.reshape(-1).to(torch.int64)
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    if t.numel():
        if int(t.min()) < 0 or int(t.max()) >= num_classes:
            raise ValueError(f"target has labels outside [0, {num_classes}) (ignore_index={ignore_index})")
        if int(p.min()) < 0 or int(p.max()) >= num_classes:
            raise ValueError(f"pred has labels outside [0, {num_classes})")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(conf: Tensor) -> dict[str, Tensor]:
    """Scores from a confusion matrix ``[C, C]`` (rows = truth, columns = prediction).

    Returns float64 tensors: ``iou`` ``[C]`` (NaN for a class absent from both
    truth and prediction), ``miou`` (mean over classes with a defined IoU),
    ``pixel_accuracy`` (correct / counted pixels), ``class_accuracy`` ``[C]``
    (recall per class, NaN for classes absent from the truth), ``mean_class_accuracy``
    and ``frequency_weighted_iou``.
    """
    if conf.dim() != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"conf must be a square [C, C] matrix, got {list(conf.shape)}")
    c = conf.to(torch.float64)
    tp = torch.diagonal(c)
    true_count = c.sum(1)
    pred_count = c.sum(0)
    union = true_count + pred_count - tp
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    class_acc = torch.where(true_count > 0, tp / true_count.clamp(min=1), nan)
    total = c.sum()
    freq = true_count / total.clamp(min=1)
    return {
        "iou": iou,
        "miou": torch.nanmean(iou),
        "pixel_accuracy": tp.sum() / total if total > 0 else torch.tensor(float("nan"), dtype=torch.float64),
        "class_accuracy": class_acc,
        "mean_class_accuracy": torch.nanmean(class_acc),
        "frequency_weighted_iou": (freq[union > 0] * iou[union > 0]).sum(),
    }


class SegmentationMetrics:
    """Accumulates a confusion matrix over batches: ``update(pred, target)`` with
    integer class maps (or logits ``[N, C, H, W]`` for pred, reduced by argmax over
    dim 1), ``compute()`` -> :func:`segmentation_scores` plus ``confusion_matrix``
    (summed over ranks in a ``torch.distributed`` process group)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255, sync_on_compute: bool = True) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.sync_on_compute = sync_on_compute
        self.reset()

    def reset(self) -> None:
        self.conf: Tensor | None = None

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.is_floating_point() and pred.dim() == target.dim() + 1 and pred.shape[1] == self.num_classes:
            pred = pred.argmax(1)
        conf = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.conf = conf if self.conf is None else self.conf + conf.to(self.conf.device)

    def compute(self) -> dict[str, Tensor]:
        """Scores of everything added so far; inside an initialised
        ``torch.distributed`` process group (and ``sync_on_compute``), of every
        rank's pixels: the confusion matrices are summed over ranks, so the
        result equals a single-process evaluation exactly."""
        conf = self.conf
        if self.sync_on_compute and is_distributed():
            local = conf if conf is not None else torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
            conf = all_reduce_sum(local)
        if conf is None:
            raise RuntimeError("compute() called before update()")
        out = segmentation_scores(conf)
        out["confusion_matrix"] = conf
        return out
