"""COCO mask encodings in torch/numpy: run-length encoding (RLE) in pycocotools'
column-major layout and compressed-string format, polygons, areas, boxes.

Every function gives the same result as its ``pycocotools.mask`` counterpart
(``encode``, ``decode``, ``area``, ``toBbox``, ``frPyObjects`` + ``merge``,
``iou``), and works without pycocotools; when pycocotools is installed it is
only used to rasterise polygons faster. :func:`rle_batch` + :func:`rle_pair_iou`
compute mask IoUs of many pairs on the runs themselves, without decoding.

An RLE is a dict ``{"size": [h, w], "counts": bytes | str | list[int]}``; run
lengths alternate background/foreground, starting with background, over the
mask flattened in column-major (Fortran) order.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "rle_encode",
    "rle_decode",
    "rle_counts",
    "rle_area",
    "rle_to_bbox",
    "polygons_to_rle",
    "to_rle",
    "mask_iou",
    "rle_batch",
    "rle_pair_iou",
]

try:  # optional accelerator for polygon rasterisation only
    from pycocotools import mask as _pycoco_mask
except ImportError:  # pragma: no cover - exercised where pycocotools is absent
    _pycoco_mask = None


# ------------------------------------------------------------------ counts <-> string


def _counts_to_string(counts: np.ndarray) -> bytes:
    """pycocotools' rleToString: LEB128-like, 6 bits per char, deltas from i-2."""
    cnts = counts.astype(np.int64)
    out = bytearray()
    for i, c in enumerate(cnts.tolist()):
        x = c - cnts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5  # arithmetic shift, as C's on a signed long
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(ch + 48)
    return bytes(out)


def _string_to_counts(s: bytes | str) -> np.ndarray:
    """pycocotools' rleFrString, vectorised: decode all characters at once."""
    if isinstance(s, str):
        s = s.encode("ascii")
    if len(s) == 0:
        return np.zeros(0, dtype=np.int64)
    c = np.frombuffer(s, dtype=np.uint8).astype(np.int64) - 48
    ends = (c & 0x20) == 0  # the last character of each number
    group = np.concatenate(([0], np.cumsum(ends)[:-1]))
    first = np.concatenate(([True], ends[:-1]))
    start_idx = np.flatnonzero(first)
    k = np.arange(c.size) - start_idx[group]  # position of the char within its number
    x = np.add.reduceat((c & 0x1F) << (5 * k), start_idx)  # numbers are runs of chars
    last = c[ends]
    nchars = k[ends] + 1
    negative = (last & 0x10) != 0
    x[negative] |= -(np.int64(1) << (5 * nchars[negative]))
    # counts[m] += counts[m - 2] for m > 2: two interleaved running sums.
    out = x.copy()
    if out.size > 3:
        out[3::2] = np.cumsum(x[3::2]) + x[1]
    if out.size > 4:
        out[4::2] = np.cumsum(x[4::2]) + x[2]
    return out & 0xFFFFFFFF  # C stores (uint) x


def rle_counts(rle: dict) -> np.ndarray:
    """Run lengths (int64 numpy array) of an RLE with compressed or list counts."""
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        return _string_to_counts(counts)
    return np.asarray(counts, dtype=np.int64)


# ------------------------------------------------------------------ dense <-> RLE


def _as_numpy_masks(masks: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(masks, Tensor):
        masks = masks.detach().cpu().numpy()
    return np.asarray(masks)


def _dense_counts(mask: np.ndarray) -> np.ndarray:
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return counts.astype(np.int64)


def rle_encode(masks: Tensor | np.ndarray) -> dict | list[dict]:
    """Compressed RLE of a binary mask ``[H, W]`` (one dict) or masks ``[N, H, W]``
    (a list), equal to ``pycocotools.mask.encode`` (counts are ``bytes``)."""
    arr = _as_numpy_masks(masks)
    if arr.ndim == 2:
        h, w = arr.shape
        return {"size": [h, w], "counts": _counts_to_string(_dense_counts(arr))}
    if arr.ndim != 3:
        raise ValueError(f"masks must have shape [H, W] or [N, H, W], got {list(arr.shape)}")
    return [rle_encode(m) for m in arr]


def _counts_to_flat(counts: np.ndarray, numel: int) -> np.ndarray:
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    if flat.size != numel:
        raise ValueError(f"RLE counts sum to {flat.size} but size is {numel} pixels")
    return flat


def rle_decode(rle: dict) -> Tensor:
    """Binary mask ``[H, W]`` (torch.bool) of an RLE, as ``pycocotools.mask.decode``."""
    h, w = (int(v) for v in rle["size"])
    flat = _counts_to_flat(rle_counts(rle), h * w)
    return torch.from_numpy(flat.reshape(w, h).T.copy())


def rle_area(rle: dict) -> int:
    """Foreground pixel count of an RLE (``pycocotools.mask.area``)."""
    return int(rle_counts(rle)[1::2].sum())


def rle_to_bbox(rle: dict) -> list[float]:
    """``[x, y, w, h]`` box around an RLE's foreground (``pycocotools.mask.toBbox``)."""
    h, w = (int(v) for v in rle["size"])
    return _bbox_from_counts(rle_counts(rle), h, w)


def _bbox_from_counts(counts: np.ndarray, h: int, w: int) -> list[float]:
    m = (counts.size // 2) * 2
    if m == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cc = np.cumsum(counts[:m])
    t = cc - (np.arange(m) % 2)
    y = t % h
    x = (t - y) // h
    ys, ye = int(y.min()), int(y.max())
    # A run that wraps to a later column covers every row in between.
    if np.any(x[0::2] < x[1::2]):
        ys, ye = 0, h - 1
    xs, xe = int(x.min()), int(x.max())
    return [float(xs), float(ys), float(xe - xs + 1), float(ye - ys + 1)]


# ------------------------------------------------------------------ polygons


def _polygon_counts(xy: Sequence[float], h: int, w: int) -> np.ndarray:
    """pycocotools' rleFrPoly, step for step (upsample x5, walk the edges, keep
    the y-boundary crossings, downsample)."""
    scale = 5.0
    pts = np.asarray(xy, dtype=np.float64)
    k = pts.size // 2
    x = [int(math.trunc(scale * pts[2 * j] + 0.5)) for j in range(k)]
    y = [int(math.trunc(scale * pts[2 * j + 1] + 0.5)) for j in range(k)]
    x.append(x[0])
    y.append(y[0])
    u: list[int] = []
    v: list[int] = []
    for j in range(k):
        xs, xe, ys, ye = x[j], x[j + 1], y[j], y[j + 1]
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            for d in range(dx + 1):
                t = dx - d if flip else d
                u.append(t + xs)
                v.append(int(math.trunc(ys + s * t + 0.5)))
        else:
            s = (xe - xs) / dy
            for d in range(dy + 1):
                t = dy - d if flip else d
                v.append(t + ys)
                u.append(int(math.trunc(xs + s * t + 0.5)))
    a: list[int] = []
    for j in range(1, len(u)):
        if u[j] == u[j - 1]:
            continue
        xd = float(u[j] if u[j] < u[j - 1] else u[j] - 1)
        xd = (xd + 0.5) / scale - 0.5
        if math.floor(xd) != xd or xd < 0 or xd > w - 1:
            continue
        yd = float(v[j] if v[j] < v[j - 1] else v[j - 1])
        yd = (yd + 0.5) / scale - 0.5
        yd = 0.0 if yd < 0 else (float(h) if yd > h else yd)
        yd = math.ceil(yd)
        a.append((int(xd) * h + int(yd)) & 0xFFFFFFFF)
    a.append((h * w) & 0xFFFFFFFF)
    a.sort()
    prev = 0
    for j in range(len(a)):
        a[j], prev = a[j] - prev, a[j]
    b = [a[0]]
    j = 1
    while j < len(a):
        if a[j] > 0:
            b.append(a[j])
            j += 1
        else:
            j += 1
            if j < len(a):
                b[-1] += a[j]
                j += 1
    return np.asarray(b, dtype=np.int64)


def polygons_to_rle(polygons: Sequence[Sequence[float]], h: int, w: int) -> dict:
    """One RLE for an object made of polygons ``[[x0, y0, x1, y1, ...], ...]`` in an
    ``h x w`` image: the union of the parts, as pycocotools' ``annToRLE``."""
    if _pycoco_mask is not None:
        return _pycoco_mask.merge(_pycoco_mask.frPyObjects([list(map(float, p)) for p in polygons], h, w))
    flat = np.zeros(h * w, dtype=bool)
    for poly in polygons:
        flat |= _counts_to_flat(_polygon_counts(poly, h, w), h * w)
    return {"size": [h, w], "counts": _counts_to_string(_dense_counts(flat.reshape(w, h).T))}


def to_rle(segmentation: Any, h: int | None = None, w: int | None = None) -> dict:
    """Any COCO segmentation (polygons, list-count RLE, compressed RLE) or a dense
    ``[H, W]`` mask (tensor or array) as an RLE dict with run lengths available."""
    if isinstance(segmentation, dict):
        return segmentation
    if isinstance(segmentation, (Tensor, np.ndarray)):
        return rle_encode(segmentation)
    if isinstance(segmentation, list):
        if h is None or w is None:
            raise ValueError("polygon segmentations need the image height and width")
        return polygons_to_rle(segmentation, int(h), int(w))
    raise TypeError(f"unsupported segmentation type {type(segmentation).__name__}")


# ------------------------------------------------------------------ IoU


def mask_iou(dt_masks: Tensor, gt_masks: Tensor, iscrowd: Tensor | None = None) -> Tensor:
    """IoU ``[D, G]`` (float64) of binary masks ``[D, H, W]`` x ``[G, H, W]``, as
    ``pycocotools.mask.iou``: for a crowd ground truth the denominator is the
    detection's area; a pair with no intersection has IoU 0."""
    if dt_masks.dim() != 3 or gt_masks.dim() != 3 or dt_masks.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(
            f"dt_masks and gt_masks must be [D, H, W] and [G, H, W] with the same H, W, got "
            f"{list(dt_masks.shape)} and {list(gt_masks.shape)}"
        )
    d = dt_masks.reshape(dt_masks.shape[0], -1)
    g = gt_masks.reshape(gt_masks.shape[0], -1)
    crowd = (
        torch.zeros(g.shape[0], dtype=torch.bool, device=g.device)
        if iscrowd is None
        else iscrowd.to(device=g.device, dtype=torch.bool)
    )
    return _flat_mask_iou(d, g, crowd)


def _flat_mask_iou(d: Tensor, g: Tensor, crowd: Tensor) -> Tensor:
    """IoU of flattened masks ``[D, P]`` x ``[G, P]``; integer counts are exact:
    float32 sums of 0/1 are exact below 2**24 pixels, float64 beyond."""
    dtype = torch.float32 if d.shape[1] < (1 << 24) else torch.float64
    df, gf = d.to(dtype), g.to(dtype)
    inter = (df @ gf.T).to(torch.float64)
    da = df.sum(1, dtype=torch.float64)
    ga = gf.sum(1, dtype=torch.float64)
    union = torch.where(crowd[None, :], da[:, None], da[:, None] + ga[None, :] - inter)
    return torch.where(inter > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def _strings_to_counts_many(strings: Sequence[bytes | str]) -> tuple[np.ndarray, np.ndarray]:
    """Decode many compressed RLE strings in one numpy pass (numbers never span
    strings: each string ends on a terminal character). Returns the run lengths
    of all masks concatenated and the ``[n + 1]`` offsets of each mask's runs."""
    data = [x.encode("ascii") if isinstance(x, str) else bytes(x) for x in strings]
    n_chars = np.fromiter((len(x) for x in data), dtype=np.int64, count=len(data))
    c = np.frombuffer(b"".join(data), dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(len(data) + 1, dtype=np.int64)
    ends = (c & 0x20) == 0
    first = np.concatenate(([True], ends[:-1]))
    start_idx = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    k = np.arange(c.size) - start_idx[group]
    x = np.add.reduceat((c & 0x1F) << (5 * k), start_idx)
    last = c[ends]
    negative = (last & 0x10) != 0
    x[negative] |= -(np.int64(1) << (5 * (k[ends][negative] + 1)))
    ends_before = np.concatenate(([0], np.cumsum(ends)))
    char_off = np.concatenate(([0], np.cumsum(n_chars)))
    n_num = ends_before[char_off[1:]] - ends_before[char_off[:-1]]
    num_off = np.concatenate(([0], np.cumsum(n_num)))
    idx = np.arange(x.size) - np.repeat(num_off[:-1], n_num)  # number's index in its mask
    out = x.copy()
    # counts[m] += counts[m - 2] for m > 2: running sums over the odd chain
    # (m = 1, 3, ...) and the even chain from m = 2, restarted per mask.
    for parity, lowest in ((1, 1), (0, 2)):
        in_chain = (idx % 2 == parity) & (idx >= lowest)
        cs = np.cumsum(np.where(in_chain, x, 0))
        base = np.concatenate(([0], cs))[num_off[:-1]]
        out = np.where(in_chain, cs - np.repeat(base, n_num), out)
    return out & 0xFFFFFFFF, num_off


def rle_batch(rles: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run lengths of many RLEs (compressed or list counts) concatenated:
    ``(counts, offsets [n + 1], sizes [n, 2] as (h, w))``; checks that each
    mask's runs cover its ``h * w`` pixels."""
    n = len(rles)
    sizes = np.asarray([[int(r["size"][0]), int(r["size"][1])] for r in rles], dtype=np.int64).reshape(n, 2)
    compressed = [i for i, r in enumerate(rles) if isinstance(r["counts"], (bytes, str))]
    parts: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    if compressed:
        flat, off = _strings_to_counts_many([rles[i]["counts"] for i in compressed])
        for j, i in enumerate(compressed):
            parts[i] = flat[off[j]:off[j + 1]]
    for i, r in enumerate(rles):
        if not isinstance(r["counts"], (bytes, str)):
            parts[i] = np.asarray(r["counts"], dtype=np.int64)
    lengths = np.fromiter((p.size for p in parts), dtype=np.int64, count=n)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    counts = np.concatenate(parts) if n else np.zeros(0, dtype=np.int64)
    totals = np.add.reduceat(np.append(counts, 0), offsets[:-1]) * (lengths > 0) if n else np.zeros(0, dtype=np.int64)
    bad = np.flatnonzero(totals != sizes[:, 0] * sizes[:, 1])
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"RLE {i}: counts sum to {int(totals[i])}, not its size {sizes[i, 0]}x{sizes[i, 1]}")
    return counts, offsets, sizes


def _foreground_runs(counts: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Foreground intervals of a batch of masks: starts, lengths, foreground
    pixels before each interval in its mask, and the ``[n + 1]`` offsets of each
    mask's intervals. Runs alternate background/foreground: odd ones are foreground."""
    n_counts = np.diff(offsets)
    idx = np.arange(counts.size) - np.repeat(offsets[:-1], n_counts)
    cs = np.cumsum(counts)
    excl = cs - counts - np.repeat(np.concatenate(([0], cs))[offsets[:-1]], n_counts)  # pixels before the run
    fg = idx % 2 == 1
    start, length = excl[fg], counts[fg]
    n_runs = n_counts // 2
    run_off = np.concatenate(([0], np.cumsum(n_runs)))
    lc = np.cumsum(length)
    before = lc - length - np.repeat(np.concatenate(([0], lc))[run_off[:-1]], n_runs)
    return start, length, before, run_off


def rle_pair_iou(
    dt: tuple[np.ndarray, np.ndarray, np.ndarray],
    gt: tuple[np.ndarray, np.ndarray, np.ndarray],
    pair_dt: np.ndarray,
    pair_gt: np.ndarray,
    gt_crowd: np.ndarray,
) -> np.ndarray:
    """IoU (float64) of mask pairs ``(dt[pair_dt[i]], gt[pair_gt[i]])``, with
    ``dt``/``gt`` batches from :func:`rle_batch`, computed on the runs without
    decoding, as pycocotools' rleIou: crowd pairs divide by the detection's
    area, pairs with no intersection are 0, and pairs of masks of different
    sizes are -1 (never a match).

    For each foreground interval ``[s, e)`` of the ground truth, the detection's
    foreground pixel count below ``e`` minus below ``s`` (one ``searchsorted``
    into the detection's interval starts) is their overlap.
    """
    pair_dt = np.asarray(pair_dt, dtype=np.int64)
    pair_gt = np.asarray(pair_gt, dtype=np.int64)
    n_pairs = pair_dt.size
    if n_pairs == 0:
        return np.zeros(0, dtype=np.float64)
    d_counts, d_offsets, d_hw = dt
    g_counts, g_offsets, g_hw = gt
    d_start, d_len, d_before, d_off = _foreground_runs(d_counts, d_offsets)
    g_start, g_len, _, g_off = _foreground_runs(g_counts, g_offsets)
    d_area = np.concatenate(([0], np.cumsum(d_len)))
    d_area = d_area[d_off[1:]] - d_area[d_off[:-1]]
    g_area = np.concatenate(([0], np.cumsum(g_len)))
    g_area = g_area[g_off[1:]] - g_area[g_off[:-1]]
    span = np.int64(max(int((d_hw[:, 0] * d_hw[:, 1]).max(initial=0)),
                        int((g_hw[:, 0] * g_hw[:, 1]).max(initial=0))) + 1)
    d_key = np.repeat(np.arange(d_off.size - 1, dtype=np.int64), np.diff(d_off)) * span + d_start  # sorted

    # every foreground interval of every pair's ground truth
    n_int = np.diff(g_off)[pair_gt]
    pair_of_eval = np.repeat(np.arange(n_pairs, dtype=np.int64), n_int)
    first = np.cumsum(n_int) - n_int
    run = g_off[pair_gt][pair_of_eval] + np.arange(pair_of_eval.size, dtype=np.int64) - first[pair_of_eval]
    d_of_eval = pair_dt[pair_of_eval]

    def below(x: np.ndarray) -> np.ndarray:
        """Foreground pixels of detection ``d_of_eval`` at positions < x."""
        if d_key.size == 0:
            return np.zeros(x.size, dtype=np.int64)
        i = np.searchsorted(d_key, d_of_eval * span + x, side="right") - 1
        ok = i >= d_off[d_of_eval]  # an interval of this detection starts before x
        ic = np.where(ok, i, 0)
        return np.where(ok, d_before[ic] + np.clip(x - d_start[ic], 0, d_len[ic]), 0)

    s = g_start[run]
    overlap = below(s + g_len[run]) - below(s)
    inter = np.bincount(pair_of_eval, weights=overlap, minlength=n_pairs).astype(np.int64)
    da, ga = d_area[pair_dt], g_area[pair_gt]
    crowd = np.asarray(gt_crowd, dtype=bool)[pair_gt]
    union = np.where(crowd, da, da + ga - inter)
    iou = np.where(inter > 0, inter / np.where(inter > 0, union, 1), 0.0)
    same = (d_hw[pair_dt] == g_hw[pair_gt]).all(1)
    return np.where(same, iou, -1.0)
