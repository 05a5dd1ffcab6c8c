"""DETR's set prediction (Carion et al., 2020): Hungarian matching of queries to
objects, the set loss, and a small DETR-style model.

Model boxes are ``(cx, cy, w, h)`` as fractions of the image size (DETR's
convention); postprocessed boxes are ``(x1, y1, x2, y2)`` in pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from .. import ops

__all__ = ["HungarianMatcher", "SetCriterion", "DETR", "detr_postprocess"]


class HungarianMatcher(nn.Module):
    """One-to-one matching of predictions to targets with minimum total cost
    ``cost_class * (-p[target class]) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU)``.

    The cost matrices of all images are computed as one ``[B * Q, sum T_i]`` block
    on the predictions' device and copied to the host once; then
    ``scipy.optimize.linear_sum_assignment`` solves each image's ``[Q, T_i]`` block.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("at least one of cost_class, cost_bbox, cost_giou must be non-zero")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def cost_matrix(self, pred_logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor) -> Tensor:
        """``[P, C + 1]`` logits and ``[P, 4]`` boxes against ``[T]`` labels and ``[T, 4]`` boxes -> ``[P, T]``."""
        prob = pred_logits.float().softmax(-1)
        c = -prob[:, labels] * self.cost_class
        c = c + torch.cdist(pred_boxes.float(), boxes.float(), p=1) * self.cost_bbox
        giou = ops.generalized_box_iou(box_convert(pred_boxes.float(), "cxcywh", "xyxy"),
                                       box_convert(boxes.float(), "cxcywh", "xyxy"))
        return c - giou * self.cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        Args:
            outputs: ``{"pred_logits": [B, Q, C + 1], "pred_boxes": [B, Q, 4] cxcywh}``.
            targets: B dicts ``{"labels": [T_i] int64, "boxes": [T_i, 4] cxcywh}`` (``T_i`` may be 0).

        Returns:
            B pairs ``(query_indices [M_i], target_indices [M_i])`` int64 on the CPU,
            ``M_i = min(Q, T_i)``, sorted by query index.
        """
        B, Q = outputs["pred_logits"].shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(B)]
        labels = torch.cat([t["labels"] for t in targets])
        boxes = torch.cat([t["boxes"] for t in targets])
        cost = self.cost_matrix(outputs["pred_logits"].flatten(0, 1), outputs["pred_boxes"].flatten(0, 1),
                                labels, boxes)
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError as e:  # scipy is in the "models" extra, not a core dependency
            raise ImportError("HungarianMatcher needs scipy: pip install 'detops[models]' (or scipy)") from e
        cost = cost.view(B, Q, -1).cpu()  # the one device-to-host copy
        result = []
        for i, block in enumerate(cost.split(sizes, -1)):
            if sizes[i] == 0:
                result.append((empty, empty))
                continue
            q, t = linear_sum_assignment(block[i].numpy())
            result.append((torch.as_tensor(q, dtype=torch.int64), torch.as_tensor(t, dtype=torch.int64)))
        return result


class SetCriterion(nn.Module):
    """DETR's set loss after Hungarian matching.

    * ``loss_ce``: cross-entropy over ``C + 1`` classes (the last is "no object") on
      every query; unmatched queries target "no object", weighted ``eos_coef``.
    * ``loss_bbox``: L1 on matched ``cxcywh`` boxes, per target box.
    * ``loss_giou``: ``1 - GIoU`` on matched boxes (``detops.generalized_box_iou_loss``),
      per target box.

    ``forward(outputs, targets)`` (shapes as :meth:`HungarianMatcher.forward`) returns
    ``{"loss_ce", "loss_bbox", "loss_giou", "loss"}`` scalars, ``loss`` being the weighted sum.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None, eos_coef: float = 0.1,
                 weight_ce: float = 1.0, weight_bbox: float = 5.0, weight_giou: float = 2.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher()
        self.weights = {"loss_ce": weight_ce, "loss_bbox": weight_bbox, "loss_giou": weight_giou}
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]
        device = logits.device
        indices = self.matcher(outputs, targets)
        batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device)
        query = torch.cat([q for q, _ in indices]).to(device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        matched_labels = torch.cat([t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)])
        target_classes[batch, query] = matched_labels.to(device)
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.dtype))
        num_boxes = max(sum(len(t["boxes"]) for t in targets), 1)
        src = pred_boxes[batch, query]
        tgt = torch.cat([t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, indices)]).to(src)
        loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_boxes
        loss_giou = ops.generalized_box_iou_loss(box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"),
                                                 reduction="sum") / num_boxes
        losses = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        losses["loss"] = sum(self.weights[k] * v for k, v in losses.items())
        return losses


class DETR(nn.Module):
    """A small DETR: backbone, 1x1 projection, learned 2-D positional embeddings,
    ``nn.Transformer`` and ``num_queries`` learned object queries.

    Args:
        backbone: ``[N, 3, H, W] -> [N, backbone_channels, h, w]`` (``h, w <= 50``).
        num_classes: C (the heads predict ``C + 1`` classes, the last "no object").

    ``forward(images) -> {"pred_logits": [N, Q, C + 1], "pred_boxes": [N, Q, 4]}``, boxes
    ``(cx, cy, w, h)`` in ``[0, 1]``.
    """

    def __init__(self, backbone: nn.Module, backbone_channels: int, num_classes: int, num_queries: int = 100,
                 hidden_dim: int = 256, nheads: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, max_size: int = 50) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_proj = nn.Conv2d(backbone_channels, hidden_dim, 1)
        self.transformer = nn.Transformer(hidden_dim, nheads, num_encoder_layers, num_decoder_layers,
                                          dim_feedforward, dropout, batch_first=True)
        self.query_pos = nn.Parameter(torch.rand(num_queries, hidden_dim))
        self.row_embed = nn.Parameter(torch.rand(max_size, hidden_dim // 2))
        self.col_embed = nn.Parameter(torch.rand(max_size, hidden_dim - hidden_dim // 2))
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, 4))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        f = self.input_proj(self.backbone(images))
        N, D, h, w = f.shape
        pos = torch.cat([self.col_embed[:w].unsqueeze(0).expand(h, -1, -1),
                         self.row_embed[:h].unsqueeze(1).expand(-1, w, -1)], -1).flatten(0, 1)
        src = f.flatten(2).transpose(1, 2) + pos  # [N, h * w, D]
        tgt = self.query_pos.unsqueeze(0).expand(N, -1, -1)
        hs = self.transformer(src, tgt)
        return {"pred_logits": self.class_embed(hs), "pred_boxes": self.bbox_embed(hs).sigmoid()}


def detr_postprocess(outputs: dict[str, Tensor], image_sizes: list[tuple[int, int]],
                     score_threshold: float = 0.0) -> list[dict[str, Tensor]]:
    """Per image ``{"boxes": [D, 4] (x1, y1, x2, y2) pixels, "scores": [D], "labels": [D]}``:
    each query's best real class (softmax without the "no object" class), queries scoring
    at most ``score_threshold`` dropped. ``image_sizes``: ``(H, W)`` per image."""
    prob = outputs["pred_logits"].softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    boxes = box_convert(outputs["pred_boxes"], "cxcywh", "xyxy")
    results = []
    for s, lab, b, (h, w) in zip(scores, labels, boxes, image_sizes):
        keep = s > score_threshold
        results.append({"boxes": b[keep] * b.new_tensor([w, h, w, h]), "scores": s[keep], "labels": lab[keep]})
    return results
