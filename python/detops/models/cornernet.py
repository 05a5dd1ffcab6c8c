"""CornerNet (Law and Deng, 2018): objects as paired top-left and bottom-right
corners. Corner pooling (``detops.corner_pool``), heads for corner heatmaps,
embeddings and offsets, the CornerNet focal loss, the pull/push embedding
losses, targets and decoding. Boxes are ``(x1, y1, x2, y2)`` in input pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops

__all__ = [
    "CornerPoolModule", "CornerHead", "CornerNet", "cornernet_focal_loss", "pull_push_loss", "gaussian_radius",
    "cornernet_targets", "cornernet_loss", "cornernet_decode",
]


def _conv_bn(cin: int, cout: int, k: int = 3, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class CornerPoolModule(nn.Module):
    """CornerNet's corner pooling module ``[N, C, H, W] -> [N, C, H, W]``.

    Two conv branches pooled in ``directions`` (``("top", "left")`` for top-left
    corners: the maxima below and to the right; ``("bottom", "right")`` for
    bottom-right), summed, a conv-BN, plus a 1x1 conv-BN shortcut, ReLU, and a conv.
    """

    def __init__(self, channels: int, directions: tuple[str, str], pool_channels: int = 128) -> None:
        super().__init__()
        self.pool1 = ops.CornerPool(directions[0])
        self.pool2 = ops.CornerPool(directions[1])
        self.p1_conv = _conv_bn(channels, pool_channels)
        self.p2_conv = _conv_bn(channels, pool_channels)
        self.p_conv = _conv_bn(pool_channels, channels, relu=False)
        self.shortcut = _conv_bn(channels, channels, k=1, relu=False)
        self.out_conv = _conv_bn(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        p = self.pool1(self.p1_conv(x)) + self.pool2(self.p2_conv(x))
        return self.out_conv(F.relu(self.p_conv(p) + self.shortcut(x)))


class CornerHead(nn.Module):
    """Corner pooling then three heads for one corner type:
    ``{"heatmap": [N, K, H, W] logits, "embedding": [N, 1, H, W], "offset": [N, 2, H, W]}``."""

    def __init__(self, channels: int, num_classes: int, directions: tuple[str, str], head_channels: int = 256,
                 pool_channels: int = 128) -> None:
        super().__init__()
        self.pool = CornerPoolModule(channels, directions, pool_channels)

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(channels, head_channels, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(head_channels, out, 1))

        self.heatmap, self.embedding, self.offset = head(num_classes), head(1), head(2)
        # Heatmaps start near the background prior (CornerNet: bias -2.19).
        nn.init.constant_(self.heatmap[-1].bias, -2.19)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.pool(x)
        return {"heatmap": self.heatmap(f), "embedding": self.embedding(f), "offset": self.offset(f)}


class CornerNet(nn.Module):
    """Backbone ``[N, 3, H, W] -> [N, C, H / stride, W / stride]`` plus top-left and
    bottom-right :class:`CornerHead` s.

    ``forward(images) -> {"tl": head outputs, "br": head outputs}`` (see :class:`CornerHead`).
    """

    def __init__(self, backbone: nn.Module, backbone_channels: int, num_classes: int, stride: int = 4,
                 head_channels: int = 256, pool_channels: int = 128) -> None:
        super().__init__()
        self.backbone, self.stride, self.num_classes = backbone, stride, num_classes
        self.tl = CornerHead(backbone_channels, num_classes, ("top", "left"), head_channels, pool_channels)
        self.br = CornerHead(backbone_channels, num_classes, ("bottom", "right"), head_channels, pool_channels)

    def forward(self, images: Tensor) -> dict[str, dict[str, Tensor]]:
        f = self.backbone(images)
        return {"tl": self.tl(f), "br": self.br(f)}


def cornernet_focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CornerNet's variant of focal loss on heatmaps with Gaussian-softened negatives.

    ``-1/P * sum(pos: (1 - p)^alpha log p; other: (1 - y)^beta p^alpha log(1 - p))`` with
    ``p = sigmoid(logits)``, positives where ``target == 1``, P their number (at least 1).
    ``logits``, ``target``: ``[N, K, H, W]``. Returns a scalar.
    """
    pos = target.eq(1)
    logp, log1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = logits.sigmoid()
    pos_loss = ((1 - p) ** alpha * logp)[pos].sum()
    neg_loss = ((1 - target) ** beta * p ** alpha * log1mp)[~pos].sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


def pull_push_loss(tl_embed: Tensor, br_embed: Tensor, mask: Tensor, delta: float = 1.0) -> tuple[Tensor, Tensor]:
    """CornerNet's associative embedding losses.

    Args:
        tl_embed, br_embed: ``[N, M]`` embeddings gathered at each object's two corners.
        mask: ``[N, M]`` bool, which of the M slots hold an object.

    Returns:
        ``(pull, push)``: pull draws an object's two embeddings to their mean,
        ``mean((e_tl - e)^2 + (e_br - e)^2)``; push separates the means of different
        objects of one image, ``mean over pairs j != k of max(0, delta - |e_j - e_k|)``.
    """
    m = mask.to(tl_embed.dtype)
    num = m.sum(1)  # [N]
    mean = (tl_embed + br_embed) / 2
    pull = (((tl_embed - mean) ** 2 + (br_embed - mean) ** 2) * m).sum() / m.sum().clamp(min=1)
    pair = m.unsqueeze(2) * m.unsqueeze(1) * (1 - torch.eye(m.shape[1], dtype=m.dtype, device=m.device))
    dist = F.relu(delta - (mean.unsqueeze(2) - mean.unsqueeze(1)).abs())
    pairs = (num * (num - 1)).clamp(min=1)
    push = ((dist * pair).sum((1, 2)) / pairs).sum() / max(int(tl_embed.shape[0]), 1)
    return pull, push


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CornerNet's radius: the largest corner displacement keeping IoU >= min_overlap with
    the ground-truth box (the smallest root of its three cases)."""
    a1, b1 = 1, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _draw_gaussian(heat: Tensor, x: int, y: int, radius: int) -> None:
    h, w = heat.shape
    sigma = (2 * radius + 1) / 6
    ys = torch.arange(max(0, y - radius), min(h, y + radius + 1), device=heat.device)
    xs = torch.arange(max(0, x - radius), min(w, x + radius + 1), device=heat.device)
    g = torch.exp(-((ys.view(-1, 1) - y) ** 2 + (xs.view(1, -1) - x) ** 2) / (2 * sigma * sigma)).to(heat.dtype)
    region = heat[ys[0]: ys[-1] + 1, xs[0]: xs[-1] + 1]
    torch.maximum(region, g, out=region)


def cornernet_targets(boxes: list[Tensor], labels: list[Tensor], num_classes: int, output_size: tuple[int, int],
                      stride: int, max_objects: int = 128) -> dict[str, Tensor]:
    """Ground truth for :func:`cornernet_loss`.

    Args:
        boxes: per image ``[T_i, 4]`` ``(x1, y1, x2, y2)`` input pixels.
        labels: per image ``[T_i]`` int64 classes in ``[0, num_classes)``.
        output_size: ``(h, w)`` of the heatmaps; ``stride`` = input size / output size.

    Returns:
        ``{"tl_heatmap", "br_heatmap": [N, K, h, w]`` (1 at corners, Gaussian around),
        ``"tl_index", "br_index": [N, M]`` flat corner positions, ``"tl_offset", "br_offset":
        [N, M, 2]`` sub-pixel ``(dx, dy)``, ``"mask": [N, M]`` bool``}``, ``M = max_objects``.
    """
    h, w = output_size
    N = len(boxes)
    device = boxes[0].device if boxes else torch.device("cpu")
    out = {
        "tl_heatmap": torch.zeros(N, num_classes, h, w, device=device),
        "br_heatmap": torch.zeros(N, num_classes, h, w, device=device),
        "tl_index": torch.zeros(N, max_objects, dtype=torch.int64, device=device),
        "br_index": torch.zeros(N, max_objects, dtype=torch.int64, device=device),
        "tl_offset": torch.zeros(N, max_objects, 2, device=device),
        "br_offset": torch.zeros(N, max_objects, 2, device=device),
        "mask": torch.zeros(N, max_objects, dtype=torch.bool, device=device),
    }
    for n, (b, lab) in enumerate(zip(boxes, labels)):
        for k, (box, c) in enumerate(zip(b.tolist()[:max_objects], lab.tolist()[:max_objects])):
            radius = max(0, int(gaussian_radius((box[3] - box[1]) / stride, (box[2] - box[0]) / stride)))
            for name, (x, y) in (("tl", box[:2]), ("br", box[2:])):
                fx = min(max(x / stride, 0.0), w - 1e-3)
                fy = min(max(y / stride, 0.0), h - 1e-3)
                ix, iy = int(fx), int(fy)
                _draw_gaussian(out[f"{name}_heatmap"][n, c], ix, iy, radius)
                out[f"{name}_heatmap"][n, c, iy, ix] = 1
                out[f"{name}_index"][n, k] = iy * w + ix
                out[f"{name}_offset"][n, k] = torch.tensor([fx - ix, fy - iy])
            out["mask"][n, k] = True
    return out


def _gather(feature: Tensor, index: Tensor) -> Tensor:
    """``[N, C, H, W]`` at flat positions ``[N, M]`` -> ``[N, M, C]``."""
    N, C = feature.shape[:2]
    return feature.flatten(2).gather(2, index.unsqueeze(1).expand(N, C, -1)).transpose(1, 2)


def cornernet_loss(outputs: dict[str, dict[str, Tensor]], targets: dict[str, Tensor], pull_weight: float = 0.1,
                   push_weight: float = 0.1, offset_weight: float = 1.0) -> dict[str, Tensor]:
    """Focal loss on both heatmaps, pull/push on the embeddings, smooth-L1 on the offsets
    (at object corners). ``outputs`` from :class:`CornerNet`, ``targets`` from
    :func:`cornernet_targets`. Returns ``{"focal", "pull", "push", "offset", "loss"}`` scalars."""
    mask = targets["mask"]
    focal = sum(cornernet_focal_loss(outputs[c]["heatmap"], targets[f"{c}_heatmap"]) for c in ("tl", "br"))
    tl_e = _gather(outputs["tl"]["embedding"], targets["tl_index"]).squeeze(-1)
    br_e = _gather(outputs["br"]["embedding"], targets["br_index"]).squeeze(-1)
    pull, push = pull_push_loss(tl_e, br_e, mask)
    num = mask.sum().clamp(min=1)
    offset = sum(
        (F.smooth_l1_loss(_gather(outputs[c]["offset"], targets[f"{c}_index"]), targets[f"{c}_offset"],
                          reduction="none").sum(-1) * mask).sum() / num
        for c in ("tl", "br")
    )
    parts = {"focal": focal, "pull": pull_weight * pull, "push": push_weight * push, "offset": offset_weight * offset}
    parts["loss"] = sum(parts.values())
    return parts


def _top_corners(heat: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Peaks of sigmoid heatmaps ``[N, C, H, W]`` (3x3 max-pool suppression) -> top-k
    ``(scores, classes, ys, xs)``, each ``[N, k]``."""
    N, C, H, W = heat.shape
    heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, idx = heat.flatten(1).topk(min(k, C * H * W))
    classes, pos = idx // (H * W), idx % (H * W)
    return scores, classes, pos // W, pos % W


def cornernet_decode(outputs: dict[str, dict[str, Tensor]], stride: int, k: int = 100,
                     embedding_threshold: float = 0.5, max_detections: int = 100,
                     image_size: tuple[int, int] | None = None, score_threshold: float = 0.0) -> list[dict[str, Tensor]]:
    """Pair corners into boxes.

    The top ``k`` top-left and bottom-right corners (heatmap peaks) form ``k x k``
    candidate pairs; a pair is kept when both corners have the same class, their
    embeddings differ by less than ``embedding_threshold``, and the bottom-right
    corner lies below and right of the top-left one. A box's score is the mean of
    its corners' scores (boxes scoring at most ``score_threshold`` are dropped);
    corners are moved by their offsets and scaled by ``stride``.

    Returns:
        per image ``{"boxes": [D, 4] (x1, y1, x2, y2) input pixels, "scores": [D],
        "labels": [D] int64}``, at most ``max_detections``, by decreasing score, clipped
        to ``image_size = (H, W)`` when given.
    """
    tl, br = outputs["tl"], outputs["br"]
    N = tl["heatmap"].shape[0]
    corners = {}
    for name, head in (("tl", tl), ("br", br)):
        s, c, y, x = _top_corners(head["heatmap"].sigmoid(), k)
        W = head["heatmap"].shape[-1]
        idx = y * W + x
        off = _gather(head["offset"], idx)
        emb = _gather(head["embedding"], idx).squeeze(-1)
        corners[name] = (s, c, (x + off[..., 0]) * stride, (y + off[..., 1]) * stride, emb)
    ts, tc, tx, ty, te = corners["tl"]
    bs, bc, bx, by, be = corners["br"]
    # [N, k, k]: rows are top-left corners, columns bottom-right ones.
    valid = (tc.unsqueeze(2) == bc.unsqueeze(1)) & ((te.unsqueeze(2) - be.unsqueeze(1)).abs() < embedding_threshold)
    valid &= (bx.unsqueeze(1) > tx.unsqueeze(2)) & (by.unsqueeze(1) > ty.unsqueeze(2))
    scores = torch.where(valid, (ts.unsqueeze(2) + bs.unsqueeze(1)) / 2, torch.full_like(valid, -1, dtype=ts.dtype))
    boxes = torch.stack(torch.broadcast_tensors(tx.unsqueeze(2), ty.unsqueeze(2), bx.unsqueeze(1), by.unsqueeze(1)), -1)
    labels = tc.unsqueeze(2).expand_as(valid)
    results = []
    for n in range(N):
        s, order = scores[n].flatten().topk(min(max_detections, scores[n].numel()))
        keep = s > score_threshold
        b = boxes[n].reshape(-1, 4)[order][keep]
        if image_size is not None:
            h, w = image_size
            b = torch.minimum(b.clamp(min=0), b.new_tensor([w, h, w, h]))
        results.append({"boxes": b, "scores": s[keep], "labels": labels[n].flatten()[order][keep]})
    return results
