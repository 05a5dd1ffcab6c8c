"""The IoU family against torchvision, a float64 reference, gradcheck, opcheck,
torch.compile, and bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tvo

import detops
from tests.conftest import triton_dtypes
from tests.helpers import assert_close, random_boxes

MATRIX_FUNCS = {
    "iou": (detops.box_iou, tvo.box_iou),
    "giou": (detops.generalized_box_iou, tvo.generalized_box_iou),
    "diou": (detops.distance_box_iou, tvo.distance_box_iou),
    "ciou": (detops.complete_box_iou, tvo.complete_box_iou),
}
LOSS_FUNCS = {
    "giou": (detops.generalized_box_iou_loss, tvo.generalized_box_iou_loss),
    "diou": (detops.distance_box_iou_loss, tvo.distance_box_iou_loss),
    "ciou": (detops.complete_box_iou_loss, tvo.complete_box_iou_loss),
}


def edge_case_boxes(dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Degenerate, zero-area, identical, nested, touching, disjoint and huge boxes."""
    rows = [
        [0, 0, 10, 10],
        [0, 0, 10, 10],  # identical to the first
        [5, 5, 15, 15],  # partial overlap
        [10, 0, 20, 10],  # touches the first along an edge
        [2, 2, 4, 4],  # nested
        [100, 100, 110, 120],  # disjoint
        [3, 3, 3, 8],  # zero width
        [0, 0, 0, 0],  # a point
        [1e6, 1e6, 1e6 + 50, 1e6 + 30],  # huge coordinates
        [1e6 + 10, 1e6 + 5, 1e6 + 60, 1e6 + 40],
        [-50, -40, -10, -5],  # negative coordinates
    ]
    return torch.tensor(rows, dtype=dtype, device=device)


def boxes_pair(n: int, m: int, dtype, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    b1 = random_boxes(n, dtype=dtype, device=device, generator=g)
    b2 = random_boxes(m, dtype=dtype, device=device, generator=g)
    if n and m:
        b2[: min(n, m) // 4] = b1[: min(n, m) // 4]  # exact ties in min/max
    return b1, b2


# ------------------------------------------------------------------ matrices


@pytest.mark.parametrize("variant", ["iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrix_and_loss_bit_equal_to_torchvision_on_cpu(variant, dtype):
    """The CPU kernels follow torchvision's formulas operation by operation
    (CIoU's atan by torch's own atan): equal bits (NaN where torchvision's is,
    for zero-area pairs) on random boxes with exact ties and on the edge cases."""
    b1, b2 = boxes_pair(157, 93, dtype, "cpu", seed=31)
    edges = edge_case_boxes(dtype)
    b1, b2 = torch.cat([b1, edges]), torch.cat([b2, edges])
    ours, ref = MATRIX_FUNCS[variant]
    assert_close(ours(b1, b2), ref(b1, b2), rtol=0, atol=0)
    if variant in LOSS_FUNCS:
        ours, ref = LOSS_FUNCS[variant]
        n = min(len(b1), len(b2))
        for reduction in ("none", "sum"):
            assert_close(ours(b1[:n], b2[:n], reduction), ref(b1[:n], b2[:n], reduction), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_complete_box_iou_loss_bit_equal_many_pairs(dtype):
    """torch's atan splits a long tensor over threads, each with a vectorised
    body and a scalar tail that round differently; CIoU stays bit-equal there."""
    b1, b2 = boxes_pair(40_001, 40_001, dtype, "cpu", seed=5)
    n = len(b1)
    ours = detops.complete_box_iou_loss(b1, b2[:n])
    assert torch.equal(ours, tvo.complete_box_iou_loss(b1, b2[:n]))


@pytest.mark.parametrize("variant", list(MATRIX_FUNCS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrix_equals_torchvision_random(variant, dtype, device):
    ours, ref = MATRIX_FUNCS[variant]
    for seed in range(3):
        b1, b2 = boxes_pair(37 + seed, 53, dtype, device, seed)
        assert_close(ours(b1, b2), ref(b1, b2), rtol=1e-6, atol=1e-6, msg=f"{variant} seed {seed}")


@pytest.mark.parametrize("variant", list(MATRIX_FUNCS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrix_equals_torchvision_edge_cases(variant, dtype, device):
    ours, ref = MATRIX_FUNCS[variant]
    boxes = edge_case_boxes(dtype, device)
    assert_close(ours(boxes, boxes), ref(boxes, boxes), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", list(MATRIX_FUNCS))
def test_matrix_float32_close_to_float64_reference(variant, device):
    ours, ref = MATRIX_FUNCS[variant]
    b1, b2 = boxes_pair(64, 48, torch.float32, device, 11)
    expected = ref(b1.double(), b2.double())
    assert_close(ours(b1, b2).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", list(MATRIX_FUNCS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matrix_reduced_precision_computes_in_float32(variant, dtype, device):
    """float16/bfloat16 boxes are read as is and computed in float32; the
    result is float32, as torchvision's is."""
    ours, ref = MATRIX_FUNCS[variant]
    b1, b2 = boxes_pair(20, 30, dtype, device, 3)
    out = ours(b1, b2)
    assert out.dtype == torch.float32 == ref(b1, b2).dtype
    assert_close(out, ref(b1.float(), b2.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "dtype1,dtype2",
    [
        (torch.int64, torch.int64),
        (torch.int32, torch.int32),
        (torch.int64, torch.float32),
        (torch.float32, torch.float64),
        (torch.float16, torch.float32),
        (torch.float16, torch.float64),
        (torch.int64, torch.float64),
    ],
)
@pytest.mark.parametrize("variant", list(MATRIX_FUNCS))
def test_matrix_integer_and_mixed_dtypes_like_torchvision(variant, dtype1, dtype2):
    ours, ref = MATRIX_FUNCS[variant]
    g = torch.Generator().manual_seed(5)
    b1 = (random_boxes(9, generator=g) * 2).to(dtype1)
    b2 = (random_boxes(7, generator=g) * 2).to(dtype2)
    expected = ref(b1, b2)
    out = ours(b1, b2)
    assert out.dtype == expected.dtype
    tol = 1e-3 if torch.float16 in (dtype1, dtype2) else 1e-6
    assert_close(out, expected, rtol=tol, atol=tol)


def test_matrix_small_integer_boxes_do_not_wrap_around():
    """torchvision subtracts uint8 corners in uint8, so disjoint boxes wrap
    around to a positive overlap; detops computes exactly (documented)."""
    b1 = torch.tensor([[0, 0, 10, 10]], dtype=torch.uint8)
    b2 = torch.tensor([[20, 20, 30, 30]], dtype=torch.uint8)
    assert detops.box_iou(b1, b2).item() == 0.0
    assert detops.box_iou(b1, b1).item() == 1.0


def test_box_iou_formats_like_torchvision(device):
    b1, b2 = boxes_pair(15, 12, torch.float64, device, 2)
    for fmt in ("xywh", "cxcywh"):
        c1 = torchvision_convert(b1, fmt)
        c2 = torchvision_convert(b2, fmt)
        assert_close(detops.box_iou(c1, c2, fmt=fmt), tvo.box_iou(c1, c2, fmt=fmt), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="fmt"):
        detops.box_iou(b1, b2, fmt="cxcywhr")


def torchvision_convert(boxes, fmt):
    return tvo.box_convert(boxes, in_fmt="xyxy", out_fmt=fmt)


@pytest.mark.parametrize("variant", list(MATRIX_FUNCS))
def test_matrix_batched_and_broadcast(variant, device):
    ours, ref = MATRIX_FUNCS[variant]
    g = torch.Generator().manual_seed(9)
    b1 = random_boxes(3 * 6, generator=g).reshape(3, 6, 4).to(device)
    b2 = random_boxes(5, generator=g).to(device)
    assert_close(ours(b1, b2), ref(b1, b2), rtol=1e-6, atol=1e-6)
    b2 = random_boxes(2 * 5, generator=g).reshape(2, 1, 5, 4).to(device)
    out = ours(b1, b2.expand(2, 3, 5, 4))
    assert out.shape == (2, 3, 6, 5)
    assert_close(ours(b1, b2), out, rtol=0, atol=0)


@pytest.mark.parametrize("variant", list(MATRIX_FUNCS))
def test_aligned_is_the_diagonal(variant, device):
    ours, ref = MATRIX_FUNCS[variant]
    b1, b2 = boxes_pair(40, 40, torch.float64, device, 4)
    out = ours(b1, b2, aligned=True)
    assert out.shape == (40,)
    assert_close(out, torch.diagonal(ref(b1, b2)), rtol=1e-9, atol=1e-9)
    b1.requires_grad_()
    b2.requires_grad_()
    ga1, ga2 = torch.autograd.grad(ours(b1, b2, aligned=True).sum(), (b1, b2))
    gr1, gr2 = torch.autograd.grad(torch.diagonal(ref(b1, b2)).sum(), (b1, b2))
    assert_close(ga1, gr1, rtol=1e-7, atol=1e-9)
    assert_close(ga2, gr2, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="same shape"):
        ours(b1[:3], b2[:4], aligned=True)


@pytest.mark.parametrize("variant", list(MATRIX_FUNCS))
def test_matrix_gradients_equal_torchvision(variant, device):
    ours, ref = MATRIX_FUNCS[variant]
    b1, b2 = boxes_pair(23, 17, torch.float64, device, 6)
    weight = torch.randn(23, 17, dtype=torch.float64, device=device)
    grads = []
    for fn in (ours, ref):
        x1 = b1.clone().requires_grad_()
        x2 = b2.clone().requires_grad_()
        grads.append(torch.autograd.grad((fn(x1, x2) * weight).sum(), (x1, x2)))
    for got, want in zip(*grads):
        assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("variant", ["iou", "giou", "diou"])
def test_matrix_gradcheck(variant):
    """CIoU is left out: its alpha carries no gradient (as in torchvision), so
    its analytic gradient is not the numerical one; test_matrix_gradients_equal_torchvision
    covers it."""
    ours, _ = MATRIX_FUNCS[variant]
    b1, b2 = boxes_pair(5, 4, torch.float64, "cpu", 8)
    b2[0] = b1[0] + 0.37  # overlapping but with no exact ties (non-differentiable points)
    b1.requires_grad_()
    b2.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: ours(x, y), (b1, b2))


def test_empty_inputs(device):
    empty = torch.zeros(0, 4, device=device)
    some = random_boxes(3, device=device)
    for ours, ref in MATRIX_FUNCS.values():
        assert ours(empty, some).shape == ref(empty, some).shape == (0, 3)
        assert ours(some, empty).shape == (3, 0)
        assert ours(empty, empty, aligned=True).shape == (0,)
    for ours, ref in LOSS_FUNCS.values():
        for reduction in ("none", "mean", "sum"):
            out = ours(empty, empty, reduction=reduction)
            expected = ref(empty, empty, reduction=reduction)
            assert out.shape == expected.shape
            assert_close(out, expected)


# ------------------------------------------------------------------ losses


@pytest.mark.parametrize("variant", list(LOSS_FUNCS))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_and_gradients_equal_torchvision(variant, reduction, dtype, device):
    ours, ref = LOSS_FUNCS[variant]
    b1, b2 = boxes_pair(300, 300, dtype, device, 12)
    b2[200:] = random_boxes(100, scale=1000.0, dtype=dtype, device=device)  # many disjoint pairs
    upstream = torch.rand(300, dtype=dtype, device=device) if reduction == "none" else torch.ones((), dtype=dtype, device=device)
    results = []
    for fn in (ours, ref):
        x1 = b1.clone().requires_grad_()
        x2 = b2.clone().requires_grad_()
        loss = fn(x1, x2, reduction=reduction)
        results.append((loss.detach(), *torch.autograd.grad(loss, (x1, x2), upstream)))
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for got, want, what in zip(results[0], results[1], ("loss", "grad boxes1", "grad boxes2")):
        assert got.dtype == want.dtype
        assert_close(got, want, rtol=tol, atol=tol * 10, msg=f"{variant} {reduction} {what}")


@pytest.mark.parametrize("variant", list(LOSS_FUNCS))
def test_loss_edge_cases_equal_torchvision(variant, device):
    ours, ref = LOSS_FUNCS[variant]
    boxes = edge_case_boxes(torch.float64, device)
    b1 = boxes.repeat_interleave(len(boxes), dim=0)
    b2 = boxes.repeat(len(boxes), 1)
    results = []
    for fn in (ours, ref):
        x1 = b1.clone().requires_grad_()
        x2 = b2.clone().requires_grad_()
        loss = fn(x1, x2)
        results.append((loss.detach(), *torch.autograd.grad(loss.sum(), (x1, x2))))
    for got, want in zip(*results):
        assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant", list(LOSS_FUNCS))
def test_loss_single_box_and_broadcast(variant, device):
    ours, ref = LOSS_FUNCS[variant]
    b1, b2 = boxes_pair(6, 6, torch.float32, device, 13)
    assert_close(ours(b1[0], b2[0]), ref(b1[0], b2[0]))
    assert_close(ours(b1, b2[0]), ref(b1, b2[0]))


@pytest.mark.parametrize("variant", list(LOSS_FUNCS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_loss_other_dtypes_like_torchvision(variant, dtype, device):
    ours, ref = LOSS_FUNCS[variant]
    b1, b2 = boxes_pair(50, 50, torch.float32, device, 14)
    b1, b2 = b1.to(dtype), b2.to(dtype)
    out, expected = ours(b1, b2), ref(b1, b2)
    assert out.dtype == expected.dtype == torch.float32
    assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["giou", "diou"])
def test_loss_gradcheck(variant):
    ours, _ = LOSS_FUNCS[variant]
    b1, b2 = boxes_pair(6, 6, torch.float64, "cpu", 15)
    b2 += 0.123  # no exact ties
    b1.requires_grad_()
    b2.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: ours(x, y, reduction="sum"), (b1, b2))


def test_ciou_loss_alpha_is_constant():
    """gradcheck of CIoU with alpha held fixed: the analytic gradient must equal
    the numerical one of diou_loss + alpha * v with alpha detached."""
    b1, b2 = boxes_pair(5, 5, torch.float64, "cpu", 16)
    b2 += 0.05
    x1 = b1.clone().requires_grad_()
    x2 = b2.clone().requires_grad_()
    g_ours = torch.autograd.grad(detops.complete_box_iou_loss(x1, x2, reduction="sum"), (x1, x2))
    g_ref = torch.autograd.grad(tvo.complete_box_iou_loss(x1, x2, reduction="sum"), (x1, x2))
    for got, want in zip(g_ours, g_ref):
        assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_loss_nan_boxes_give_nan_not_a_crash(device):
    b1, b2 = boxes_pair(4, 4, torch.float32, device, 17)
    b1[1, 2] = float("nan")
    for ours, ref in LOSS_FUNCS.values():
        out = ours(b1, b2)
        assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2, 3]]).all()
        assert_close(out, ref(b1, b2))


# ------------------------------------------------------------------ Triton loss kernels


@pytest.mark.triton
@pytest.mark.parametrize("variant", list(LOSS_FUNCS))
def test_triton_loss_kernels_equal_cpp(variant, triton_device):
    from detops.kernels import box_iou as triton_box_iou

    for dtype in triton_dtypes(triton_device):
        b1, b2 = boxes_pair(200, 200, dtype, triton_device, 18)
        b2[150:] = random_boxes(50, scale=1000.0, dtype=dtype, device=triton_device)
        grad = torch.rand(200, dtype=torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype,
                          device=triton_device)
        out = triton_box_iou.box_iou_loss_forward(b1, b2, variant, 1e-7)
        g1, g2 = triton_box_iou.box_iou_loss_backward(grad, b1, b2, variant, 1e-7)
        cpu = [t.cpu() for t in (b1, b2, grad)]
        ref_out = torch.ops.detops.box_iou_loss(cpu[0], cpu[1], variant, 1e-7)
        ref_g1, ref_g2 = torch.ops.detops.box_iou_loss_backward(cpu[2], cpu[0], cpu[1], variant, 1e-7)
        tol = {torch.float64: 1e-12, torch.float32: 2e-6}.get(dtype, 2e-3)
        assert out.dtype == ref_out.dtype and g1.dtype == dtype
        assert_close(out.cpu(), ref_out, rtol=tol, atol=tol, msg=f"{dtype} loss")
        assert_close(g1.cpu().double(), ref_g1.double(), rtol=tol, atol=tol, msg=f"{dtype} grad1")
        assert_close(g2.cpu().double(), ref_g2.double(), rtol=tol, atol=tol, msg=f"{dtype} grad2")


@pytest.mark.triton
def test_triton_loss_kernels_empty(triton_device):
    from detops.kernels import box_iou as triton_box_iou

    empty = torch.zeros(0, 4, device=triton_device)
    assert triton_box_iou.box_iou_loss_forward(empty, empty, "giou", 1e-7).shape == (0,)
    with pytest.raises(ValueError, match="variant"):
        triton_box_iou.box_iou_loss_forward(empty, empty, "iou", 1e-7)


# ------------------------------------------------------------------ registration


def test_opcheck_all_ops():
    b1, b2 = boxes_pair(7, 5, torch.float64, "cpu", 19)
    b2[:3] = b1[:3] + 0.3
    for variant in ("iou", "giou", "diou", "ciou"):
        m1 = b1[None].clone().requires_grad_()
        m2 = b2[None].clone().requires_grad_()
        torch.library.opcheck(torch.ops.detops.box_iou_matrix, (m1, m2, variant, 1e-7))
        p1 = b1[:5].clone().requires_grad_()
        p2 = b2.clone().requires_grad_()
        torch.library.opcheck(torch.ops.detops.box_iou_aligned, (p1, p2, variant, 1e-7))
        if variant != "iou":
            torch.library.opcheck(torch.ops.detops.box_iou_loss, (p1, p2, variant, 1e-7))
    for dtype in (torch.float32, torch.float16):
        x = b1[None].to(dtype)
        torch.library.opcheck(torch.ops.detops.box_iou_matrix, (x, x, "giou", 1e-7))


def test_torch_compile_fullgraph():
    b1, b2 = boxes_pair(12, 9, torch.float32, "cpu", 20)

    def step(x, y):
        return detops.generalized_box_iou(x, y).sum() + detops.complete_box_iou_loss(x[:9], y, reduction="mean")

    compiled = torch.compile(step, fullgraph=True)
    assert_close(compiled(b1, b2), step(b1, b2))
    x = b1.clone().requires_grad_()
    torch.autograd.grad(compiled(x, b2), x)


# ------------------------------------------------------------------ bad input


def test_errors_name_the_argument():
    good = random_boxes(3)
    with pytest.raises(ValueError, match=r"boxes1 must have shape"):
        detops.box_iou(torch.rand(3, 5), good)
    with pytest.raises(ValueError, match=r"boxes2 must have shape"):
        detops.generalized_box_iou(good, torch.rand(4))
    with pytest.raises(TypeError, match=r"boxes1 must be a real"):
        detops.box_iou(good.to(torch.complex64), good)
    with pytest.raises(TypeError, match=r"boxes2 must be a real"):
        detops.distance_box_iou_loss(good, good.to(torch.complex64))
    with pytest.raises(ValueError, match=r"same device"):
        detops.complete_box_iou(good, good.to("meta"))
    with pytest.raises(ValueError, match=r"reduction"):
        detops.generalized_box_iou_loss(good, good, reduction="avg")
    with pytest.raises(TypeError, match=r"boxes1 must be a torch.Tensor"):
        detops.box_iou([[0, 0, 1, 1]], good)
    with pytest.raises(RuntimeError, match=r"variant"):
        torch.ops.detops.box_iou_matrix(good[None], good[None], "bogus", 0.0)
    with pytest.raises(RuntimeError, match=r"same batch size"):
        torch.ops.detops.box_iou_matrix(good[None], good[None].expand(2, 3, 4), "iou", 0.0)


# ------------------------------------------------------------------ formats and IoF


def pycocotools_overlaps(d_xywh, g_xywh, crowd):
    mask = pytest.importorskip("pycocotools.mask")
    import numpy as np

    return torch.from_numpy(np.asarray(mask.iou(d_xywh.numpy(), g_xywh.numpy(), crowd.numpy().astype(np.uint8))))


def test_xywh_iou_and_iof_equal_pycocotools_exactly():
    """COCO's box overlaps (IoU, and IoF against crowd regions) bit for bit:
    native xywh reading keeps pycocotools' w*h areas and x+w edges."""
    g = torch.Generator().manual_seed(21)
    d = random_boxes(60, generator=g, dtype=torch.float64)
    t = random_boxes(25, generator=g, dtype=torch.float64)
    d[:, 2:] -= d[:, :2]
    t[:, 2:] -= t[:, :2]
    t[:5] = d[:5]  # identical boxes: IoU exactly 1
    crowd = torch.arange(25) % 4 == 0
    expected = pycocotools_overlaps(d, t, crowd)
    ours = torch.where(crowd, detops.box_iof(d, t, fmt="xywh"), detops.box_iou(d, t, fmt="xywh")).nan_to_num(0.0)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_iof_against_float64_reference(fmt, device):
    b1, b2 = boxes_pair(30, 20, torch.float64, device, 22)
    inter = (torch.min(b1[:, None, 2:], b2[None, :, 2:]) - torch.max(b1[:, None, :2], b2[None, :, :2])).clamp(min=0)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    expected = inter.prod(-1) / area1[:, None]
    c1, c2 = (b1, b2) if fmt == "xyxy" else (torchvision_convert(b1, fmt), torchvision_convert(b2, fmt))
    assert_close(detops.box_iof(c1, c2, fmt=fmt), expected, rtol=1e-12, atol=1e-12)
    assert_close(detops.box_iof(c1[:20], c2, fmt=fmt, aligned=True), expected[:20].diagonal(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
@pytest.mark.parametrize("func", [detops.box_iou, detops.box_iof])
def test_formats_gradcheck_and_equal_torchvision_gradients(fmt, func):
    b1, b2 = boxes_pair(5, 4, torch.float64, "cpu", 23)
    b2[0] = b1[0] + 0.31
    c1 = torchvision_convert(b1, fmt).requires_grad_()
    c2 = torchvision_convert(b2, fmt).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: func(x, y, fmt=fmt), (c1, c2))
    assert torch.autograd.gradcheck(lambda x, y: func(x, y[:4], fmt=fmt, aligned=True), (c1[:4], c2))
    if func is detops.box_iou:
        got = torch.autograd.grad(func(c1, c2, fmt=fmt).sum(), (c1, c2))
        want = torch.autograd.grad(tvo.box_iou(c1, c2, fmt=fmt).sum(), (c1, c2))
        for a, b in zip(got, want):
            assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_format_only_for_iou_and_iof():
    b = random_boxes(3)[None]
    with pytest.raises(RuntimeError, match="'iou' and 'iof' variants only"):
        torch.ops.detops.box_iou_matrix(b, b, "giou", 0.0, "xywh")
    with pytest.raises(RuntimeError, match="fmt must be"):
        torch.ops.detops.box_iou_matrix(b, b, "iou", 0.0, "xyxyr")
    with pytest.raises(ValueError, match="fmt must be"):
        detops.box_iof(b[0], b[0], fmt="xyxyr")


def test_opcheck_formats_and_iof():
    b1, b2 = boxes_pair(6, 5, torch.float64, "cpu", 24)
    b2[:3] = b1[:3] + 0.3
    for fmt in ("xyxy", "xywh", "cxcywh"):
        for variant in ("iou", "iof"):
            m1 = torchvision_convert(b1, fmt)[None].clone().requires_grad_() if fmt != "xyxy" else b1[None].clone().requires_grad_()
            m2 = torchvision_convert(b2, fmt)[None].clone().requires_grad_() if fmt != "xyxy" else b2[None].clone().requires_grad_()
            torch.library.opcheck(torch.ops.detops.box_iou_matrix, (m1, m2, variant, 0.0, fmt))
            torch.library.opcheck(torch.ops.detops.box_iou_aligned, (m1[0, :5], m2[0], variant, 0.0, fmt))
