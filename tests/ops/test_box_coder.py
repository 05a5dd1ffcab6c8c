"""Box encoding/decoding against torchvision's BoxCoder and a float64
reference: random and edge-case codes (the dw/dh clip, NaN), batched decode,
empty inputs, round trips, reduced precision, gradients, opcheck,
torch.compile and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils

import detops
from tests.helpers import assert_close, random_boxes

WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (0.5, 2.0, 3.0, 0.25)]
CLIP = math.log(1000.0 / 16)


def random_codes(n: int, k: int, *, dtype=torch.float32, device="cpu", seed=0, scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4 * k, dtype=torch.float64, generator=g) * scale).to(dtype=dtype, device=device)


def boxes_for(n: int, *, dtype=torch.float32, device="cpu", seed=0) -> torch.Tensor:
    return random_boxes(n, scale=500.0, dtype=dtype, device=device, generator=torch.Generator().manual_seed(seed))


def tol(dtype):
    return {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


def assert_matches_torchvision(actual, expected, device, *, atol_scale=100.0):
    """Bit-identical on the CPU: the kernel follows torchvision's order of
    operations and uses torch's own exp/log. CUDA may fuse multiply-adds (and
    torch divides by a scalar through its reciprocal there), so it is compared
    within a few ulps."""
    if device == "cpu":
        assert_close(actual, expected, rtol=0, atol=0)
    else:
        t = tol(expected.dtype)
        assert_close(actual, expected, rtol=t * 4, atol=t * atol_scale)


# ------------------------------------------------------------------ decode


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_single_equals_torchvision(weights, k, dtype, device):
    ours, ref = detops.BoxCoder(weights), tv_utils.BoxCoder(weights)
    for seed in range(3):
        codes = random_codes(257, k, dtype=dtype, device=device, seed=seed, scale=2.0)
        boxes = boxes_for(257, dtype=dtype, device=device, seed=seed)
        expected = ref.decode_single(codes, boxes)
        assert_matches_torchvision(ours.decode_single(codes, boxes), expected, device)
        assert_matches_torchvision(detops.decode_boxes(codes, boxes, weights, CLIP), expected, device)


def test_decode_clip_and_edge_cases(device):
    codes = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.5, -0.5, 10.0, -10.0],  # dw far above the clip
            [0.0, 0.0, CLIP, CLIP],  # exactly at the clip
            [0.0, 0.0, 100.0, 100.0],  # exp would overflow without the clip
            [1.0, 1.0, -200.0, 0.0],  # exp underflows to 0
            [float("nan"), 0.0, float("nan"), 0.0],  # NaN passes through, as torch.clamp does
            [float("inf"), 0.0, float("inf"), float("-inf")],
        ],
        dtype=torch.float64,
        device=device,
    )
    boxes = torch.tensor(
        [[0, 0, 10, 10], [5, 5, 5, 20], [0, 0, 0, 0], [1e6, 1e6, 1e6 + 50, 1e6 + 30], [-50, -40, -10, -5],
         [0, 0, 10, 10], [0, 0, 10, 10]],
        dtype=torch.float64,
        device=device,
    )
    for weights in WEIGHTS:
        for clip in (CLIP, 1.0, float("inf")):
            ours, ref = detops.BoxCoder(weights, clip), tv_utils.BoxCoder(weights, clip)
            for dtype in (torch.float32, torch.float64):
                c, b = codes.to(dtype), boxes.to(dtype)
                assert_matches_torchvision(ours.decode_single(c, b), ref.decode_single(c, b), device, atol_scale=1e6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_decode_equals_torchvision(dtype, device):
    weights = (10.0, 10.0, 5.0, 5.0)
    ours, ref = detops.BoxCoder(weights), tv_utils.BoxCoder(weights)
    boxes = [boxes_for(n, dtype=dtype, device=device, seed=n) for n in (50, 0, 73)]
    for k in (1, 4):
        codes = random_codes(123, k, dtype=dtype, device=device, seed=k)
        # torchvision reshapes whatever it is given to [sum N_i, -1].
        for c in (codes, codes.reshape(123, k, 4), codes.reshape(-1)):
            expected = ref.decode(c, boxes)
            got = ours.decode(c, boxes)
            assert got.shape == expected.shape == (123, k, 4)
            assert_matches_torchvision(got, expected, device)


def test_decode_empty(device):
    ours, ref = detops.BoxCoder((1.0, 1.0, 1.0, 1.0)), tv_utils.BoxCoder((1.0, 1.0, 1.0, 1.0))
    for k in (1, 3):
        codes = torch.zeros(0, 4 * k, device=device)
        empty = [torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device)]
        expected = ref.decode(codes, empty)
        got = ours.decode(codes, empty)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert ours.decode_single(codes, empty[0]).shape == ref.decode_single(codes, empty[0]).shape
    assert ours.decode_single(torch.zeros(5, 0, device=device), torch.zeros(5, 4, device=device)).shape == (5, 0)


def test_non_contiguous_inputs(device):
    weights = (10.0, 10.0, 5.0, 5.0)
    ours, ref = detops.BoxCoder(weights), tv_utils.BoxCoder(weights)
    codes = random_codes(80, 3, device=device, seed=21)[::2, :8]  # strided rows, a column slice
    boxes = boxes_for(160, device=device, seed=21)[::4]
    boxes_t = boxes.t().contiguous().t()  # column-major
    assert not codes.is_contiguous() and not boxes.is_contiguous() and not boxes_t.is_contiguous()
    assert_matches_torchvision(ours.decode_single(codes, boxes), ref.decode_single(codes, boxes), device)
    assert_matches_torchvision(ours.decode_single(codes, boxes_t), ref.decode_single(codes, boxes_t), device)
    flipped = boxes_t.flip(0)
    assert_matches_torchvision(ours.encode_single(boxes, flipped), ref.encode_single(boxes, flipped), device)


def test_decode_boxes_converted_to_codes_dtype(device):
    codes = random_codes(40, 2, dtype=torch.float32, device=device)
    boxes = boxes_for(40, dtype=torch.float64, device=device)
    ref = tv_utils.BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(codes, boxes)
    got = detops.BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(codes, boxes)
    assert got.dtype == ref.dtype == torch.float32
    assert_close(got, ref, rtol=tol(torch.float32), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_reduced_precision_close_to_float64(dtype, device):
    weights = (10.0, 10.0, 5.0, 5.0)
    codes = random_codes(300, 2, dtype=dtype, device=device, seed=3)
    boxes = boxes_for(300, dtype=dtype, device=device, seed=3)
    got = detops.decode_boxes(codes, boxes, weights)
    assert got.dtype == dtype
    expected = tv_utils.BoxCoder(weights).decode_single(codes.double(), boxes.double())
    # computed in float32 and rounded once: within half an ulp of the output dtype (plus float32 noise)
    eps = torch.finfo(dtype).eps
    assert_close(got.double(), expected, rtol=eps, atol=eps)


# ------------------------------------------------------------------ encode


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encode_equals_torchvision(weights, dtype, device):
    ours, ref = detops.BoxCoder(weights), tv_utils.BoxCoder(weights)
    gt = [boxes_for(n, dtype=dtype, device=device, seed=n) for n in (64, 0, 31)]
    anchors = [boxes_for(n, dtype=dtype, device=device, seed=100 + n) for n in (64, 0, 31)]
    expected = ref.encode(gt, anchors)
    got = ours.encode(gt, anchors)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert_matches_torchvision(a, b, device, atol_scale=4)
    w = torch.tensor(weights, dtype=dtype, device=device)
    assert_matches_torchvision(detops.encode_boxes(gt[0], anchors[0], w), tv_utils.encode_boxes(gt[0], anchors[0], w),
                               device, atol_scale=4)


def test_encode_dtype_rules_and_edge_cases(device):
    weights = (1.0, 1.0, 1.0, 1.0)
    ref = tv_utils.BoxCoder(weights)
    ours = detops.BoxCoder(weights)
    gt = torch.tensor([[0, 0, 10, 10], [5, 5, 5, 20], [0, 0, 0, 0], [-50, -40, -10, -5]], device=device)
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 0, 10], [1, 1, 2, 2], [0, 0, 0, 0]], device=device)
    # integer boxes (float32 codes), zero-width boxes (inf / NaN codes as torchvision gives)
    assert_matches_torchvision(ours.encode_single(gt, anchors), ref.encode_single(gt, anchors), device)
    mixed = ours.encode_single(gt.float(), anchors.double())
    assert mixed.dtype == torch.float64
    ones = torch.ones(4, dtype=torch.float64, device=device)
    assert_matches_torchvision(mixed, tv_utils.encode_boxes(gt.float(), anchors.double(), ones), device)
    assert ours.encode_single(torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device)).shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_encode_reduced_precision_close_to_float64(dtype, device):
    gt = boxes_for(200, dtype=dtype, device=device, seed=1)
    anchors = boxes_for(200, dtype=dtype, device=device, seed=2)
    got = detops.encode_boxes(gt, anchors, (10.0, 10.0, 5.0, 5.0))
    assert got.dtype == dtype
    expected = tv_utils.BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(gt.double(), anchors.double())
    eps = torch.finfo(dtype).eps
    assert_close(got.double(), expected, rtol=eps, atol=eps * 8)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_round_trip(weights, device):
    gt = boxes_for(500, dtype=torch.float64, device=device, seed=5)
    anchors = boxes_for(500, dtype=torch.float64, device=device, seed=6)
    coder = detops.BoxCoder(weights, bbox_xform_clip=float("inf"))
    codes = coder.encode_single(gt, anchors)
    assert_close(coder.decode_single(codes, anchors), gt, rtol=1e-12, atol=1e-9)
    codes32 = coder.encode_single(gt.float(), anchors.float())
    assert_close(coder.decode_single(codes32, anchors.float()).double(), gt, rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------------ gradients


def test_decode_gradcheck(device):
    codes = random_codes(12, 2, dtype=torch.float64, device=device, seed=7, scale=1.5)
    codes[0, 2] = 9.0  # above the clip: no gradient through exp
    codes[1, 7] = -3.0
    boxes = boxes_for(12, dtype=torch.float64, device=device, seed=7) / 50
    codes.requires_grad_()
    boxes.requires_grad_()
    for weights in WEIGHTS:
        fn = lambda c, b: detops.decode_boxes(c, b, weights, 2.0)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (codes, boxes))


def test_decode_gradients_equal_torchvision(device):
    weights = (10.0, 10.0, 5.0, 5.0)
    codes = random_codes(64, 3, dtype=torch.float64, device=device, seed=8, scale=3.0).requires_grad_()
    boxes = boxes_for(64, dtype=torch.float64, device=device, seed=8).requires_grad_()
    upstream = torch.randn(64, 12, dtype=torch.float64, device=device)
    ours = torch.autograd.grad((detops.BoxCoder(weights).decode_single(codes, boxes) * upstream).sum(), (codes, boxes))
    ref = torch.autograd.grad((tv_utils.BoxCoder(weights).decode_single(codes, boxes) * upstream).sum(), (codes, boxes))
    for a, b in zip(ours, ref):
        assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_encode_gradcheck_and_equals_torchvision(device):
    gt = (boxes_for(10, dtype=torch.float64, device=device, seed=9) / 50).requires_grad_()
    anchors = (boxes_for(10, dtype=torch.float64, device=device, seed=10) / 50).requires_grad_()
    for weights in WEIGHTS:
        assert torch.autograd.gradcheck(lambda a, b: detops.encode_boxes(a, b, weights), (gt, anchors))
        w = torch.tensor(weights, dtype=torch.float64, device=device)
        upstream = torch.randn(10, 4, dtype=torch.float64, device=device)
        ours = torch.autograd.grad((detops.encode_boxes(gt, anchors, weights) * upstream).sum(), (gt, anchors))
        ref = torch.autograd.grad((tv_utils.encode_boxes(gt, anchors, w) * upstream).sum(), (gt, anchors))
        for a, b in zip(ours, ref):
            assert_close(a, b, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ operator checks


def test_opcheck():
    codes = random_codes(9, 2, seed=11)
    boxes = boxes_for(9, seed=11)
    for dtype in (torch.float32, torch.float64):
        c, b = codes.to(dtype), boxes.to(dtype)
        torch.library.opcheck(torch.ops.detops.box_decode, (c.requires_grad_(), b, [10.0, 10.0, 5.0, 5.0], CLIP))
        torch.library.opcheck(torch.ops.detops.box_encode, (b.requires_grad_(), b.flip(0), [1.0, 2.0, 3.0, 4.0]))
    torch.library.opcheck(torch.ops.detops.box_decode, (torch.zeros(0, 8), torch.zeros(0, 4), [1.0] * 4, CLIP))


def test_torch_compile_fullgraph():
    coder = detops.BoxCoder((10.0, 10.0, 5.0, 5.0))

    def step(codes, anchors, gt):
        return coder.decode(codes, [anchors]), coder.encode_single(gt, anchors)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    codes, anchors, gt = random_codes(33, 2, seed=12), boxes_for(33, seed=12), boxes_for(33, seed=13)
    for got, expected in zip(compiled(codes, anchors, gt), step(codes, anchors, gt)):
        assert_close(got, expected, rtol=0, atol=0)


def test_torch_compile_inductor_forward_backward():
    coder = detops.BoxCoder((10.0, 10.0, 5.0, 5.0))

    def loss(codes, anchors, gt):
        return coder.decode_single(codes, anchors).square().sum() + coder.encode_single(gt, anchors).sum()

    compiled = torch.compile(loss, fullgraph=True)
    codes, anchors, gt = random_codes(21, 2, seed=14), boxes_for(21, seed=14), boxes_for(21, seed=15)
    x_compiled, x_eager = codes.clone().requires_grad_(), codes.clone().requires_grad_()
    got, expected = compiled(x_compiled, anchors, gt), loss(x_eager, anchors, gt)
    assert_close(got, expected, rtol=1e-6, atol=1e-3)
    got.backward()
    expected.backward()
    assert_close(x_compiled.grad, x_eager.grad, rtol=1e-6, atol=1e-4)


def test_bad_inputs():
    coder = detops.BoxCoder((1.0, 1.0, 1.0, 1.0))
    boxes = boxes_for(6)
    with pytest.raises(ValueError, match=r"rel_codes must have shape \[N, 4 \* K\]"):
        coder.decode_single(torch.zeros(6, 5), boxes)
    with pytest.raises(ValueError, match="same number of rows"):
        coder.decode_single(torch.zeros(5, 4), boxes)
    with pytest.raises(TypeError, match="rel_codes must be a float16"):
        coder.decode_single(torch.zeros(6, 4, dtype=torch.int64), boxes)
    with pytest.raises(ValueError, match=r"boxes must have shape"):
        coder.decode_single(torch.zeros(6, 4), torch.zeros(6, 3))
    with pytest.raises(TypeError, match="boxes must be a list or tuple"):
        coder.decode(torch.zeros(6, 4), boxes)
    with pytest.raises(ValueError, match="weights must have 4 values"):
        detops.BoxCoder((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="finite and non-zero"):
        detops.BoxCoder((1.0, 0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="same number of boxes"):
        detops.encode_boxes(boxes, boxes[:3])
    with pytest.raises(ValueError, match="reference_boxes must have shape"):
        detops.encode_boxes(boxes[:, :2], boxes)
    with pytest.raises(ValueError, match="bbox_xform_clip must not be NaN"):
        detops.decode_boxes(torch.zeros(6, 4), boxes, (1.0,) * 4, float("nan"))
    with pytest.raises(RuntimeError, match="weights must have 4 values"):
        torch.ops.detops.box_decode(torch.zeros(6, 4), boxes, [1.0, 1.0], CLIP)
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.detops.box_encode(boxes, boxes.double(), [1.0] * 4)
