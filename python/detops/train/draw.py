"""Pictures of predictions: boxes, labels and masks drawn on validation images."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["draw_detections", "draw_segmentations"]

_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c")


def _figure(n: int, title: str, cols: int = 4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, cols)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    fig.suptitle(title, fontsize=10)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def draw_detections(
    images: Sequence[Tensor],
    predictions: Sequence[dict[str, Tensor]],
    targets: Sequence[dict[str, Tensor]],
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
) -> None:
    """Write a PNG grid: each image ``[3, H, W]`` in ``[0, 1]`` with its
    predicted boxes ``(x1, y1, x2, y2)``, labels, scores and (where predicted)
    masks ``[N, 1, H, W]`` above ``score_threshold``, and the ground-truth boxes
    dashed in white."""
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    fig, axes = _figure(len(images), f"predictions (score >= {score_threshold}); ground truth dashed white")
    for ax, image, pred, target in zip(axes, images, predictions, targets):
        canvas = image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).clone()
        keep = pred["scores"].detach().cpu() >= score_threshold
        labels = pred["labels"].detach().cpu()[keep].tolist()
        if "masks" in pred:
            masks = pred["masks"].detach().cpu()[keep].reshape(-1, *canvas.shape[:2]) >= 0.5
            for m, label in zip(masks, labels):
                color = torch.tensor(matplotlib_rgb(_COLORS[label % len(_COLORS)]))
                canvas[m] = 0.5 * canvas[m] + 0.5 * color
        ax.imshow(canvas.numpy())
        for box in target["boxes"].cpu().tolist():
            ax.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False,
                                           edgecolor="white", linestyle="--", linewidth=1))
        boxes = pred["boxes"].detach().cpu()[keep].tolist()
        scores = pred["scores"].detach().cpu()[keep].tolist()
        for box, label, score in zip(boxes, labels, scores):
            color = _COLORS[label % len(_COLORS)]
            ax.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False,
                                           edgecolor=color, linewidth=1.5))
            name = class_names[label] if class_names is not None and label < len(class_names) else str(label)
            ax.text(box[0], box[1] - 1, f"{name} {score:.2f}", color="white", fontsize=6,
                    bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "linewidth": 0})
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_segmentations(
    images: Sequence[Tensor],
    predictions: Sequence[Tensor],
    targets: Sequence[Tensor],
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
) -> None:
    """Write a PNG: each image ``[3, H, W]`` beside its predicted class map
    ``[H, W]`` and the true one, in one colour per class."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    n = min(len(images), 4)
    fig, axes = _figure(3 * n, "image | prediction | ground truth", cols=3)
    cmap = ListedColormap(["black", *_COLORS])
    for k, (image, pred, target) in enumerate(zip(images[:n], predictions, targets)):
        a, b, c = axes[3 * k], axes[3 * k + 1], axes[3 * k + 2]
        a.imshow(image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
        b.imshow(pred.cpu().numpy(), cmap=cmap, vmin=0, vmax=len(_COLORS), interpolation="nearest")
        c.imshow(target.cpu().numpy(), cmap=cmap, vmin=0, vmax=len(_COLORS), interpolation="nearest")
    if class_names is not None:
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(class_names))]
        fig.legend(handles, list(class_names), loc="lower center", ncol=len(class_names), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def matplotlib_rgb(color: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(color)
