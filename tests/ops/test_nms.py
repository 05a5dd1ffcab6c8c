"""NMS family: exact nms / batched_nms against torchvision on many random
cases and edge cases, multiclass_nms against per-image per-class torchvision
NMS + top-k, Soft-NMS and Matrix NMS against float64 Python references,
opcheck, torch.compile and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.ops.boxes import _batched_nms_coordinate_trick, _batched_nms_vanilla

import detops

# ------------------------------------------------------------------ random inputs


def _case(kind: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 boxes [n, 4] and scores [n] of one distribution."""
    if kind == "uniform":  # scattered boxes of many sizes
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 1000
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 150 + 1
    elif kind == "clustered":  # detector-like: jittered copies around a few objects
        centers = torch.rand(max(1, n // 20), 4, generator=g, dtype=torch.float64) * 500
        centers[:, 2:] = centers[:, :2] + 20 + centers[:, 2:] / 5
        pick = torch.randint(0, centers.shape[0], (n,), generator=g)
        box = centers[pick] + torch.randn(n, 4, generator=g, dtype=torch.float64) * 4
        xy, wh = box[:, :2], (box[:, 2:] - box[:, :2]).clamp(min=0.5)
    elif kind == "dense":  # heavy overlap in a small area
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 1
    elif kind == "multiscale":  # sizes and aspect ratios log-uniform over decades
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 1000
        wh = torch.exp(torch.rand(n, 2, generator=g, dtype=torch.float64) * 9 - 2)
    else:  # "grid": boxes on an integer grid, many exact IoU values
        xy = torch.randint(0, 20, (n, 2), generator=g).double()
        wh = torch.randint(1, 8, (n, 2), generator=g).double()
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    return torch.cat([xy, xy + wh], 1), scores


def _with_ties(scores: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Scores drawn from 4 values: most boxes tie with others."""
    return torch.randint(0, 4, scores.shape, generator=g).to(scores.dtype) / 4


KINDS = ["uniform", "clustered", "dense", "grid", "multiscale"]


def _stable_rank_scores(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Distinct scores n, n-1, ..., 1 in the stable descending order of scores."""
    order = torch.sort(scores, descending=True, stable=True).indices
    ranks = torch.empty(scores.shape[0], dtype=dtype, device=scores.device)
    ranks[order] = torch.arange(scores.shape[0], 0, -1, dtype=dtype, device=scores.device)
    return ranks


def _tv_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> torch.Tensor:
    """torchvision.ops.nms on the device. On CUDA its score sort is not stable,
    so equal scores are first made distinct in stable order: torchvision's
    arithmetic with the tie order detops defines. (On CPU torchvision's sort
    is stable, and its raw output is the reference.)"""
    if boxes.device.type == "cpu":
        return torchvision.ops.nms(boxes, scores, thr)
    return torchvision.ops.nms(boxes, _stable_rank_scores(scores, boxes.dtype), thr)


def _tv_batched_nms(boxes, scores, idxs, thr) -> torch.Tensor:
    """torchvision's exact per-class batched NMS (the same tie rule as _tv_nms),
    ordered by decreasing score, equal scores by lower index."""
    ranked = scores if boxes.device.type == "cpu" else _stable_rank_scores(scores, boxes.dtype)
    return _stable_score_order(_batched_nms_vanilla(boxes, ranked, idxs, thr), scores)


def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> torch.Tensor:
    """torchvision on the device, float16/bfloat16 computed in float32 (as detops documents)."""
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes, scores = boxes.float(), scores.float()
    return _tv_nms(boxes, scores, thr)


def _stable_score_order(indices: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """indices sorted by decreasing score, equal scores by lower index."""
    indices = indices.sort().values
    return indices[torch.sort(scores[indices], descending=True, stable=True).indices]


# ------------------------------------------------------------------ nms


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_matches_torchvision_random(device, kind, dtype):
    g = torch.Generator().manual_seed(hash((kind, str(dtype))) % 2**31)
    for trial in range(150):
        n = int(torch.randint(0, 300, (1,), generator=g))
        boxes, scores = _case(kind, n, g)
        if trial % 3 == 1:
            scores = _with_ties(scores, g)
        thr = [0.0, 0.3, 0.5, 0.7, 1.0, float(torch.rand(1, generator=g))][trial % 6]
        boxes, scores = boxes.to(device, dtype), scores.to(device, dtype)
        got = detops.nms(boxes, scores, thr)
        want = _tv_nms(boxes, scores, thr)
        assert got.dtype == torch.int64 and got.device == boxes.device
        assert torch.equal(got, want), f"{kind} n={n} thr={thr} trial={trial}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nms_reduced_precision_is_float32_nms(device, dtype):
    g = torch.Generator().manual_seed(7)
    for trial in range(40):
        boxes, scores = _case(KINDS[trial % 5], 200, g)
        boxes, scores = boxes.to(device, dtype), scores.to(device, dtype)
        assert torch.equal(detops.nms(boxes, scores, 0.5), _reference_nms(boxes, scores, 0.5))


def test_nms_large_sizes_match_torchvision(device):
    # Sizes that take the CPU kernel's per-area-binade grids and several chunks
    # of the CUDA kernel.
    g = torch.Generator().manual_seed(3)
    for n, kind in ((5000, "uniform"), (6000, "clustered"), (9000, "grid"), (4000, "multiscale")):
        boxes, scores = _case(kind, n, g)
        boxes, scores = boxes.float().to(device), scores.float().to(device)
        assert torch.equal(detops.nms(boxes, scores, 0.5), _tv_nms(boxes, scores, 0.5))


def test_nms_edge_cases(device):
    f = dict(device=device, dtype=torch.float32)
    empty = detops.nms(torch.zeros(0, 4, **f), torch.zeros(0, **f), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    one = detops.nms(torch.tensor([[0.0, 0, 1, 1]], **f), torch.tensor([0.3], **f), 0.5)
    assert one.tolist() == [0]
    # All boxes identical and equal scores: only the first survives.
    same = torch.tensor([[1.0, 2, 3, 4]], **f).repeat(50, 1)
    assert detops.nms(same, torch.ones(50, **f), 0.5).tolist() == [0]
    # Identical boxes and threshold 1: IoU 1 is not > 1, all kept, by index.
    assert detops.nms(same, torch.ones(50, **f), 1.0).tolist() == list(range(50))
    # Degenerate (zero-area, inverted) boxes never suppress nor get suppressed.
    degenerate = torch.tensor([[0.0, 0, 0, 0], [0, 0, 0, 0], [5, 5, 1, 1], [0, 0, 10, 10]], **f)
    got = detops.nms(degenerate, torch.tensor([0.9, 0.8, 0.7, 0.6], **f), 0.0)
    assert got.tolist() == _tv_nms(degenerate, torch.tensor([0.9, 0.8, 0.7, 0.6], **f), 0.0).tolist()
    assert got.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_huge_coordinates(device, dtype):
    g = torch.Generator().manual_seed(11)
    boxes, scores = _case("clustered", 500, g)
    for offset in (1e6, 1e7, -3e7):
        b = (boxes * 10 + offset).to(device, dtype)
        s = scores.to(device, dtype)
        assert torch.equal(detops.nms(b, s, 0.5), _tv_nms(b, s, 0.5))
    # One box spanning everything among small ones (the CPU kernel's "big" list).
    b = torch.cat([boxes, torch.tensor([[-1e5, -1e5, 1e5, 1e5], [0, 0, 600, 600]], dtype=torch.float64)])
    s = torch.cat([scores, torch.tensor([0.5, 0.55], dtype=torch.float64)])
    b, s = b.to(device, dtype), s.to(device, dtype)
    assert torch.equal(detops.nms(b, s, 0.1), _tv_nms(b, s, 0.1))


def test_nms_nan_and_inf(device):
    """NaN/inf boxes are kept where their score puts them and suppress nothing;
    NaN scores rank first. Same as torchvision's CPU kernel."""
    g = torch.Generator().manual_seed(5)
    for trial in range(30):
        boxes, scores = _case("dense", 60, g)
        boxes, scores = boxes.float(), scores.float()
        rows = torch.randint(0, 60, (6,), generator=g)
        boxes[rows[0], 0] = float("nan")
        boxes[rows[1]] = float("nan")
        boxes[rows[2], 2] = float("inf")
        boxes[rows[3], 1] = -float("inf")
        scores[rows[4]] = float("nan")
        want = torchvision.ops.nms(boxes, scores, 0.3)  # CPU: the definition
        got = detops.nms(boxes.to(device), scores.to(device), 0.3).cpu()
        assert torch.equal(got, want)
        bad = ~torch.isfinite(boxes).all(1)
        assert set(torch.nonzero(bad).flatten().tolist()) <= set(got.tolist())
        assert torch.isnan(scores[got[0]]).item()  # a NaN score ranks first


def test_nms_threshold_rounding_matches_torchvision(device):
    # IoU exactly at the threshold (grid boxes): > not >=.
    boxes = torch.tensor([[0.0, 0, 2, 2], [1, 0, 3, 2], [0, 0, 2, 1]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7], device=device)
    for thr in (1 / 3, 0.5, 1 / 3 + 1e-9, 0.5 - 1e-9, 0.0):
        assert torch.equal(detops.nms(boxes, scores, thr), _tv_nms(boxes, scores, thr)), thr


# ------------------------------------------------------------------ batched_nms


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_nms_matches_per_class_torchvision(device, kind, dtype):
    g = torch.Generator().manual_seed(hash(("batched", kind, str(dtype))) % 2**31)
    for trial in range(100):
        n = int(torch.randint(0, 300, (1,), generator=g))
        boxes, scores = _case(kind, n, g)
        if trial % 3 == 1:
            scores = _with_ties(scores, g)
        classes = [1, 3, 20, 80][trial % 4]
        idxs = torch.randint(0, classes, (n,), generator=g) * [1, 7, -3, 1000003][trial % 4]
        thr = [0.3, 0.5, 0.7, float(torch.rand(1, generator=g))][trial % 4]
        boxes, scores, idxs = boxes.to(device, dtype), scores.to(device, dtype), idxs.to(device)
        got = detops.batched_nms(boxes, scores, idxs, thr)
        want = _tv_batched_nms(boxes, scores, idxs, thr)  # torchvision's exact per-class path
        assert torch.equal(got, want), f"{kind} n={n} trial={trial}"
        if classes == 1:
            assert torch.equal(got, _tv_nms(boxes, scores, thr))


def test_batched_nms_no_offset_precision_loss(device):
    """Large coordinates and many classes: torchvision's coordinate-offset path
    rounds boxes in float32; detops stays exact per class."""
    g = torch.Generator().manual_seed(2)
    boxes, scores = _case("clustered", 3000, g)
    boxes = (boxes + 1e6).float().to(device)
    scores = scores.float().to(device)
    idxs = torch.randint(0, 80, (3000,), generator=g).to(device)
    got = detops.batched_nms(boxes, scores, idxs, 0.5)
    want = _tv_batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(got, want)
    # The offset trick (class * (max + 1) added to float32 coordinates) does
    # flip decisions on these inputs: the case the exact path exists for.
    offset_path = _batched_nms_coordinate_trick(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5)
    assert not torch.equal(offset_path.sort().values, want.cpu().sort().values)


def test_batched_nms_reduced_precision(device):
    g = torch.Generator().manual_seed(4)
    boxes, scores = _case("clustered", 400, g)
    idxs = torch.randint(0, 5, (400,), generator=g).to(device)
    for dtype in (torch.float16, torch.bfloat16):
        b, s = boxes.to(device, dtype), scores.to(device, dtype)
        want = _tv_batched_nms(b.float(), s.float(), idxs, 0.5)
        assert torch.equal(detops.batched_nms(b, s, idxs, 0.5), want)


def test_batched_nms_edge_cases(device):
    f = dict(device=device, dtype=torch.float32)
    empty = detops.batched_nms(torch.zeros(0, 4, **f), torch.zeros(0, **f), torch.zeros(0, dtype=torch.long, device=device), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    same = torch.tensor([[1.0, 2, 3, 4]], **f).repeat(6, 1)
    idxs = torch.tensor([0, 1, 0, 1, 2, 2], device=device)
    assert detops.batched_nms(same, torch.ones(6, **f), idxs, 0.5).tolist() == [0, 1, 4]
    # int32 class ids are accepted.
    assert detops.batched_nms(same, torch.ones(6, **f), idxs.int(), 0.5).tolist() == [0, 1, 4]


# ------------------------------------------------------------------ multiclass_nms


def _reference_multiclass(boxes, scores, score_thr, iou_thr, max_per_class, max_det):
    """Per image: per class torchvision NMS over the candidates above the
    threshold, first max_per_class kept, then the top max_det by score
    (ties: box * C + class)."""
    B, N, C = scores.shape
    D = max_det
    out_b = torch.zeros(B, D, 4, dtype=boxes.dtype)
    out_s = torch.zeros(B, D, dtype=scores.dtype)
    out_l = torch.full((B, D), -1, dtype=torch.long)
    out_n = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        dets = []
        for c in range(C):
            cand = torch.nonzero(scores[b, :, c] > score_thr).flatten()
            bx = boxes[b, cand] if boxes.dim() == 3 else boxes[b, cand, c]
            keep = torchvision.ops.nms(bx.float() if bx.dtype not in (torch.float32, torch.float64) else bx,
                                       scores[b, cand, c].float() if bx.dtype not in (torch.float32, torch.float64)
                                       else scores[b, cand, c], iou_thr)[:max_per_class]
            for k in cand[keep].tolist():
                dets.append((-float(scores[b, k, c]), k * C + c))
        dets.sort()
        dets = dets[:D]
        out_n[b] = len(dets)
        for d, (_, flat) in enumerate(dets):
            k, c = divmod(flat, C)
            out_b[b, d] = boxes[b, k] if boxes.dim() == 3 else boxes[b, k, c]
            out_s[b, d] = scores[b, k, c]
            out_l[b, d] = c
    return out_b, out_s, out_l, out_n


@pytest.mark.parametrize("per_class_boxes", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_multiclass_nms_matches_reference(device, per_class_boxes, dtype):
    g = torch.Generator().manual_seed(int(per_class_boxes) * 10 + KINDS.index("dense"))
    for trial in range(12):
        B, N, C = 3, int(torch.randint(1, 120, (1,), generator=g)), [1, 4, 9][trial % 3]
        boxes = torch.stack([_case(KINDS[(trial + b) % 5], N * (C if per_class_boxes else 1), g)[0] for b in range(B)])
        boxes = boxes.reshape(B, N, C, 4) if per_class_boxes else boxes
        scores = torch.rand(B, N, C, generator=g, dtype=torch.float64)
        if trial % 4 == 3:
            scores = _with_ties(scores, g)
        boxes, scores = boxes.to(dtype), scores.to(dtype)
        args = (0.3, 0.5, [3, 100][trial % 2], [5, 50][trial % 2 == 0])
        got = detops.multiclass_nms(boxes.to(device), scores.to(device), *args)
        want = _reference_multiclass(boxes, scores, *args)
        for gt, wt in zip(got, want):
            assert gt.dtype == wt.dtype and gt.shape == wt.shape
            assert torch.equal(gt.cpu(), wt), f"trial {trial}"


def test_multiclass_nms_nan_scores_and_empty(device):
    boxes = torch.tensor([[[0.0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 6, 6]]], device=device)
    scores = torch.tensor([[[float("nan")], [0.5], [0.4]]], device=device)
    b, s, l, n = detops.multiclass_nms(boxes, scores, 0.0, 0.5, 10, 4)
    assert n.tolist() == [2] and l.tolist() == [[0, 0, -1, -1]] and s[0, :2].tolist() == pytest.approx([0.5, 0.4])
    assert b[0, 2:].eq(0).all()
    b, s, l, n = detops.multiclass_nms(boxes[:, :0], scores[:, :0], 0.0, 0.5, 10, 4)
    assert n.tolist() == [0] and b.shape == (1, 4, 4) and l.eq(-1).all()


# ------------------------------------------------------------------ soft_nms


def _iou64(a, b) -> float:
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    iou = inter / union if union > 0 else 0.0
    return 0.0 if math.isnan(iou) else iou


def _reference_soft_nms(boxes, scores, iou_thr, sigma, score_thr, method):
    boxes = boxes.double().tolist()
    s = [float(v) for v in scores.double().tolist()]
    alive = [i for i in range(len(s)) if s[i] >= score_thr]
    keep, kept_scores = [], []
    while alive:
        i = max(alive, key=lambda j: (s[j], -j))
        keep.append(i)
        kept_scores.append(s[i])
        alive.remove(i)
        for j in alive:
            iou = _iou64(boxes[i], boxes[j])
            if method == "linear":
                s[j] *= (1 - iou) if iou > iou_thr else 1.0
            else:
                s[j] *= math.exp(-iou * iou / sigma)
        alive = [j for j in alive if s[j] >= score_thr]
    return keep, kept_scores


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_soft_nms_matches_float64_reference(device, method, dtype):
    g = torch.Generator().manual_seed(hash(("soft", method, str(dtype))) % 2**31)
    for trial in range(30):
        n = int(torch.randint(0, 60, (1,), generator=g))
        boxes, scores = _case(KINDS[trial % 3], n, g)
        boxes, scores = boxes.to(dtype), scores.to(dtype)
        args = (0.3, 0.5, 0.05, method)
        keep, new_scores = detops.soft_nms(boxes.to(device), scores.to(device), *args)
        want_keep, want_scores = _reference_soft_nms(boxes, scores, *args)
        assert keep.cpu().tolist() == want_keep, f"trial {trial}"
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(new_scores.cpu().double(), torch.tensor(want_scores, dtype=torch.float64),
                                   rtol=tol, atol=tol)


def test_soft_nms_edge_cases(device):
    f = dict(device=device, dtype=torch.float32)
    keep, s = detops.soft_nms(torch.zeros(0, 4, **f), torch.zeros(0, **f))
    assert keep.shape == (0,) and s.shape == (0,)
    boxes = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [float("nan"), 0, 1, 1], [2, 2, 3, 3]], **f)
    scores = torch.tensor([0.9, 0.8, 0.7, float("nan")], **f)
    keep, s = detops.soft_nms(boxes, scores, 0.5, 0.5, 0.01, "linear")
    # Box 1 is box 0's duplicate: decayed to 0 and dropped; the NaN box is kept
    # undecayed; the NaN score is dropped.
    assert keep.tolist() == [0, 2] and s.tolist() == pytest.approx([0.9, 0.7])
    keep, s = detops.soft_nms(boxes.half(), scores.half(), 0.5, 0.5, 0.01, "gaussian")
    assert s.dtype == torch.float32 and keep.tolist() == [0, 2, 1]  # 0.8 * exp(-2) < 0.7


# ------------------------------------------------------------------ matrix_nms


def _reference_matrix_nms(boxes, scores, idxs, method, sigma, score_thr):
    b = boxes.double().tolist()
    s = scores.double().tolist()
    cls = idxs.tolist() if idxs is not None else [0] * len(s)
    order = sorted((i for i in range(len(s)) if not math.isnan(s[i])), key=lambda i: (-s[i], i))
    n = len(order)
    iou = [[_iou64(b[order[i]], b[order[j]]) if cls[order[i]] == cls[order[j]] else 0.0 for j in range(n)]
           for i in range(n)]
    comp = [max([iou[i][j] for i in range(j)], default=0.0) for j in range(n)]
    decayed = []
    for j in range(n):
        d = 1.0
        for i in range(j):
            if cls[order[i]] != cls[order[j]]:
                continue
            if method == "linear":
                term = (1 - iou[i][j]) / (1 - comp[i]) if 1 - comp[i] > 0 else math.inf
            else:
                term = math.exp(-sigma * (iou[i][j] ** 2 - comp[i] ** 2))
            d = min(d, term)
        decayed.append(s[order[j]] * d)
    pos = [p for p in range(n) if decayed[p] >= score_thr]
    pos.sort(key=lambda p: -decayed[p])  # stable: ties keep the score order
    return [order[p] for p in pos], [decayed[p] for p in pos]


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("with_classes", [False, True])
def test_matrix_nms_matches_float64_reference(device, method, with_classes):
    g = torch.Generator().manual_seed(hash(("matrix", method, with_classes)) % 2**31)
    for trial in range(20):
        n = int(torch.randint(0, 80, (1,), generator=g))
        boxes, scores = _case(KINDS[trial % 5], n, g)
        idxs = torch.randint(0, 3, (n,), generator=g) if with_classes else None
        keep, new_scores = detops.matrix_nms(boxes.to(device), scores.to(device),
                                             None if idxs is None else idxs.to(device), method, 2.0, 0.1)
        want_keep, want_scores = _reference_matrix_nms(boxes, scores, idxs, method, 2.0, 0.1)
        assert keep.cpu().tolist() == want_keep, f"trial {trial}"
        torch.testing.assert_close(new_scores.cpu(), torch.tensor(want_scores, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
        # float32 agrees with the float64 reference to float32 rounding.
        _, s32 = detops.matrix_nms(boxes.float().to(device), scores.float().to(device),
                                   None if idxs is None else idxs.to(device), method, 2.0, 0.0)
        want32 = _reference_matrix_nms(boxes.float(), scores.float(), idxs, method, 2.0, 0.0)[1]
        torch.testing.assert_close(s32.cpu().double().sort().values,
                                   torch.tensor(want32, dtype=torch.float64).sort().values, rtol=1e-4, atol=1e-5)


def test_matrix_nms_nan_and_duplicates(device):
    boxes = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2]], device=device)
    scores = torch.tensor([0.9, 0.8, float("nan"), 0.6], device=device)
    keep, s = detops.matrix_nms(boxes, scores, method="linear", score_threshold=0.0)
    want_keep, want_s = _reference_matrix_nms(boxes.cpu(), scores.cpu(), None, "linear", 2.0, 0.0)
    assert keep.tolist() == want_keep and 2 not in keep.tolist()
    torch.testing.assert_close(s.cpu().double(), torch.tensor(want_s, dtype=torch.float64))


# ------------------------------------------------------------------ opcheck, compile, errors


def _opcheck_samples(device):
    g = torch.Generator().manual_seed(9)
    boxes, scores = _case("clustered", 40, g)
    boxes, scores = boxes.float().to(device), scores.float().to(device)
    idxs = torch.randint(0, 3, (40,), generator=g).to(device)
    mc_boxes = boxes[:30].reshape(2, 15, 4)
    mc_scores = torch.rand(2, 15, 3, generator=g).to(device)
    return [
        (torch.ops.detops.nms, (boxes, scores, 0.5)),
        (torch.ops.detops.batched_nms, (boxes, scores, idxs, 0.5)),
        (torch.ops.detops.multiclass_nms, (mc_boxes, mc_scores, 0.2, 0.5, 4, 6)),
        (torch.ops.detops.soft_nms, (boxes, scores, 0.3, 0.5, 0.01, "gaussian")),
        (torch.ops.detops.matrix_nms, (boxes, scores, idxs, "linear", 2.0, 0.05)),
        (torch.ops.detops.matrix_nms, (boxes, scores, None, "gaussian", 2.0, 0.05)),
    ]


def test_opcheck(device):
    for op, args in _opcheck_samples(device):
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    boxes, scores = _case("clustered", 200, g)
    boxes, scores = boxes.float(), scores.float()
    idxs = torch.randint(0, 4, (200,), generator=g)

    def pipeline(boxes, scores, idxs):
        keep = detops.nms(boxes, scores, 0.5)
        per_class = detops.batched_nms(boxes, scores, idxs, 0.5)
        soft_keep, soft_scores = detops.soft_nms(boxes, scores, 0.3, 0.5, 0.05, "linear")
        mkeep, mscores = detops.matrix_nms(boxes, scores, idxs)
        mc = detops.multiclass_nms(boxes[None], scores[None, :, None], 0.1, 0.5, 10, 20)
        return boxes[keep].sum() + per_class.numel(), soft_scores.sum() + mscores.sum(), mc

    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(pipeline, fullgraph=True)
        got = compiled(boxes, scores, idxs)
    want = pipeline(boxes, scores, idxs)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    for a, b in zip(got[2], want[2]):
        assert torch.equal(a, b)


def test_bad_inputs():
    boxes, scores = torch.rand(5, 4), torch.rand(5)
    with pytest.raises(ValueError, match="boxes must have shape"):
        detops.nms(torch.rand(5, 3), scores, 0.5)
    with pytest.raises(ValueError, match="scores must have shape"):
        detops.nms(boxes, torch.rand(5, 1), 0.5)
    with pytest.raises(ValueError, match="same length"):
        detops.nms(boxes, torch.rand(4), 0.5)
    # Thresholds outside [0, 1] and float idxs are accepted, as torchvision does
    # (issue 11; tests/test_torchvision_compat.py compares them with torchvision).
    with pytest.raises(TypeError, match="boxes must be"):
        detops.nms("boxes", scores, 0.5)
    with pytest.raises(TypeError, match="idxs must be a real"):
        detops.batched_nms(boxes, scores, torch.zeros(5, dtype=torch.complex64), 0.5)
    with pytest.raises(ValueError, match=r"idxs must have shape \[5\]"):
        detops.batched_nms(boxes, scores, torch.zeros(4, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="scores must have shape"):
        detops.multiclass_nms(torch.rand(1, 5, 4), torch.rand(5, 2), 0.1, 0.5, 3, 3)
    with pytest.raises(ValueError, match="boxes must have shape"):
        detops.multiclass_nms(torch.rand(1, 4, 4), torch.rand(1, 5, 2), 0.1, 0.5, 3, 3)
    with pytest.raises(ValueError, match="max_detections"):
        detops.multiclass_nms(torch.rand(1, 5, 4), torch.rand(1, 5, 2), 0.1, 0.5, 3, 0)
    with pytest.raises(ValueError, match="method"):
        detops.soft_nms(boxes, scores, method="hard")
    with pytest.raises(ValueError, match="sigma"):
        detops.matrix_nms(boxes, scores, sigma=0.0)
    # Direct operator calls are checked in C++ too.
    with pytest.raises(RuntimeError, match="iou_threshold must be in"):
        torch.ops.detops.nms(boxes, scores, 2.0)
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.detops.nms(boxes, scores.double(), 0.5)
    with pytest.raises(RuntimeError, match="idxs must be int64"):
        torch.ops.detops.batched_nms(boxes, scores, torch.zeros(5, dtype=torch.int32), 0.5)


def test_mixed_dtypes_promote():
    g = torch.Generator().manual_seed(12)
    boxes, scores = _case("dense", 100, g)
    got = detops.nms(boxes.float(), scores, 0.5)  # float32 boxes, float64 scores
    assert torch.equal(got, torchvision.ops.nms(boxes.float().double(), scores, 0.5))
    int_boxes = (boxes * 10).round().long()
    assert torch.equal(detops.nms(int_boxes, scores.float(), 0.5),
                       torchvision.ops.nms(int_boxes.float(), scores.float(), 0.5))



def test_parallel_paths_match_torchvision(device):
    """Sizes above the CPU kernel's parallel thresholds (blocked nms, classes in
    parallel); clustered boxes keep torchvision's all-pairs scan short."""
    g = torch.Generator().manual_seed(21)
    boxes, scores = _case("clustered", 40000, g)
    boxes, scores = boxes.float().to(device), scores.float().to(device)
    assert torch.equal(detops.nms(boxes, scores, 0.5), _tv_nms(boxes, scores, 0.5))
    idxs = torch.randint(0, 8, (40000,), generator=g).to(device)
    want = _tv_batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(detops.batched_nms(boxes, scores, idxs, 0.5), want)


def _vectorized_matrix_nms(boxes, scores, idxs, sigma):
    """Gaussian Matrix NMS in float64 torch ops (same definition as
    _reference_matrix_nms), for sizes the Python loops cannot reach."""
    boxes, scores = boxes.double(), scores.double()
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    iou = torchvision.ops.box_iou(b, b).nan_to_num(0.0).triu(diagonal=1)
    if idxs is not None:
        c = idxs[order]
        iou = iou * (c[:, None] == c[None, :])
    comp = iou.max(0).values
    terms = torch.exp(-sigma * (iou**2 - comp[:, None] ** 2))
    terms = torch.where(torch.ones_like(iou, dtype=torch.bool).triu(diagonal=1), terms, torch.ones_like(terms))
    decayed = scores[order] * terms.min(0).values.clamp(max=1)
    by_decay = torch.sort(decayed, descending=True, stable=True).indices
    return order[by_decay], decayed[by_decay]


def test_matrix_nms_parallel_path(device):
    g = torch.Generator().manual_seed(22)
    boxes, scores = _case("uniform", 4200, g)
    idxs = torch.randint(0, 5, (4200,), generator=g)
    keep, s = detops.matrix_nms(boxes.to(device), scores.to(device), idxs.to(device), "gaussian", 2.0, 0.0)
    want_keep, want_s = _vectorized_matrix_nms(boxes, scores, idxs, 2.0)
    torch.testing.assert_close(s.cpu(), want_s, rtol=1e-12, atol=1e-12)
    assert torch.equal(keep.cpu(), want_keep)


def test_torch_export():
    class Model(torch.nn.Module):
        def forward(self, boxes, scores):
            keep = detops.nms(boxes, scores, 0.5)
            return boxes[keep]

    g = torch.Generator().manual_seed(13)
    boxes, scores = _case("clustered", 100, g)
    boxes, scores = boxes.float(), scores.float()
    exported = torch.export.export(Model(), (boxes, scores))
    assert torch.equal(exported.module()(boxes, scores), boxes[torchvision.ops.nms(boxes, scores, 0.5)])


def test_multiclass_nms_parallel_path(device):
    """Above the CPU kernel's parallel threshold (B * N * C >= 2**22 scores),
    with a high score threshold so the reference stays cheap."""
    g = torch.Generator().manual_seed(23)
    B, N, C = 2, 25000, 84
    boxes = torch.stack([_case("uniform", N, g)[0] for _ in range(B)]).float()
    scores = torch.rand(B, N, C, generator=g)
    args = (0.998, 0.3, 5, 60)
    got = detops.multiclass_nms(boxes.to(device), scores.to(device), *args)
    want = _reference_multiclass(boxes, scores, *args)
    for gt, wt in zip(got, want):
        assert torch.equal(gt.cpu(), wt)
