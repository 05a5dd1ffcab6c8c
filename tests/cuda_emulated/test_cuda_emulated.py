"""Every CUDA kernel, run on the CPU under csrc/common/cuda_emulator.h (ASan +
UBSan), against the CPU kernels.

torch.ops.detops_emu.<op> is the op's real CUDA path (host glue *_cuda.cpp,
launch geometry, the *_cuda.cu kernels) with the kernels executed by the
emulator: a block's threads are fibers that meet at every barrier and warp
operation, __shared__ is per-block storage, blocks run in a shuffled order and
launches obey sm_90's limits. torch.ops.detops.<op> on the same CPU tensors is
the CPU kernel. They agree to the tolerances a GPU needs (FMA contraction,
libm, summation order), on the cases the CUDA tests use: every dtype, NCHW and
channels-last, empty inputs, multi-chunk NMS and the deterministic backward
paths.

Run with ``bash scripts/test_cuda_emulated.sh`` (builds build/cuda_emulated
first). bench/gpu_suite.sh runs this file on a real GPU too
(``DETOPS_EMU_DEVICE=cuda``: the same cases through torch.ops.detops on cuda),
so the first GPU run compares hardware with the emulation.

Adding a kernel: its csrc/<op>/<op>_cuda.cu, <op>_cuda.cpp and <op>.cpp are
picked up by tests/cuda_emulated/CMakeLists.txt automatically; add a test
here that builds the inputs and calls ``check("<op>", *args)`` (outputs
compared element-wise, tolerances per dtype from ``tol``), covering its
dtypes, layouts, empty input and every launch path (deterministic or not,
each kernel variant the glue picks). A kernel launched through
``dispatch_grid`` (an index type ``I``) also goes into test_index_widths'
``run`` and ``INDEXED_KERNELS``, so that both widths run.

Does it bite? scripts/cuda_emulated_mutations.sh applies one mutation at a
time, rebuilds and expects the named tests to fail (a mutation that does not
build counts as a failure of the script, not as caught). Run on 2026-12-02
(2-core machine, 14 min for all eleven), one kernel of each family, each
caught. Until then the script read only the first line of each entry, so
the three multi-line mutations (nms, box_iou barrier, roi_align) had been
deleting a line instead; they were re-run with the fix:
  * nms (barrier removed): ``__syncthreads()`` after mask_kernel stages the
    column boxes -> caught (test_nms fails: rows read columns no thread has
    staged yet);
  * box_iou (barrier removed): block_sum's ``__syncthreads()`` in the
    reduction loop -> caught (test_box_iou_matrix_backward fails);
  * box_iou (split sum): reduce_splits_kernel skips chunk 0 -> caught
    (test_box_iou_matrix_backward_split fails);
  * roi_align (thread index shifted): ``ph`` / ``pw`` taken from the other
    axis in forward_kernel -> caught (test_roi_align_forward fails);
  * roi_pool (atomic dropped): backward_atomic_kernel's ``atomicAdd`` as a
    plain store -> caught (test_roi_pool_backward fails; a non-atomic ``+=``
    would pass: fibers are not preempted, see cuda_emulator.h);
  * ps_roi (atomic dropped, and the gather without its ``/ count``) -> both
    caught (test_ps_roi_backward repeats RoIs, so their bins add into the same
    pixels);
  * conv_transpose2d (shuffle offset o -> o + 1 in warp_sum) -> caught
    (test_conv_transpose2d_depthwise fails);
  * box_coder, anchor_generator, corner_pool (thread index shifted: the
    grid-stride start + 1) -> all three caught (test_box_coder,
    test_grid_anchors, test_corner_pool fail).
One earlier catch is recorded too: test_roi_align_backward failed when the
atomic accumulator was allocated with at::zeros, which drops the
channels-last layout.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import torch

import detops  # noqa: F401  (torch.ops.detops: the CPU reference kernels)

# bench/gpu_suite.sh sets DETOPS_EMU_DEVICE=cuda to run these cases on a GPU.
DEVICE = os.environ.get("DETOPS_EMU_DEVICE", "cpu")
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def tol(dtype: torch.dtype, scale: float = 1.0) -> dict:
    """GPU-appropriate tolerances: FMA contraction and libm move float results
    by a few ulp; reduced precision may round the other way once."""
    base = {
        torch.float64: (1e-10, 1e-12),
        torch.float32: (2e-5, 2e-5),
        torch.float16: (4e-3, 4e-3),
        torch.bfloat16: (2e-2, 2e-2),
    }.get(dtype, (0.0, 0.0))
    return {"rtol": base[0] * scale, "atol": base[1] * scale}


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    out = []
    for item in x:
        out += _flat(item)
    return out


def _emulated(op: str):
    if DEVICE == "cpu":
        return getattr(torch.ops.detops_emu, op)
    return getattr(torch.ops.detops, op)


def _to_device(x):
    if isinstance(x, torch.Tensor):
        return x.to(DEVICE)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v) for v in x)
    return x


def check(op: str, *args, scale: float = 1.0, exact: bool = False, layout_of: int | None = None):
    """Runs the CPU kernel and the emulated (or real) CUDA kernel on args and
    compares every output; returns the CUDA-path outputs. layout_of: the output
    must keep the memory format of args[layout_of]."""
    expected = getattr(torch.ops.detops, op)(*args)
    actual = _emulated(op)(*_to_device(args))
    exp, act = _flat(expected), _flat(actual)
    assert len(exp) == len(act)
    for e, a in zip(exp, act):
        assert e.shape == a.shape and e.dtype == a.dtype, (op, e.shape, a.shape, e.dtype, a.dtype)
        a = a.cpu()
        if exact or not e.is_floating_point():
            torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{op}: {m}")
        else:
            torch.testing.assert_close(a, e, equal_nan=True, msg=lambda m: f"{op}: {m}", **tol(e.dtype, scale))
    if layout_of is not None and args[layout_of].dim() == 4:
        cl = args[layout_of].is_contiguous(memory_format=torch.channels_last) and args[layout_of].shape[1] > 1
        assert act[0].is_contiguous(memory_format=torch.channels_last) == cl
    return actual


@contextmanager
def deterministic(on: bool):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def boxes(n: int, g: torch.Generator, scale: float = 100.0, dtype=torch.float32) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * scale / 3 + 0.5
    return torch.cat([xy, xy + wh], 1).to(dtype)


# ------------------------------------------------------------------ NMS family


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [0, 1, 70, 300])
def test_nms(dtype, n):
    g = torch.Generator().manual_seed(n)
    b, s = boxes(n, g, 60, dtype), torch.rand(n, generator=g).to(dtype)
    for thr in (0.3, 0.7):
        check("nms", b, s, thr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_multi_chunk(dtype):
    """More than kMaskChunkRows (4096) boxes: two mask chunks, the propagate
    kernel carrying the first chunk's suppressions into the second."""
    g = torch.Generator().manual_seed(7)
    n = 4200
    b, s = boxes(n, g, 400, dtype), torch.rand(n, generator=g).to(dtype)
    check("nms", b, s, 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_batched_nms(dtype):
    g = torch.Generator().manual_seed(3)
    for n, classes in ((0, 1), (257, 5), (130, 1)):
        b, s = boxes(n, g, 50, dtype), torch.rand(n, generator=g).to(dtype)
        idxs = torch.randint(0, classes, (n,), generator=g)
        check("batched_nms", b, s, idxs, 0.5)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("per_class_boxes", [False, True])
def test_multiclass_nms(dtype, per_class_boxes):
    g = torch.Generator().manual_seed(11)
    B, N, C = 2, 150, 3
    shape = (B, N, C, 4) if per_class_boxes else (B, N, 4)
    b = boxes(B * N * (C if per_class_boxes else 1), g, 50, dtype).reshape(shape)
    s = torch.rand(B, N, C, generator=g).to(dtype)
    check("multiclass_nms", b, s, 0.2, 0.5, 40, 60, exact=True)
    check("multiclass_nms", b[:0], s[:0], 0.2, 0.5, 40, 60)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms(dtype, method):
    g = torch.Generator().manual_seed(5)
    # One block of 1024 fibers meeting ~12 times per kept box: small n, and
    # for n > 1024 (several elements per thread) a threshold that keeps few.
    cases = [(0, 0.001), (1, 0.001), (40, 0.001)] + ([(1100, 0.97)] if dtype == torch.float32 else [])
    for n, min_score in cases:
        b, s = boxes(n, g, 60, dtype), torch.rand(n, generator=g).to(dtype)
        check("soft_nms", b, s, 0.3, 0.5, min_score, method)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("with_classes", [False, True])
def test_matrix_nms(dtype, with_classes):
    g = torch.Generator().manual_seed(9)
    for n in (0, 300):
        b, s = boxes(n, g, 60, dtype), torch.rand(n, generator=g).to(dtype)
        idxs = torch.randint(0, 4, (n,), generator=g) if with_classes else None
        for method in ("linear", "gaussian"):
            check("matrix_nms", b, s, idxs, method, 2.0, 0.05, scale=10)


# ------------------------------------------------------------------ IoU family

VARIANTS = ["iou", "giou", "diou", "ciou"]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_box_iou_matrix(dtype, variant):
    g = torch.Generator().manual_seed(13)
    for shape1, shape2 in (((1, 37, 4), (1, 300, 4)), ((2, 5, 4), (2, 70, 4)), ((1, 0, 4), (1, 9, 4)), ((1, 6, 4), (1, 0, 4))):
        b1 = boxes(int(torch.Size(shape1[:-1]).numel()), g, 50, dtype).reshape(shape1)
        b2 = boxes(int(torch.Size(shape2[:-1]).numel()), g, 50, dtype).reshape(shape2)
        for fmt in ("xyxy", "cxcywh") if variant == "iou" else ("xyxy",):
            check("box_iou_matrix", b1, b2, variant, 1e-7, fmt)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_box_iou_matrix_backward(dtype, variant):
    """Rows kernel (one block per row) and column kernel (32 columns x 8 row
    lanes per block); M and N not multiples of the tiles."""
    g = torch.Generator().manual_seed(17)
    for B, N, M in ((1, 37, 300), (2, 5, 70), (1, 0, 5), (1, 3, 0), (1, 90, 3)):
        b1 = boxes(B * N, g, 50, dtype).reshape(B, N, 4)
        b2 = boxes(B * M, g, 50, dtype).reshape(B, M, 4)
        grad = torch.randn(B, N, M, generator=g).to(torch.float64 if dtype == torch.float64 else torch.float32)
        check("box_iou_matrix_backward", grad, b1, b2, variant, 1e-7, scale=20)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_box_iou_aligned(dtype, variant):
    g = torch.Generator().manual_seed(19)
    for k in (0, 1, 700):
        b1, b2 = boxes(k, g, 50, dtype), boxes(k, g, 50, dtype)
        check("box_iou_aligned", b1, b2, variant, 1e-7)
        grad = torch.randn(k, generator=g).to(torch.float64 if dtype == torch.float64 else torch.float32)
        check("box_iou_aligned_backward", grad, b1, b2, variant, 1e-7, scale=10)


def _launched(fn) -> list[str]:
    """Runs fn and returns the kernels it launched (the emulator's launch log,
    DETOPS_EMU_LAUNCH_LOG, which scripts/test_cuda_emulated.sh sets)."""
    log = os.environ.get("DETOPS_EMU_LAUNCH_LOG")
    if DEVICE != "cpu" or not log:
        pytest.skip("needs the emulator's launch log")
    start = os.path.getsize(log)
    fn()
    with open(log) as f:
        f.seek(start)
        return [line.split("\t")[0] for line in f.read().splitlines()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_box_iou_matrix_backward_split(dtype, variant):
    """Few rows or few columns: the reduced dimension is cut into chunks
    (box_iou_cuda.h: BackwardSplit) whose partial sums a second kernel adds.
    N = 2000 rows x 3 columns splits each column's sum in 8; 3 rows x 5000
    columns splits each row's in 5; 2 x 600 x 40 splits the columns' sums in 3."""
    g = torch.Generator().manual_seed(67)
    for B, N, M in ((1, 2000, 3), (1, 3, 5000), (2, 600, 40)):
        b1 = boxes(B * N, g, 50, dtype).reshape(B, N, 4)
        b2 = boxes(B * M, g, 50, dtype).reshape(B, M, 4)
        grad = torch.randn(B, N, M, generator=g).to(torch.float64 if dtype == torch.float64 else torch.float32)
        names = _launched(lambda: check("box_iou_matrix_backward", grad, b1, b2, variant, 1e-7, scale=20))
        assert sum("reduce_splits_kernel" in n for n in names) == 1, names


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_box_iou_matrix_tiled_forward(dtype, variant):
    """From 128 columns the forward takes batch, row and column from the block
    index (matrix_forward_tiled_kernel: no division); narrower matrices, such
    as anchors x ground truth, keep the flat grid-stride kernel. Row counts
    that are not multiples of the 8-row tile, partial column tiles, batch 2."""
    g = torch.Generator().manual_seed(73)
    for B, N, M, kernel in ((2, 37, 300, "matrix_forward_tiled_kernel"), (1, 9, 128, "matrix_forward_tiled_kernel"),
                            (2, 50, 127, "matrix_forward_kernel")):
        b1 = boxes(B * N, g, 50, dtype).reshape(B, N, 4)
        b2 = boxes(B * M, g, 50, dtype).reshape(B, M, 4)
        names = _launched(lambda: check("box_iou_matrix", b1, b2, variant, 1e-7, "xyxy"))
        assert [n.split("<")[0].rsplit("::", 1)[1] for n in names] == [kernel], names


@contextmanager
def index32_limit(limit: int):
    """The emulated launchers take the 32-bit index kernels when every index
    stays <= the limit (INT32_MAX on a GPU); 0 forces the 64-bit kernels."""
    prev = os.environ.get("DETOPS_EMU_INDEX32_LIMIT")
    os.environ["DETOPS_EMU_INDEX32_LIMIT"] = str(limit)
    try:
        yield
    finally:
        if prev is None:
            del os.environ["DETOPS_EMU_INDEX32_LIMIT"]
        else:
            os.environ["DETOPS_EMU_INDEX32_LIMIT"] = prev


# Every kernel with a 32-bit index path (the kernel's last template argument).
INDEXED_KERNELS = {
    "anchor_generator::{anonymous}::grid_anchors_kernel",
    "box_coder::{anonymous}::decode_forward_kernel",
    "box_iou::{anonymous}::matrix_forward_kernel",
    "conv_transpose2d::{anonymous}::backward_input_thread_kernel",
    "conv_transpose2d::{anonymous}::backward_input_warp_kernel",
    "conv_transpose2d::{anonymous}::backward_weight_kernel",
    "conv_transpose2d::{anonymous}::dense_shuffle_kernel",
    "conv_transpose2d::{anonymous}::dense_unshuffle_kernel",
    "conv_transpose2d::{anonymous}::gather_forward_kernel",
    "corner_pool::{anonymous}::backward_kernel",
    "corner_pool::{anonymous}::forward_kernel",
    "paste_masks::{anonymous}::paste_kernel",
    "ps_roi::{anonymous}::align_backward_atomic_kernel",
    "ps_roi::{anonymous}::align_backward_gather_kernel",
    "ps_roi::{anonymous}::align_forward_kernel",
    "ps_roi::{anonymous}::pool_backward_atomic_kernel",
    "ps_roi::{anonymous}::pool_backward_gather_kernel",
    "ps_roi::{anonymous}::pool_forward_kernel",
    "roi_align::{anonymous}::axis_weights_kernel",
    "roi_align::{anonymous}::backward_atomic_kernel",
    "roi_align::{anonymous}::backward_gather_kernel",
    "roi_align::{anonymous}::forward_kernel",
    "roi_pool::{anonymous}::backward_atomic_kernel",
    "roi_pool::{anonymous}::backward_gather_kernel",
    "roi_pool::{anonymous}::forward_kernel",
}


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_index_widths(bits, channels_last):
    """Every kernel with an index type runs in both widths: 32-bit when every
    index fits (the default here), 64-bit forced by a zero limit. The launch
    log shows which kernels ran, and in which width."""
    g = torch.Generator().manual_seed(71)
    N, C, H, W = 2, 4, 13, 11
    x = _map((N, C, H, W), g, torch.float32, channels_last)
    rois = _rois(15, N, g, 50, torch.float32)
    b1, b2 = boxes(37, g, 50).reshape(1, 37, 4), boxes(45, g, 50).reshape(1, 45, 4)
    grad = torch.randn(15, C, 3, 2, generator=g)
    _, argmax = torch.ops.detops.roi_pool(x, rois, 0.5, 3, 2)
    if channels_last:
        grad, argmax = (t.contiguous(memory_format=torch.channels_last) for t in (grad, argmax))
    ps_x = _map((N, 2 * 3 * 2, H, W), g, torch.float32, False)
    ps_grad = torch.randn(15, 2, 3, 2, generator=g)
    mapping = torch.ops.detops.ps_roi_pool(ps_x, rois, 0.5, 3, 2)[1]
    rel, prop = torch.randn(9, 8, generator=g) * 0.5, boxes(9, g, 80)
    paste_args = _paste_case(g, torch.float32, 5, 7, 30, 40)
    cells = torch.tensor([[-8.0, -8.0, 8.0, 8.0], [-16.0, -8.0, 16.0, 8.0], [-32.0, -32.0, 32.0, 32.0]])

    def run():
        check("box_iou_matrix", b1, b2, "giou", 1e-7, "xyxy")
        check("box_decode", rel, prop, [10.0, 10.0, 5.0, 5.0], 4.135)
        check("paste_masks", *paste_args, exact=_FUSED_CPU_RESIZE)
        check("grid_anchors", cells, [2, 1], [7, 5, 3, 4], [8, 8, 16, 16], 2, exact=True)
        out = check("corner_pool", x, "left", exact=True)
        check("corner_pool_backward", torch.ones_like(x), x, out, "left")
        check("roi_align", x, rois, 0.25, 3, 2, 2, True, layout_of=0)
        check("roi_pool", x, rois, 0.5, 3, 2, exact=True, layout_of=0)
        check("ps_roi_align", ps_x, rois, 0.5, 3, 2, 2)
        check("ps_roi_pool", ps_x, rois, 0.5, 3, 2)
        for det in (False, True):
            with deterministic(det):
                check("roi_align_backward", grad, rois, 0.25, 3, 2, N, C, H, W, 2, True, channels_last, scale=10)
                check("roi_pool_backward", grad, rois, argmax, 0.5, 3, 2, N, C, H, W, channels_last, scale=10)
                check("ps_roi_align_backward", ps_grad, rois, mapping, 0.5, 3, 2, 2, N, 12, H, W, scale=10)
                check("ps_roi_pool_backward", ps_grad, rois, mapping, 0.5, 3, 2, N, 12, H, W, scale=10)
        for k, s in ((4, 2), (16, 8)):  # thread- and warp-per-input backward
            cx, cw, cb, (oh, ow) = _conv_case(g, torch.float32, 2, 3, 3, 3, k, s, (5, 4), channels_last)
            co = check("conv_transpose2d", cx, cw, cb, None, [s, s], [1, 1], [oh - 2, ow - 2], [0, 0], 3, 1, scale=10)
            check("conv_transpose2d_backward", torch.ones_like(co), cx, cw, [s, s], [1, 1], 3, [True, True, False],
                  scale=50)
        dx, dw, db, (oh, ow) = _conv_case(g, torch.float32, 2, 6, 4, 1, 2, 2, (5, 7), channels_last)
        do = check("conv_transpose2d", dx, dw, db, None, [2, 2], [0, 0], [oh, ow], [0, 0], 1, 0, scale=10)
        check("conv_transpose2d_backward", torch.ones_like(do), dx, dw, [2, 2], [0, 0], 1, [True, True, True],
              scale=50)

    with index32_limit(2**31 - 1 if bits == 32 else 0):
        names = _launched(run)

    def kernels(suffix: str) -> set[str]:
        return {n.split("<")[0].split("::", 1)[1] for n in names if n.endswith(suffix)}  # without the top namespace

    wide, narrow = kernels(", long int>"), kernels(", int>")
    assert (wide if bits == 64 else narrow) == INDEXED_KERNELS
    assert not (narrow if bits == 64 else wide), names


# ------------------------------------------------------------------ box coder, anchors, mask pasting

# The CUDA paste always fuses its multiply-adds; the CPU kernel fuses where
# torch's own resize does (its AVX2/AVX512 builds): there the two are equal.
_FUSED_CPU_RESIZE = torch.backends.cpu.get_cpu_capability() != "DEFAULT"


def _paste_case(g: torch.Generator, dtype, n: int, m: int, height: int, width: int):
    masks = torch.rand(n, 1, m, m, generator=g).to(dtype)
    xy = torch.randint(-6, max(width, height), (n, 2), generator=g)
    wh = torch.randint(-2, 2 * max(width, height), (n, 2), generator=g)
    int_boxes = torch.cat([xy, xy + wh], 1)
    sizes = torch.stack([torch.randint(0, height + 1, (n,), generator=g),
                         torch.randint(0, width + 1, (n,), generator=g)], 1)
    return masks, int_boxes, sizes, height, width, 1


@pytest.mark.parametrize("dtype", FLOATS)
def test_paste_masks(dtype):
    g = torch.Generator().manual_seed(29)
    for n, m, height, width in ((0, 28, 10, 12), (1, 1, 9, 7), (13, 28, 60, 90), (6, 14, 200, 140)):
        check("paste_masks", *_paste_case(g, dtype, n, m, height, width),
              exact=_FUSED_CPU_RESIZE and dtype in (torch.float32, torch.float64))
    far = torch.tensor([[2**50, -2**50, 2**62, 2**62], [-2**62, -2**62, -2**61, 5]])
    masks = torch.rand(2, 1, 28, 28, generator=g).to(dtype)
    out = check("paste_masks", masks, far, torch.tensor([[20, 20], [2**62, 2**62]]), 20, 20, 1, exact=True)
    assert not out.any()


@pytest.mark.parametrize("dtype", FLOATS)
def test_box_coder(dtype):
    g = torch.Generator().manual_seed(23)
    w = [10.0, 10.0, 5.0, 5.0]
    for n in (0, 1, 513):
        ref, prop = boxes(n, g, 80, dtype), boxes(n, g, 80, dtype)
        codes = check("box_encode", ref, prop, w)
        grad = torch.randn(n, 4, generator=g).to(dtype)
        check("box_encode_backward", grad, ref, prop, w, scale=10)
        rel = (torch.randn(n, 8, generator=g) * 0.5).to(dtype)
        check("box_decode", rel, prop, w, 4.135)
        grad = torch.randn(n, 8, generator=g).to(dtype)
        check("box_decode_backward", grad, rel, prop, w, 4.135, scale=10)
        del codes


@pytest.mark.parametrize("dtype", FLOATS)
def test_grid_anchors(dtype):
    cells = torch.tensor([[-8.0, -8.0, 8.0, 8.0], [-16.0, -8.0, 16.0, 8.0], [-32.0, -32.0, 32.0, 32.0]], dtype=dtype)
    check("grid_anchors", cells, [2, 1], [7, 5, 3, 4], [8, 8, 16, 16], 2, exact=True)
    check("grid_anchors", cells, [2, 1], [7, 5, 3, 4], [8, 8, 16, 16], 0)


# ------------------------------------------------------------------ RoI ops


def _map(shape, g, dtype, channels_last):
    x = torch.randn(*shape, generator=g).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _rois(k: int, n: int, g: torch.Generator, size: float, dtype) -> torch.Tensor:
    b = boxes(k, g, size, torch.float64)
    idx = torch.randint(0, max(n, 1), (k, 1), generator=g).double()
    return torch.cat([idx, b], 1).to(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_align_forward(dtype, channels_last):
    g = torch.Generator().manual_seed(29)
    x = _map((2, 5, 13, 11), g, dtype, channels_last)
    rois = _rois(17, 2, g, 40, dtype)
    for sampling, aligned in ((2, True), (0, False), (-1, True)):
        check("roi_align", x, rois, 0.25, 3, 4, sampling, aligned, layout_of=0)
    check("roi_align", x, rois[:0], 0.25, 3, 4, 2, True)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("det", [False, True])
def test_roi_align_backward(dtype, channels_last, det):
    """Atomic scatter (default) and the deterministic tile-list gather."""
    g = torch.Generator().manual_seed(31)
    N, C, H, W = 2, 4, 21, 35  # 35 > one 16-wide tile: several tiles per row
    rois = _rois(23, N, g, 120, dtype)
    grad = torch.randn(23, C, 3, 2, generator=g).to(dtype)
    if channels_last:
        grad = grad.contiguous(memory_format=torch.channels_last)
    with deterministic(det):
        for sampling, aligned in ((2, True), (0, False)):
            out = check("roi_align_backward", grad, rois, 0.25, 3, 2, N, C, H, W, sampling, aligned, channels_last,
                        scale=10)
            assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        check("roi_align_backward", grad[:0], rois[:0], 0.25, 3, 2, N, C, H, W, 2, True, channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("det", [False, True])
def test_multi_scale_roi_align(dtype, det):
    g = torch.Generator().manual_seed(37)
    feats = [torch.randn(2, 3, s, s + 3, generator=g).to(dtype) for s in (24, 12, 6)]
    scales = [1 / 4, 1 / 8, 1 / 16]
    rois = _rois(19, 2, g, 90, dtype)
    levels = torch.randint(0, 3, (19,), generator=g)
    out = check("multi_scale_roi_align", feats, rois, levels, scales, 3, 3, 2, True)
    grad = torch.randn_like(out.float(), memory_format=torch.contiguous_format).to(dtype)
    with deterministic(det):
        check("multi_scale_roi_align_backward", grad, feats, rois, levels, scales, 3, 3, 2, True, scale=10)


def test_roi_align_bad_batch_index_is_a_device_assert():
    """The kernel's DETOPS_KERNEL_CHECK raises, naming the kernel and the assertion."""
    if DEVICE != "cpu":
        pytest.skip("a device-side assert ends the CUDA context")
    x = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[3.0, 0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(RuntimeError, match=r"device-side assert.*batch index.*forward_kernel"):
        torch.ops.detops_emu.roi_align(x, rois, 1.0, 2, 2, 2, True)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_pool_forward(dtype, channels_last):
    g = torch.Generator().manual_seed(41)
    x = _map((2, 5, 13, 11), g, dtype, channels_last)
    rois = _rois(17, 2, g, 50, dtype)
    check("roi_pool", x, rois, 0.25, 3, 4, exact=True, layout_of=0)
    check("roi_pool", x, rois[:0], 0.25, 3, 4)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("det", [False, True])
def test_roi_pool_backward(dtype, channels_last, det):
    g = torch.Generator().manual_seed(43)
    N, C, H, W = 2, 4, 13, 11
    x = _map((N, C, H, W), g, dtype, channels_last)
    rois = _rois(21, N, g, 50, dtype)
    _, argmax = torch.ops.detops.roi_pool(x, rois, 0.5, 3, 2)
    grad = torch.randn(21, C, 3, 2, generator=g).to(dtype)
    if channels_last:
        grad, argmax = (t.contiguous(memory_format=torch.channels_last) for t in (grad, argmax))
    with deterministic(det):
        out = check("roi_pool_backward", grad, rois, argmax, 0.5, 3, 2, N, C, H, W, channels_last, scale=10)
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        check("roi_pool_backward", grad[:0], rois[:0], argmax[:0], 0.5, 3, 2, N, C, H, W, channels_last)


# ------------------------------------------------------------------ position-sensitive RoI ops


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_ps_roi_forward(dtype, channels_last):
    g = torch.Generator().manual_seed(53)
    x = _map((2, 2 * 3 * 4, 13, 11), g, dtype, channels_last)
    rois = _rois(17, 2, g, 50, dtype)
    for sampling in (2, -1):
        check("ps_roi_align", x, rois, 0.25, 3, 4, sampling, layout_of=None)
    check("ps_roi_pool", x, rois, 0.25, 3, 4, exact=dtype in (torch.float32, torch.float64))
    check("ps_roi_align", x, rois[:0], 0.25, 3, 4, 2)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("det", [False, True])
def test_ps_roi_backward(dtype, det):
    g = torch.Generator().manual_seed(59)
    N, C, H, W = 2, 2 * 3 * 2, 13, 11
    rois = _rois(21, N, g, 20, dtype)  # inside the map (scale 0.5), so bins overlap
    rois = torch.cat([rois, rois[:4]])  # repeated RoIs: their bins add into the same pixels
    grad = torch.randn(25, 2, 3, 2, generator=g).to(dtype)
    mapping = torch.ops.detops.ps_roi_pool(torch.zeros(N, C, H, W, dtype=dtype), rois, 0.5, 3, 2)[1]
    with deterministic(det):
        for sampling in (2, -1):
            check("ps_roi_align_backward", grad, rois, mapping, 0.5, 3, 2, sampling, N, C, H, W, scale=10)
        check("ps_roi_pool_backward", grad, rois, mapping, 0.5, 3, 2, N, C, H, W, scale=10)
        check("ps_roi_pool_backward", grad[:0], rois[:0], mapping[:0], 0.5, 3, 2, N, C, H, W)


# ------------------------------------------------------------------ transposed convolution


def _conv_case(g, dtype, n, cin, cout, groups, k, s, hw, channels_last=False):
    x = torch.randn(n, cin, *hw, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(cin, cout // groups, k, k, generator=g) / k).to(dtype)
    b = torch.randn(cout, generator=g).to(dtype)
    oh, ow = (hw[0] - 1) * s + k, (hw[1] - 1) * s + k
    return x, w, b, (oh, ow)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("k,s", [(4, 2), (16, 8)])  # thread- and warp-per-input backward kernels
def test_conv_transpose2d_depthwise(dtype, k, s):
    g = torch.Generator().manual_seed(47)
    x, w, b, (oh, ow) = _conv_case(g, dtype, 2, 3, 3, 3, k, s, (5, 4))
    out = check("conv_transpose2d", x, w, b, None, [s, s], [1, 1], [oh - 2, ow - 2], [0, 0], 3, 1, scale=10)
    grad = torch.randn(out.shape, generator=g).to(dtype)
    check("conv_transpose2d_backward", grad, x, w, [s, s], [1, 1], 3, [True, True, False], scale=50)
    check("conv_transpose2d", x[:0], w, b, None, [s, s], [1, 1], [oh - 2, ow - 2], [0, 0], 3, 0)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_transpose2d_dense(dtype, channels_last):
    """kernel == stride, groups 1: the matrix product then the shuffle kernel
    (with skip and ReLU), and the unshuffle kernel in the backward."""
    g = torch.Generator().manual_seed(53)
    x, w, b, (oh, ow) = _conv_case(g, dtype, 2, 6, 4, 1, 2, 2, (5, 7), channels_last)
    skip = torch.randn(2, 4, oh + 1, ow + 2, generator=g).to(dtype)
    out = check("conv_transpose2d", x, w, b, skip, [2, 2], [0, 1], [oh, ow - 1], [1, 2], 1, 1, scale=10,
                layout_of=0)
    grad = torch.randn(out.shape, generator=g).to(dtype)
    check("conv_transpose2d_backward", grad, x, w, [2, 2], [0, 1], 1, [True, True, True], scale=50)


# ------------------------------------------------------------------ corner pooling


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_corner_pool(dtype, channels_last):
    """Every direction (lanes along H or W, scanned either way), NCHW and
    channels-last, with ties (integer values) so that the backward's
    took-the-max test matters. (An empty input is a ValueError in the shared
    checks, before either kernel.)"""
    g = torch.Generator().manual_seed(61)
    x = _map((2, 3, 9, 13), g, torch.float32, channels_last)
    x = (x * 2).round().to(dtype)  # ties
    grad = torch.randn(x.shape, generator=g).to(dtype)
    for direction in ("top", "left", "bottom", "right"):
        out = check("corner_pool", x, direction, exact=True, layout_of=0)
        check("corner_pool_backward", grad, x, out, direction)


# ------------------------------------------------------------------ the emulator itself


def _selftest(name: str, size: int = 1) -> tuple[int, torch.Tensor]:
    if DEVICE != "cpu":
        pytest.skip("tests the emulator")
    out = torch.full((size,), -99, dtype=torch.long)
    return torch.ops.detops_emu._emulator_selftest(name, out), out


@pytest.mark.parametrize(
    "name,code",
    [("zero_grid", 9), ("block_1025", 9), ("block_z_65", 9), ("grid_y_65536", 9), ("shared_228k", 1), ("grid_max_ok", 0),
     ("block_max_ok", 0)],
)
def test_emulator_launch_limits(name, code):
    """sm_90's limits: cudaErrorInvalidConfiguration (9) for empty grids and
    oversized blocks or grids, cudaErrorInvalidValue (1) past 227 KiB of shared memory."""
    assert _selftest(name)[0] == code


def test_emulator_warp_operations():
    rc, out = _selftest("warp_ops", 64 * 8)
    assert rc == 0
    o = out.view(64, 8)
    lane = torch.arange(64) % 32
    warp = torch.arange(64) // 32
    torch.testing.assert_close(o[:, 0], torch.where(lane < 31, lane + 1, lane))
    torch.testing.assert_close(o[:, 1], lane ^ 5)
    torch.testing.assert_close(o[:, 2], 30 + warp)
    torch.testing.assert_close(o[:, 3], torch.where(lane % 8 >= 2, lane - 2, lane))
    assert (o[:, 4] == 0xAAAAAAAA).all()
    assert (o[:, 5] == 10).all()
    assert (o[:, 6] == 11).all()
    torch.testing.assert_close(o[:, 7], torch.where(warp == 1, 10, 0))


def test_emulator_reports_deadlock_and_device_asserts():
    with pytest.raises(RuntimeError, match="deadlock.*deadlock_kernel"):
        _selftest("deadlock")
    with pytest.raises(RuntimeError, match=r"device-side assert.*value must be negative.*assert_kernel.*block"):
        _selftest("assert")


def test_emulator_shared_memory_and_block_order():
    """__shared__ is per block (each block reads its own neighbour slot) and
    blocks run in a shuffled order."""
    rc, out = _selftest("shared_and_order", 128)
    assert rc == 0
    order, neighbour = out.view(64, 2).unbind(1)
    torch.testing.assert_close(neighbour, torch.arange(64) * 100)
    assert sorted(order.tolist()) == list(range(64))
    assert order.tolist() != list(range(64))
