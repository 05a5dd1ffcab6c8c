"""COCO-style detection metrics (mAP / mAR) with exactly pycocotools' semantics,
vectorised in torch (CPU or GPU: the work runs where the tensors are).

* :func:`coco_stats` takes a COCO ground-truth dict and a list of COCO result
  dicts and returns the 12 numbers of ``COCOeval.stats``.
* :class:`MeanAveragePrecision` takes per-image dicts of tensors (boxes, scores,
  labels, masks) through ``update()`` and returns the metrics, per-class AP and
  the precision/recall arrays from ``compute()``.
* :func:`plot_pr_curves` writes a PNG of precision/recall curves.

Semantics copied from ``pycocotools.cocoeval.COCOeval`` (``evaluate`` +
``accumulate`` + ``summarize``): IoU thresholds .50:.05:.95, 101 recall points,
area ranges all/small/medium/large with inclusive bounds on the ground truth's
``area`` field, maxDets 1/10/100 per image and category, crowd ground truths
(IoU over the detection's area, matchable any number of times, ignored), greedy
matching of detections in descending score order (stable sort) to the best
still-free ground truth, non-ignored first, and -1 for categories without
ground truth.

How it is vectorised: detections and ground truths are sorted once into
(image, category) groups; the IoU of every same-group pair is computed in one
elementwise pass (boxes in torch; masks on their run-length encodings, see
:func:`detops.eval.mask.rle_pair_iou`); pairs below the lowest threshold can
never match and are dropped. Greedy matching is sequential only in the detection's rank inside its
group (at most maxDets steps); each step resolves every group, IoU threshold
and area range at once. Accumulation needs, for every true positive, the count
of false positives ranked above it in its category (one cumulative sum), then a
segment max per (threshold, area, maxDets, category, recall bin) gives the
interpolated precision without a per-category loop.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import operator
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, overload

import numpy as np
import torch
from torch import Tensor

from ..ops.box_iou import box_iof, box_iou
from . import mask as _mask
from .distributed import gather_objects, is_distributed

__all__ = [
    "COCOParams",
    "COCOEvalResult",
    "coco_evaluate",
    "coco_stats",
    "MeanAveragePrecision",
    "plot_pr_curves",
    "STAT_NAMES",
]

STAT_NAMES = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)

# Composite int64 sort keys are used below this bound (else chained stable sorts).
_KEY_LIMIT = 2**62
_EPS = float(np.spacing(1))  # pycocotools' np.spacing(1) in the precision denominator


@dataclass
class COCOParams:
    """pycocotools' ``Params`` for bbox/segm (same defaults, same float values)."""

    iou_thresholds: Sequence[float] = field(
        default_factory=lambda: np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1).tolist()
    )
    rec_thresholds: Sequence[float] = field(
        default_factory=lambda: np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1).tolist()
    )
    max_dets: Sequence[int] = (1, 10, 100)
    area_ranges: Sequence[tuple[float, float]] = (
        (0**2, 1e5**2),
        (0**2, 32**2),
        (32**2, 96**2),
        (96**2, 1e5**2),
    )
    area_labels: Sequence[str] = ("all", "small", "medium", "large")


@dataclass
class COCOEvalResult:
    """Accumulated results, in pycocotools' layout.

    Attributes:
        precision: ``[T, R, K, A, M]`` interpolated precision (-1 where a
            category has no ground truth in that area range).
        recall: ``[T, K, A, M]`` final recall (-1 likewise).
        stats: the 12 summary numbers of ``COCOeval.stats`` (float64 ``[12]``).
        params: the :class:`COCOParams` used.
        category_ids: the category ids, in the order of the K axis.
    """

    precision: Tensor
    recall: Tensor
    stats: Tensor
    params: COCOParams
    category_ids: list

    def per_class_ap(self, area: int = 0, max_det_index: int = -1) -> Tensor:
        """AP@[.5:.95] per category ``[K]`` (-1 for categories without ground truth)."""
        p = self.precision[:, :, :, area, max_det_index]  # [T, R, K]
        valid = p > -1
        total = torch.where(valid, p, torch.zeros_like(p)).sum((0, 1))
        n = valid.sum((0, 1))
        return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, -1.0))

    def pr_curve(
        self, category_id: Any, iou_threshold: float = 0.5, area: str = "all", max_dets: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Interpolated precision/recall curve of one category: ``(recall [R],
        precision [R])`` at the recall thresholds (precision -1 when the
        category has no ground truth in that area range)."""
        p = self.params
        if category_id not in self.category_ids:
            raise ValueError(f"unknown category id {category_id!r}")
        k = self.category_ids.index(category_id)
        t = int(np.argmin(np.abs(np.asarray(list(p.iou_thresholds)) - iou_threshold)))
        a = list(p.area_labels).index(area)
        mds = sorted(int(m) for m in p.max_dets)
        m = mds.index(max_dets) if max_dets is not None else len(mds) - 1
        recall = torch.tensor(list(p.rec_thresholds), dtype=torch.float64)
        return recall, self.precision[t, :, k, a, m].cpu()

    def per_class_ar(self, area: int = 0, max_det_index: int = -1) -> Tensor:
        """AR@[.5:.95] per category ``[K]`` at a maxDets setting (-1 without ground truth)."""
        r = self.recall[:, :, area, max_det_index]  # [T, K]
        valid = r > -1
        total = torch.where(valid, r, torch.zeros_like(r)).sum(0)
        n = valid.sum(0)
        return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, -1.0))


# ------------------------------------------------------------------ core


@dataclass
class _Instances:
    """Flat instance arrays. ``image``/``category`` are positions in the sorted
    image/category id lists; boxes are ``(x, y, w, h)`` float64."""

    image: Tensor
    category: Tensor
    boxes: Tensor
    area: Tensor
    score: Tensor | None = None  # detections
    crowd: Tensor | None = None  # ground truths
    id_nonzero: Tensor | None = None  # ground truths: pycocotools records matches by id
    masks: tuple | None = None  # segm: (run lengths, offsets, (h, w) per instance), see mask.rle_batch


def _pair_box_iou(d: Tensor, g: Tensor, crowd: Tensor) -> Tensor:
    """pycocotools' bbIou on pairs of ``(x, y, w, h)`` float64 boxes, bit for bit:
    detops' IoU kernels read xywh natively (areas ``w * h``, right edges
    ``x + w``, as pycocotools computes them), and crowd regions take the
    intersection over the detection's area (``box_iof``). Pairs that do not
    overlap are 0, as pycocotools skips them, zero-area ones (0/0) included."""
    iou = box_iou(d, g, fmt="xywh", aligned=True)
    iof = box_iof(d, g, fmt="xywh", aligned=True)
    return torch.where(crowd, iof, iou).nan_to_num(nan=0.0)


def _pair_mask_iou(dt: _Instances, gt: _Instances, pair_d: Tensor, pair_g: Tensor) -> Tensor:
    """Mask IoU of (detection, ground truth) pairs, on the RLE runs (see
    :func:`detops.eval.mask.rle_pair_iou`): exact integer counts, no decoding."""
    iou = _mask.rle_pair_iou(
        dt.masks, gt.masks, pair_d.cpu().numpy(), pair_g.cpu().numpy(), gt.crowd.cpu().numpy()
    )
    return torch.from_numpy(iou).to(pair_d.device)


def _segment_starts(sorted_keys: Tensor) -> Tensor:
    """For a sorted key array, the index where each element's run of equal keys starts."""
    n = sorted_keys.numel()
    pos = torch.arange(n, device=sorted_keys.device)
    is_start = torch.ones(n, dtype=torch.bool, device=sorted_keys.device)
    if n > 1:
        is_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), 0).values


@contextlib.contextmanager
def _intra_op_threads(n: int | None, device: torch.device):
    """Run with ``n`` intra-op CPU threads, restoring torch's setting after.
    The evaluation is a chain of many small ops: on CPU one thread avoids the
    fork/join overhead (4x faster here on a busy 2-core machine)."""
    if n is None or device.type != "cpu" or torch.get_num_threads() == n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def coco_evaluate(
    gt: _Instances,
    dt: _Instances,
    num_images: int,
    num_categories: int,
    iou_type: str = "bbox",
    params: COCOParams | None = None,
    category_ids: list | None = None,
    num_threads: int | None = 1,
) -> COCOEvalResult:
    """Evaluate flat instance arrays (see :func:`coco_stats` for the COCO-dict entry
    point and :class:`MeanAveragePrecision` for the tensor one). ``num_threads``:
    intra-op threads on CPU while evaluating (None: torch's current setting)."""
    with _intra_op_threads(num_threads, gt.boxes.device), torch.no_grad():
        return _coco_evaluate(gt, dt, num_images, num_categories, iou_type, params, category_ids)


def _coco_evaluate(
    gt: _Instances,
    dt: _Instances,
    num_images: int,
    num_categories: int,
    iou_type: str,
    params: COCOParams | None,
    category_ids: list | None,
) -> COCOEvalResult:
    p = params or COCOParams()
    device = gt.boxes.device
    f64, i64 = torch.float64, torch.int64
    thr = torch.tensor(list(p.iou_thresholds), dtype=f64, device=device)
    thr_eff = thr.clamp(max=1 - 1e-10)  # pycocotools: iou = min([t, 1 - 1e-10])
    rec_thr = torch.tensor(list(p.rec_thresholds), dtype=f64, device=device)
    max_dets = sorted(int(m) for m in p.max_dets)
    area_lo = torch.tensor([a[0] for a in p.area_ranges], dtype=f64, device=device)
    area_hi = torch.tensor([a[1] for a in p.area_ranges], dtype=f64, device=device)
    T, R, A, M, K = thr.numel(), rec_thr.numel(), area_lo.numel(), len(max_dets), num_categories
    max_det = max_dets[-1]

    # -- detections: sort by (image, category, -score) stably, keep the top maxDet
    # per group. One float sort turns scores into integer ranks (equal scores,
    # equal rank); the other sorts are stable sorts of integer keys.
    n_dt = dt.score.numel()
    by_score = torch.sort(-dt.score, stable=True).indices
    sorted_neg = -dt.score[by_score]
    new_score = torch.ones(n_dt, dtype=torch.bool, device=device)
    if n_dt > 1:
        new_score[1:] = sorted_neg[1:] != sorted_neg[:-1]
    score_rank = torch.empty(n_dt, dtype=i64, device=device)
    score_rank[by_score] = torch.cumsum(new_score, 0) - 1
    n_scores = int(score_rank.max()) + 1 if n_dt else 1
    fits = num_images * K * n_scores * max(max_det, 1) < _KEY_LIMIT
    d_group_all = dt.image * K + dt.category
    if fits:
        d_order = torch.sort(d_group_all * n_scores + score_rank, stable=True).indices
    else:  # composite key would overflow: two stable sorts
        d_order = by_score[torch.sort(d_group_all[by_score], stable=True).indices]
    d_group = d_group_all[d_order]
    d_rank = torch.arange(n_dt, device=device) - _segment_starts(d_group)
    keep = d_rank < max_det
    d_order, d_group, d_rank = d_order[keep], d_group[keep], d_rank[keep]
    D = d_order.numel()
    d_score_rank = score_rank[d_order]
    d_cat = dt.category[d_order]
    d_img = dt.image[d_order]
    # Accumulation order: per category by (-score, image, rank in group), i.e.
    # pycocotools' stable sort of the per-image lists concatenated in image order.
    if fits:
        acc = torch.sort((d_cat * n_scores + d_score_rank) * num_images + d_img, stable=True).indices
    else:
        acc = torch.sort(d_score_rank, stable=True).indices
        acc = acc[torch.sort(d_cat[acc], stable=True).indices]
    d_box = dt.boxes[d_order]

    # -- ground truths: sort by group stably (dataset order inside a group)
    g_group_raw = gt.image * K + gt.category
    g_order = torch.sort(g_group_raw, stable=True).indices
    g_group = g_group_raw[g_order]
    G = g_order.numel()
    g_crowd = gt.crowd[g_order]
    g_area = gt.area[g_order]
    g_valid_id = gt.id_nonzero[g_order]
    # gtIg per area range: crowd, or area outside [lo, hi]
    g_ignore = g_crowd[:, None] | (g_area[:, None] < area_lo) | (g_area[:, None] > area_hi)  # [G, A]
    # npig: non-ignored ground truths per (category, area)
    g_cat = gt.category[g_order]
    npig = torch.stack([torch.bincount(g_cat[~g_ignore[:, a]], minlength=K) for a in range(A)], 1)  # [K, A]

    # -- every (detection, ground truth) pair of the same group
    lo = torch.searchsorted(g_group, d_group, side="left")
    hi = torch.searchsorted(g_group, d_group, side="right")
    cnt = hi - lo
    P = int(cnt.sum())
    pair_d = torch.repeat_interleave(torch.arange(D, device=device), cnt, output_size=P)
    first = torch.cumsum(cnt, 0) - cnt
    pair_g = lo[pair_d] + torch.arange(P, device=device) - first[pair_d]
    pair_crowd = g_crowd[pair_g]
    if iou_type == "bbox":
        pair_iou = _pair_box_iou(d_box[pair_d], gt.boxes[g_order][pair_g], pair_crowd)
    else:
        pair_iou = _pair_mask_iou(dt, gt, d_order[pair_d], g_order[pair_g])

    # -- candidate pairs (IoU >= the lowest threshold; others can never match),
    # and the detections that have one ("slots"), numbered in accumulation order
    cand = pair_iou >= thr_eff.min()
    c_d, c_g, c_iou = pair_d[cand], pair_g[cand], pair_iou[cand]
    is_slot = torch.zeros(D, dtype=torch.bool, device=device)
    is_slot[c_d] = True
    a_is_slot = is_slot[acc]
    s_pos = a_is_slot.nonzero().squeeze(1)  # accumulation positions of the slots
    NS = s_pos.numel()
    slot_of = torch.full((D,), -1, dtype=i64, device=device)
    slot_of[acc[s_pos]] = torch.arange(NS, device=device)
    TA = T * A
    # Match flags per (threshold, area, slot): matched at all, matched to an
    # ignored ground truth, matched to a ground truth whose id is non-zero.
    m_has = torch.zeros(T, A, NS, dtype=torch.bool, device=device)
    m_ign = torch.zeros(T, A, NS, dtype=torch.bool, device=device)
    m_nz = torch.zeros(T, A, NS, dtype=torch.bool, device=device)

    # -- greedy matching, one detection rank at a time across all groups
    by_rank = torch.sort(d_rank[c_d], stable=True).indices  # pairs of one detection stay together
    c_d, c_g, c_iou = c_d[by_rank], c_g[by_rank], c_iou[by_rank]
    c_crowd = g_crowd[c_g]
    c_rank = d_rank[c_d]
    c_slot = slot_of[c_d]
    n_c = c_d.numel()
    new_det = torch.ones(n_c, dtype=torch.bool, device=device)
    if n_c > 1:
        new_det[1:] = c_d[1:] != c_d[:-1]
    c_local = torch.cumsum(new_det, 0) - 1  # consecutive detection index in rank order
    # Preference key, larger wins: non-ignored first, then higher IoU, then the
    # later ground truth in dataset order (pycocotools keeps the last of equals).
    if n_c:
        _, iou_rank = torch.unique(c_iou, return_inverse=True)
        n_iou = int(iou_rank.max()) + 1
    else:
        iou_rank, n_iou = c_iou.to(i64), 1
    base_key = (iou_rank * G + c_g)[:, None] + (~g_ignore[c_g]).to(i64) * (n_iou * G)  # [n_c, A]
    above = c_iou[:, None] >= thr_eff[None, :]  # [n_c, T]
    gt_taken = torch.zeros(G, T, A, dtype=torch.bool, device=device)
    rank_counts = torch.bincount(c_rank, minlength=1).tolist() if n_c else []
    start = 0
    for count in rank_counts:
        if count == 0:
            continue
        stop = start + count
        g_idx = c_g[start:stop]
        crowd = c_crowd[start:stop]
        free = ~gt_taken[g_idx] | crowd[:, None, None]  # [n, T, A]
        ok = free & above[start:stop, :, None]
        key = torch.where(ok, base_key[start:stop, None, :], torch.full_like(base_key[start:stop, None, :], -1))
        loc = c_local[start:stop]
        loc0 = int(loc[0])
        local = (loc - loc0)[:, None, None].expand_as(key)
        best = torch.full((int(loc[-1]) - loc0 + 1, T, A), -1, dtype=i64, device=device)
        best.scatter_reduce_(0, local, key, reduce="amax")
        win = (key >= 0) & (key == best.gather(0, local))
        pi, ti, ai = win.nonzero(as_tuple=True)
        gw = g_idx[pi]
        not_crowd = ~crowd[pi]
        gt_taken[gw[not_crowd], ti[not_crowd], ai[not_crowd]] = True
        sw = c_slot[start:stop][pi]
        m_has[ti, ai, sw] = True
        m_ign[ti, ai, sw] = g_ignore[gw, ai]
        m_nz[ti, ai, sw] = g_valid_id[gw]
        start = stop

    # -- per (threshold-area channel, slot): TP / FP. A detection without a
    # candidate is unmatched at every threshold: a FP when its own area is in
    # range, else ignored; those are counted per area only.
    # Layout [channel, detection]: running counts along the contiguous axis.
    a_cat, a_rank = d_cat[acc], d_rank[acc]
    a_area = dt.area[d_order[acc]]
    a_out = (a_area[None, :] < area_lo[:, None]) | (a_area[None, :] > area_hi[:, None])  # [A, D]
    s_out = a_out[:, s_pos]  # [A, NS]
    matched = m_has & m_nz  # pycocotools stores the gt id: id 0 reads as "no match"
    ignored = (m_has & m_ign) | (~matched & s_out[None])
    s_tp = (matched & ~ignored).reshape(TA, NS)
    s_fp = (~matched & ~ignored).reshape(TA, NS)
    s_cat, s_rank = a_cat[s_pos], a_rank[s_pos]
    plain_fp = ~a_out & ~a_is_slot[None, :]  # [A, D]
    ks = torch.arange(K, device=device)
    cat_start = torch.searchsorted(a_cat, ks, side="left")  # [K]
    s_cat_start = torch.searchsorted(s_cat, ks, side="left")

    def cum_and_base(x: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        """Inclusive running count along dim 1, and the count before each
        category's first column ([rows, K])."""
        cum = torch.cumsum(x, 1, dtype=torch.int32)
        padded = torch.cat([torch.zeros(x.shape[0], 1, dtype=torch.int32, device=device), cum], 1)
        return cum, padded[:, starts]

    precision = torch.full((T, R, K, A, M), -1.0, dtype=f64, device=device)
    recall = torch.full((T, K, A, M), -1.0, dtype=f64, device=device)
    has_gt = npig > 0  # [K, A]
    npig_f = npig.to(f64)
    # TP entries at the largest maxDets; smaller settings keep a subset of them.
    flat_all = s_tp.reshape(-1).nonzero().squeeze(1)
    ci_all = torch.div(flat_all, max(NS, 1), rounding_mode="floor")
    si_all = flat_all - ci_all * NS
    for mi, md in enumerate(max_dets):
        if md >= max_det:
            ci, si = ci_all, si_all
            stp, sfp, pfp = s_tp, s_fp, plain_fp
        else:
            keep_e = s_rank[si_all] < md
            ci, si = ci_all[keep_e], si_all[keep_e]
            s_valid = (s_rank < md)[None, :]
            stp, sfp, pfp = s_tp & s_valid, s_fp & s_valid, plain_fp & (a_rank < md)[None, :]
        tp_cum, tp_base = cum_and_base(stp, s_cat_start)
        fp_cum, fp_base = cum_and_base(sfp, s_cat_start)
        p_cum, p_base = cum_and_base(pfp, cat_start)
        k = s_cat[si]
        a_i = ci % A
        flat = ci * NS + si
        base_idx = ci * K + k
        j = (tp_cum.reshape(-1)[flat] - tp_base.reshape(-1)[base_idx]).to(f64)  # TPs so far, this one included
        f = (fp_cum.reshape(-1)[flat] - fp_base.reshape(-1)[base_idx]
             + p_cum.reshape(-1)[a_i * D + s_pos[si]] - p_base.reshape(-1)[a_i * K + k]).to(f64)
        pr = j / (f + j + _EPS)
        rc = j / npig_f.reshape(-1)[k * A + a_i]
        # The first rank reaching recall r is the first whose rc >= r, so this TP
        # counts for every recall threshold <= rc: interpolated precision at r is
        # the max over TPs whose bin is beyond r.
        rbin = torch.searchsorted(rec_thr, rc, right=True)  # in 1..R
        bins = torch.zeros(TA * K * (R + 1), dtype=f64, device=device)
        bins.scatter_reduce_(0, base_idx * (R + 1) + rbin, pr, reduce="amax")
        bins = bins.view(TA * K, R + 1)
        suffix = torch.flip(torch.cummax(torch.flip(bins, [1]), 1).values, [1])[:, 1:]  # [TA*K, R]
        q = suffix.view(T, A, K, R).permute(0, 3, 2, 1)  # [T, R, K, A]
        n_tp = torch.bincount(base_idx, minlength=TA * K).to(f64)
        rc_final = n_tp.view(T, A, K).permute(0, 2, 1) / npig_f.clamp(min=1)[None]  # [T, K, A]
        precision[..., mi] = torch.where(has_gt[None, None], q, precision[..., mi])
        recall[..., mi] = torch.where(has_gt[None], rc_final, recall[..., mi])

    stats = _summarize(precision, recall, p, max_dets)
    return COCOEvalResult(
        precision=precision, recall=recall, stats=stats, params=p,
        category_ids=list(category_ids) if category_ids is not None else list(range(K)),
    )


def _summarize(precision: Tensor, recall: Tensor, p: COCOParams, max_dets: list[int]) -> Tensor:
    """``COCOeval.summarize`` for bbox/segm: mean over entries > -1, else -1."""
    labels = list(p.area_labels)
    thr = np.asarray(list(p.iou_thresholds))

    def mean_valid(s: Tensor) -> float:
        v = s[s > -1]
        return -1.0 if v.numel() == 0 else float(v.mean())

    def one(ap: bool, iou: float | None = None, area: str = "all", md: int = 100) -> float:
        if area not in labels or md not in max_dets:
            return -1.0
        a, m = labels.index(area), max_dets.index(md)
        s = precision[..., a, m] if ap else recall[..., a, m]
        if iou is not None:
            t = np.where(iou == thr)[0]
            if t.size == 0:
                return -1.0
            s = s[int(t[0])]
        return mean_valid(s)

    m0, m1, m2 = (max_dets + [100, 100, 100])[:3] if len(max_dets) < 3 else max_dets[:3]
    vals = [
        one(True, md=100),  # pycocotools: _summarize(1), whose maxDets default is 100
        one(True, 0.5, md=m2),
        one(True, 0.75, md=m2),
        one(True, area="small", md=m2),
        one(True, area="medium", md=m2),
        one(True, area="large", md=m2),
        one(False, md=m0),
        one(False, md=m1),
        one(False, md=m2),
        one(False, area="small", md=m2),
        one(False, area="medium", md=m2),
        one(False, area="large", md=m2),
    ]
    return torch.tensor(vals, dtype=torch.float64)


# ------------------------------------------------------------------ COCO dicts


def _dense_batch(masks_per_image: list[Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run lengths of dense ``[N, H, W]`` masks of many images, as mask.rle_batch."""
    parts, sizes = [], []
    for masks in masks_per_image:
        arr = masks.detach().cpu().numpy()
        arr = arr.reshape(-1, *arr.shape[-2:])
        for m in arr:
            parts.append(_mask._dense_counts(m))
            sizes.append(m.shape)
    lengths = np.fromiter((p.size for p in parts), dtype=np.int64, count=len(parts))
    counts = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return counts, np.concatenate(([0], np.cumsum(lengths))), np.asarray(sizes, dtype=np.int64).reshape(-1, 2)


def _run_areas(batch: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Foreground pixel count of each mask of a run-length batch (float64)."""
    counts, offsets, _ = batch
    parity = (np.arange(counts.size) - np.repeat(offsets[:-1], np.diff(offsets))) % 2
    fg = np.concatenate(([0], np.cumsum(np.where(parity == 1, counts, 0))))
    return (fg[offsets[1:]] - fg[offsets[:-1]]).astype(np.float64)


def _ids_to_positions(ids: np.ndarray, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in ``sorted_ids`` and whether each id is present."""
    if sorted_ids.size == 0:
        return np.zeros(ids.size, dtype=np.int64), np.zeros(ids.size, dtype=bool)
    pos = np.searchsorted(sorted_ids, ids).clip(max=sorted_ids.size - 1)
    return pos.astype(np.int64), sorted_ids[pos] == ids


def _field(items: list[dict], key: str, dtype, default=None) -> np.ndarray:
    if default is None:
        return np.fromiter(map(operator.itemgetter(key), items), dtype=dtype, count=len(items))
    return np.fromiter((it.get(key, default) for it in items), dtype=dtype, count=len(items))


def _boxes_field(items: list[dict]) -> np.ndarray:
    flat = np.fromiter(itertools.chain.from_iterable(map(operator.itemgetter("bbox"), items)), dtype=np.float64)
    if flat.size != 4 * len(items):
        raise ValueError("every 'bbox' must have 4 numbers [x, y, w, h]")
    return flat.reshape(-1, 4)


def _coco_instances(
    gt: dict, dt: list[dict], iou_type: str, device: torch.device | str
) -> tuple[_Instances, _Instances, int, list]:
    """COCO dicts -> flat arrays, keeping only annotations and results whose image
    and category are in ``gt`` (as pycocotools' ``getAnnIds`` does)."""
    images = gt.get("images", [])
    img_ids = np.unique(np.asarray([im["id"] for im in images], dtype=np.int64))
    cat_list = sorted({c["id"] for c in gt.get("categories", [])})
    cat_ids = np.asarray(cat_list, dtype=np.int64)
    sizes = {im["id"]: (im.get("height"), im.get("width")) for im in images}

    anns = gt.get("annotations", [])
    g_img, g_img_ok = _ids_to_positions(_field(anns, "image_id", np.int64), img_ids)
    g_cat, g_cat_ok = _ids_to_positions(_field(anns, "category_id", np.int64), cat_ids)
    g_keep = g_img_ok & g_cat_ok
    if not g_keep.all():
        anns = [a for a, k in zip(anns, g_keep.tolist()) if k]
        g_img, g_cat = g_img[g_keep], g_cat[g_keep]
    g_box = _boxes_field(anns)
    g_area = _field(anns, "area", np.float64)
    g_crowd = _field(anns, "iscrowd", np.int64, 0) != 0
    g_idnz = _field(anns, "id", np.int64, 1) != 0
    g_masks = None
    if iou_type == "segm":
        g_masks = _mask.rle_batch([_mask.to_rle(a["segmentation"], *sizes[a["image_id"]]) for a in anns])

    d_img, d_img_ok = _ids_to_positions(_field(dt, "image_id", np.int64), img_ids)
    if not d_img_ok.all():
        unknown = sorted({d["image_id"] for d, ok in zip(dt, d_img_ok.tolist()) if not ok})
        raise ValueError(f"detections refer to image ids absent from gt['images']: {unknown[:5]}")
    d_cat, d_keep = _ids_to_positions(_field(dt, "category_id", np.int64), cat_ids)
    dets = dt
    if not d_keep.all():
        dets = [d for d, k in zip(dt, d_keep.tolist()) if k]
        d_img, d_cat = d_img[d_keep], d_cat[d_keep]
    d_score = _field(dets, "score", np.float64)
    d_masks = None
    if iou_type == "segm":
        d_masks = _mask.rle_batch([_mask.to_rle(d["segmentation"], *sizes[d["image_id"]]) for d in dets])
    # pycocotools' loadRes picks the branch from the first result: with a
    # non-empty 'bbox' the area is w*h, else (segm) the mask area.
    if dt and "bbox" in dt[0] and len(dt[0]["bbox"]) > 0:
        d_box = _boxes_field(dets)
        d_area = d_box[:, 2] * d_box[:, 3]
    elif iou_type == "segm":  # mask areas; boxes are not used by mask IoU
        d_area = _run_areas(d_masks)
        d_box = np.zeros((len(dets), 4))
    elif not dets:
        d_box, d_area = np.zeros((0, 4)), np.zeros(0)
    else:
        raise ValueError("bbox evaluation needs a 'bbox' [x, y, w, h] in every detection")

    t = torch.from_numpy
    gts = _Instances(t(g_img), t(g_cat), t(g_box), t(g_area), crowd=t(g_crowd), id_nonzero=t(g_idnz), masks=g_masks)
    dts = _Instances(t(d_img), t(d_cat), t(d_box), t(np.asarray(d_area, dtype=np.float64)), score=t(d_score),
                     masks=d_masks)
    if torch.device(device).type != "cpu":
        gts, dts = _to_device(gts, device), _to_device(dts, device)
    return gts, dts, int(img_ids.size), cat_list


def _to_device(x: _Instances, device) -> _Instances:
    moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in x.__dict__.items()}
    return _Instances(**moved)


def _load_coco_gt(gt: Any) -> dict:
    """A COCO ground truth given as a dict, a JSON path or a pycocotools ``COCO``."""
    if isinstance(gt, dict):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        with open(gt) as f:
            loaded = json.load(f)
        if not isinstance(loaded, dict):
            raise ValueError(f"gt file {os.fspath(gt)!r} must hold a COCO dict (images, annotations, categories)")
        return loaded
    if hasattr(gt, "dataset") and isinstance(gt.dataset, dict):  # pycocotools.coco.COCO
        return gt.dataset
    raise TypeError(f"gt must be a COCO dict, a path to a COCO JSON file or a pycocotools COCO, got {type(gt).__name__}")


def _load_coco_dt(dt: Any) -> list[dict]:
    """COCO results given as a list, a JSON path or a pycocotools ``COCO`` (``loadRes``)."""
    if isinstance(dt, (str, os.PathLike)):
        with open(dt) as f:
            dt = json.load(f)
    elif hasattr(dt, "dataset") and isinstance(dt.dataset, dict):
        dt = dt.dataset.get("annotations", [])
    if not isinstance(dt, (list, tuple)):
        raise TypeError(f"dt must be a list of COCO results, a path to a JSON list or a pycocotools COCO, got {type(dt).__name__}")
    for i, d in enumerate(dt):
        for field in ("image_id", "category_id", "score"):
            if field not in d:
                raise ValueError(f"detection {i} has no {field!r} field: every COCO result needs image_id, category_id and score")
    return list(dt)


@overload
def coco_stats(
    gt: Any, dt: Any, iou_type: str = ..., *, params: COCOParams | None = ...,
    device: torch.device | str = ..., return_result: Literal[False] = ..., num_threads: int | None = ...,
) -> list[float]: ...


@overload
def coco_stats(
    gt: Any, dt: Any, iou_type: str = ..., *, params: COCOParams | None = ...,
    device: torch.device | str = ..., return_result: Literal[True], num_threads: int | None = ...,
) -> tuple[list[float], COCOEvalResult]: ...


def coco_stats(
    gt: dict | str | os.PathLike | Any,
    dt: list[dict] | str | os.PathLike | Any,
    iou_type: str = "bbox",
    *,
    params: COCOParams | None = None,
    device: torch.device | str = "cpu",
    return_result: bool = False,
    num_threads: int | None = 1,
) -> list[float] | tuple[list[float], COCOEvalResult]:
    """The 12 numbers of ``pycocotools`` ``COCOeval(...).stats`` (AP@[.5:.95], AP50,
    AP75, AP S/M/L, AR@1, AR@10, AR@100, AR S/M/L), equal to pycocotools'.

    Args:
        gt: COCO ground truth: ``images`` (``id``, and ``height``/``width`` for
            polygon masks), ``annotations`` (``image_id``, ``category_id``,
            ``bbox`` ``[x, y, w, h]``, ``area``, ``iscrowd``, ``id``,
            ``segmentation`` for segm), ``categories`` (``id``). A dict, a path
            to a COCO JSON file, or a ``pycocotools.coco.COCO``.
        dt: COCO results: ``image_id``, ``category_id``, ``score`` and ``bbox``
            ``[x, y, w, h]`` (bbox) or ``segmentation`` (segm: RLE, polygons or
            a dense ``[H, W]`` mask). A list, a path to a JSON list, or a
            pycocotools ``COCO`` of results (``coco_gt.loadRes(...)``).
        iou_type: ``"bbox"`` or ``"segm"``.
        params: evaluation parameters (pycocotools' defaults).
        device: where to run (``"cuda"`` for the GPU).
        return_result: also return the :class:`COCOEvalResult` (precision,
            recall arrays, per-class AP).
        num_threads: intra-op CPU threads while evaluating (default 1, the
            fastest for this chain of small ops; None keeps torch's setting).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    gts, dts, n_img, cat_ids = _coco_instances(_load_coco_gt(gt), _load_coco_dt(dt), iou_type, device)
    result = coco_evaluate(gts, dts, n_img, len(cat_ids), iou_type, params, cat_ids, num_threads)
    stats = result.stats.tolist()
    return (stats, result) if return_result else stats


# ------------------------------------------------------------------ tensor interface


def _xyxy_to_xywh(boxes: Tensor) -> Tensor:
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


def _boxes_to_xywh(boxes: Tensor, fmt: str) -> Tensor:
    boxes = boxes.to(torch.float64).reshape(-1, 4)
    if fmt == "xyxy":
        return _xyxy_to_xywh(boxes)
    if fmt == "xywh":
        return boxes
    if fmt == "cxcywh":
        return torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, 2:]], dim=1)
    raise ValueError(f"box_format must be 'xyxy', 'xywh' or 'cxcywh', got {fmt!r}")


class MeanAveragePrecision:
    """COCO mAP over a stream of images, with torchmetrics' interface.

    ``update(preds, target)`` takes one dict per image:

    * preds: ``boxes`` ``[N, 4]`` (``box_format``, default ``(x1, y1, x2, y2)``),
      ``scores`` ``[N]``, ``labels`` ``[N]`` (int), and ``masks`` ``[N, H, W]``
      (bool) for ``iou_type="segm"``;
    * target: ``boxes`` ``[G, 4]``, ``labels`` ``[G]``, optional ``iscrowd``
      ``[G]``, optional ``area`` ``[G]`` (default: box area, or mask area for
      segm), and ``masks`` ``[G, H, W]`` for segm.

    ``compute()`` returns a dict of 0-d float tensors named as torchmetrics'
    (``map``, ``map_50``, ..., ``mar_large``; see :data:`STAT_NAMES`) plus
    ``map_per_class``, ``mar_100_per_class``, ``classes`` and, with
    ``extended_summary=True``, ``precision`` ``[T, R, K, A, M]`` and ``recall``
    ``[T, K, A, M]``. Results equal pycocotools' on the same data.

    Distributed: inside an initialised ``torch.distributed`` process group,
    ``compute()`` gathers every rank's images (``sync_on_compute=True``), so
    each rank gets the metrics of the whole dataset. When every target carries
    an ``image_id``, images are ordered by it and repeats (the padding of
    ``DistributedSampler``) are dropped, so the result equals a single-process
    evaluation of the same data exactly.
    """

    def __init__(
        self,
        iou_type: str = "bbox",
        box_format: str = "xyxy",
        *,
        params: COCOParams | None = None,
        class_metrics: bool = True,
        extended_summary: bool = False,
        device: torch.device | str | None = None,
        num_threads: int | None = 1,
        sync_on_compute: bool = True,
    ) -> None:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        if box_format not in ("xyxy", "xywh", "cxcywh"):
            raise ValueError(f"box_format must be 'xyxy', 'xywh' or 'cxcywh', got {box_format!r}")
        self.iou_type = iou_type
        self.box_format = box_format
        self.params = params or COCOParams()
        self.class_metrics = class_metrics
        self.extended_summary = extended_summary
        self.device = device
        self.num_threads = num_threads
        self.sync_on_compute = sync_on_compute
        self.result: COCOEvalResult | None = None
        self.reset()

    def reset(self) -> None:
        self._preds: list[dict[str, Tensor]] = []
        self._targets: list[dict[str, Tensor]] = []

    def _check(self, item: dict, name: str, i: int, keys: tuple[str, ...]) -> dict:
        if not isinstance(item, dict):
            raise TypeError(f"{name}[{i}] must be a dict, got {type(item).__name__}")
        for k in keys:
            if k not in item:
                raise ValueError(f"{name}[{i}] is missing the key {k!r}")
            if not isinstance(item[k], Tensor):
                raise TypeError(f"{name}[{i}][{k!r}] must be a torch.Tensor, got {type(item[k]).__name__}")
        if item["labels"].is_floating_point() and item["labels"].numel():
            raise TypeError(f"{name}[{i}]['labels'] must be an integer tensor, got {item['labels'].dtype}")
        n = item["labels"].shape[0]
        if self.iou_type == "bbox" or "boxes" in item:
            boxes = item["boxes"]
            if boxes.numel() and (boxes.dim() != 2 or boxes.shape[1] != 4):
                raise ValueError(f"{name}[{i}]['boxes'] must have shape [N, 4], got {list(boxes.shape)}")
            if boxes.reshape(-1, 4).shape[0] != n:
                raise ValueError(f"{name}[{i}]: {boxes.reshape(-1, 4).shape[0]} boxes but {n} labels")
        if self.iou_type == "segm":
            masks = item["masks"]
            if masks.dim() != 3 or masks.shape[0] != n:
                raise ValueError(f"{name}[{i}]['masks'] must have shape [N, H, W] with N={n}, got {list(masks.shape)}")
        if "scores" in keys and item["scores"].shape[0] != n:
            raise ValueError(f"{name}[{i}]: {item['scores'].shape[0]} scores but {n} labels")
        return item

    def update(self, preds: list[dict[str, Tensor]], target: list[dict[str, Tensor]]) -> None:
        """Add a batch of images: ``preds[i]`` and ``target[i]`` describe image i."""
        if len(preds) != len(target):
            raise ValueError(f"preds and target must have the same length, got {len(preds)} and {len(target)}")
        need = ("masks",) if self.iou_type == "segm" else ("boxes",)
        for i, (p, t) in enumerate(zip(preds, target)):
            p = self._check(p, "preds", i, ("scores", "labels") + need)
            t = self._check(t, "target", i, ("labels",) + need)
            # Detached: an evaluator must not keep the model's graphs alive.
            self._preds.append({k: v.detach() for k, v in p.items() if isinstance(v, Tensor)})
            self._targets.append({k: v.detach() for k, v in t.items() if isinstance(v, Tensor)})

    def _synced_images(self) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
        """This rank's images, or with ``sync_on_compute`` in a process group,
        every rank's, ordered by ``image_id`` and without repeats where given."""
        if not (self.sync_on_compute and is_distributed()):
            return self._preds, self._targets
        def on_cpu(items: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
            return [{k: v.cpu() for k, v in it.items()} for it in items]
        gathered = gather_objects((on_cpu(self._preds), on_cpu(self._targets)))
        preds = [p for rank_preds, _ in gathered for p in rank_preds]
        targets = [t for _, rank_targets in gathered for t in rank_targets]
        if targets and all("image_id" in t for t in targets):
            ids = [int(t["image_id"].reshape(-1)[0]) for t in targets]
            first: dict[int, int] = {}
            for pos, image_id in enumerate(ids):
                first.setdefault(image_id, pos)
            order = [first[i] for i in sorted(first)]
            preds, targets = [preds[k] for k in order], [targets[k] for k in order]
        return preds, targets

    def _flatten(
        self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]
    ) -> tuple[_Instances, _Instances, list[int]]:
        """Concatenate the stored images once (no per-image tensor math)."""
        device = self.device
        if device is None:
            device = targets[0]["labels"].device
        device = torch.device(device)
        f64, i64 = torch.float64, torch.int64
        segm = self.iou_type == "segm"

        def cat(items: list[dict], key: str, dtype: torch.dtype, width: int | None = None) -> Tensor:
            parts = [it[key].reshape(-1, width) if width else it[key].reshape(-1) for it in items]
            parts = [x.to(dtype) for x in parts]
            return torch.cat(parts).to(device) if parts else torch.zeros(0, dtype=dtype, device=device)

        def image_index(items: list[dict]) -> Tensor:
            counts = torch.tensor([it["labels"].numel() for it in items], dtype=i64)
            return torch.repeat_interleave(torch.arange(len(items)), counts).to(device)

        g_labels, d_labels = cat(targets, "labels", i64), cat(preds, "labels", i64)
        classes = torch.unique(torch.cat([g_labels, d_labels]))
        g_masks = d_masks = None
        if segm:
            g_masks = _dense_batch([t["masks"] for t in targets])
            d_masks = _dense_batch([p["masks"] for p in preds])
            g_box = torch.zeros(g_labels.numel(), 4, dtype=f64, device=device)  # mask IoU reads no boxes
            d_box = torch.zeros(d_labels.numel(), 4, dtype=f64, device=device)
            g_own = torch.from_numpy(_run_areas(g_masks)).to(device, f64)
            d_area = torch.from_numpy(_run_areas(d_masks)).to(device, f64)
        else:
            g_box = _boxes_to_xywh(cat(targets, "boxes", f64, 4), self.box_format)
            d_box = _boxes_to_xywh(cat(preds, "boxes", f64, 4), self.box_format)
            g_own = g_box[:, 2] * g_box[:, 3]
            d_area = d_box[:, 2] * d_box[:, 3]
        # the ground truth's 'area' where given, else the box (mask) area
        if all("area" in t for t in targets):
            g_area = cat(targets, "area", f64)
        elif any("area" in t for t in targets):
            given = [t["area"].reshape(-1) if "area" in t else torch.full_like(t["labels"], float("nan"), dtype=f64)
                     for t in targets]
            g_area = torch.cat([x.to(f64) for x in given]).to(device)
            g_area = torch.where(torch.isnan(g_area), g_own, g_area)
        else:
            g_area = g_own
        crowd = [t["iscrowd"].reshape(-1) if "iscrowd" in t else torch.zeros_like(t["labels"]) for t in targets]
        g_crowd = torch.cat([c.to(torch.bool) for c in crowd]).to(device)
        gts = _Instances(
            image=image_index(targets),
            category=torch.searchsorted(classes, g_labels),
            boxes=g_box,
            area=g_area,
            crowd=g_crowd,
            id_nonzero=torch.ones_like(g_crowd),
            masks=g_masks,
        )
        dts = _Instances(
            image=image_index(preds),
            category=torch.searchsorted(classes, d_labels),
            boxes=d_box,
            area=d_area,
            score=cat(preds, "scores", f64),
            masks=d_masks,
        )
        return gts, dts, classes.tolist()

    def compute(self) -> dict[str, Tensor]:
        """Evaluate every image added so far (see the class docstring for the keys)."""
        preds, targets = self._synced_images()
        if not targets:
            raise RuntimeError("compute() called before update(): no images to evaluate")
        device = torch.device(self.device if self.device is not None else targets[0]["labels"].device)
        with _intra_op_threads(self.num_threads, device):
            gts, dts, classes = self._flatten(preds, targets)
            result = coco_evaluate(
                gts, dts, len(targets), len(classes), self.iou_type, self.params, classes, self.num_threads
            )
        self.result = result
        out = {name: torch.tensor(v, dtype=torch.float32) for name, v in zip(STAT_NAMES, result.stats.tolist())}
        out["classes"] = torch.tensor(classes, dtype=torch.int32)
        if self.class_metrics:
            out["map_per_class"] = result.per_class_ap().float().cpu()
            out["mar_100_per_class"] = result.per_class_ar().float().cpu()
        else:
            out["map_per_class"] = torch.tensor(-1.0)
            out["mar_100_per_class"] = torch.tensor(-1.0)
        if self.extended_summary:
            out["precision"] = result.precision
            out["recall"] = result.recall
        return out

    def plot_pr_curves(self, path: str, **kwargs: Any) -> None:
        """Write the precision/recall curves of the last ``compute()`` to a PNG."""
        if self.result is None:
            raise RuntimeError("call compute() before plot_pr_curves()")
        plot_pr_curves(self.result, path, **kwargs)


# ------------------------------------------------------------------ plotting


def plot_pr_curves(
    result: COCOEvalResult,
    path: str,
    *,
    iou_threshold: float | None = 0.5,
    area: str = "all",
    max_dets: int | None = None,
    class_names: dict | Sequence[str] | None = None,
    max_classes: int = 20,
) -> None:
    """Write a PNG of interpolated precision vs recall, one curve per category
    (the ``max_classes`` with the highest AP) plus their mean.

    Args:
        result: from ``coco_stats(..., return_result=True)`` or
            ``MeanAveragePrecision.result``.
        path: output file (``.png``).
        iou_threshold: one IoU threshold (e.g. 0.5), or None for the mean over
            all thresholds.
        area: ``"all"``, ``"small"``, ``"medium"`` or ``"large"``.
        max_dets: maxDets setting (default: the largest).
        class_names: names by category id (dict) or by category position.
    """
    from .._extras import require

    matplotlib = require("matplotlib", "eval", "plot_pr_curves")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = result.params
    a = list(p.area_labels).index(area)
    mds = sorted(int(m) for m in p.max_dets)
    m = mds.index(max_dets) if max_dets is not None else len(mds) - 1
    prec = result.precision[..., a, m].cpu()  # [T, R, K]
    if iou_threshold is None:
        valid = prec > -1
        curves = torch.where(valid, prec, torch.zeros_like(prec)).sum(0) / valid.sum(0).clamp(min=1)
        curves = torch.where(valid.any(0), curves, torch.full_like(curves, -1.0))
        title_iou = "IoU=.50:.95"
    else:
        t = int(np.argmin(np.abs(np.asarray(list(p.iou_thresholds)) - iou_threshold)))
        curves = prec[t]
        title_iou = f"IoU={p.iou_thresholds[t]:.2f}"
    rec = np.asarray(list(p.rec_thresholds))
    has = (curves > -1).all(0)
    ap = torch.where(has, curves.clamp(min=0).mean(0), torch.full_like(curves[0], -1.0))
    order = [int(k) for k in torch.argsort(ap, descending=True, stable=True) if has[k]][:max_classes]
    fig, axis = plt.subplots(figsize=(7, 6), dpi=100)
    for k in order:
        cid = result.category_ids[k]
        if isinstance(class_names, dict):
            name = class_names.get(cid, str(cid))
        elif class_names is not None:
            name = class_names[k]
        else:
            name = str(cid)
        axis.plot(rec, curves[:, k].numpy(), linewidth=1, label=f"{name} (AP {float(ap[k]):.3f})")
    if has.any():
        mean_curve = curves[:, has].mean(1).numpy()
        axis.plot(rec, mean_curve, color="black", linewidth=2.5, label=f"mean (AP {float(ap[has].mean()):.3f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_title(f"Precision/recall, {title_iou}, area={area}, maxDets={mds[m]}")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
