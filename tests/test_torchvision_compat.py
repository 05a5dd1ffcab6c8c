"""detops accepts every input torchvision accepts, with torchvision's result, and
where torchvision raises, code that catches torchvision's exception type
catches detops' error too (issue 11).

Each case is one call written once and run on both libraries; what is expected
comes from torchvision's own call in the same process, never from a constant.
A case's ``kind`` says how the two may differ:

* ``"same"``: whatever torchvision does (a result, or an exception), detops does
  too: an equal result, or an error that is an instance of torchvision's type.
* ``"extension"``: torchvision raises, detops computes (it takes more inputs:
  mixed dtypes, integer boxes...). The test checks that torchvision still raises,
  so the case stays honest if torchvision changes.
* ``"stricter"``: torchvision returns garbage, detops raises a clear error
  (the out-of-range RoI batch index reads outside the map in torchvision).
"""

from __future__ import annotations

import types

import pytest
import torch

import detops

torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection._utils import BoxCoder as TvBoxCoder  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")

TV = types.SimpleNamespace(**{n: getattr(torchvision.ops, n) for n in dir(torchvision.ops) if not n.startswith("_")})
TV.AnchorGenerator, TV.BoxCoder = TvAnchorGenerator, TvBoxCoder
DT = detops


def _boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 20
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 10], dim=1)


B = _boxes(8, 0)
S = torch.rand(8, generator=torch.Generator().manual_seed(1))
S[3] = S[5]  # a tie
IDX = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
X = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
ROIS = torch.cat([torch.tensor([[0.0], [1.0], [0.0], [1.0]]), _boxes(4, 3) * 0.5], dim=1)
XPS = torch.rand(2, 8, 12, 12, generator=torch.Generator().manual_seed(6))
LOGITS = torch.randn(8, generator=torch.Generator().manual_seed(4))
TARGETS = (torch.rand(8, generator=torch.Generator().manual_seed(5)) > 0.5).float()


def _q(t: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.quantize_per_tensor(t, scale, 0, torch.quint8)


def _images(size: int = 32, n: int = 2) -> ImageList:
    return ImageList(torch.zeros(n, 3, size, size), [(size, size)] * n)


CASES = {
    # nms / batched_nms
    "nms iou_threshold above 1": ("same", lambda m: m.nms(B, S, 1.5)),
    "nms iou_threshold below 0": ("same", lambda m: m.nms(B, S, -0.5)),
    "nms iou_threshold 0": ("same", lambda m: m.nms(B, S, 0.0)),
    "nms iou_threshold NaN": ("same", lambda m: m.nms(B, S, float("nan"))),
    "nms int threshold": ("same", lambda m: m.nms(B, S, 1)),
    "nms non-contiguous boxes": ("same", lambda m: m.nms(B.t().contiguous().t(), S, 0.5)),
    "nms empty boxes": ("same", lambda m: m.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)),
    "nms quint8": ("same", lambda m: m.nms(_q(B, 0.125), _q(S, 0.01), 0.5)),
    "nms boxes [N, 5]": ("same", lambda m: m.nms(torch.rand(8, 5), S, 0.5)),
    "nms 1-D boxes": ("same", lambda m: m.nms(B[0], S[:1], 0.5)),
    "nms empty 1-D boxes": ("same", lambda m: m.nms(torch.zeros(0), torch.zeros(0), 0.5)),
    "nms scores [N, 1]": ("same", lambda m: m.nms(B, S[:, None], 0.5)),
    "nms length mismatch": ("same", lambda m: m.nms(B, S[:5], 0.5)),
    "nms integer boxes": ("extension", lambda m: m.nms((B * 4).int(), S, 0.5)),
    "nms float64 boxes, float32 scores": ("extension", lambda m: m.nms(B.double(), S, 0.5)),
    "batched_nms float idxs": ("same", lambda m: m.batched_nms(B, S, IDX.float() * 0.5, 0.5)),
    "batched_nms bool idxs": ("same", lambda m: m.batched_nms(B, S, IDX > 0, 0.5)),
    "batched_nms int32 idxs": ("same", lambda m: m.batched_nms(B, S, IDX.int(), 0.5)),
    "batched_nms negative idxs": ("same", lambda m: m.batched_nms(B, S, IDX - 1, 0.5)),
    "batched_nms empty 1-D boxes": (
        "same", lambda m: m.batched_nms(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)),
    "batched_nms empty [0, 4]": (
        "same", lambda m: m.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)),
    "batched_nms one 1-D box": ("same", lambda m: m.batched_nms(B[0], S[:1], IDX[:1], 0.5)),
    "batched_nms 1-D box, 3 scores": ("same", lambda m: m.batched_nms(B[0], S[:3], IDX[:3], 0.5)),
    "batched_nms iou_threshold above 1": ("same", lambda m: m.batched_nms(B, S, IDX, 2.0)),
    "batched_nms iou_threshold below 0": ("same", lambda m: m.batched_nms(B, S, IDX, -0.1)),
    "batched_nms idxs [N, 1]": ("same", lambda m: m.batched_nms(B, S, IDX[:, None], 0.5)),
    "batched_nms idxs too short": ("same", lambda m: m.batched_nms(B, S, IDX[:5], 0.5)),
    # roi_align / roi_pool
    "roi_align output_size 0": ("same", lambda m: m.roi_align(X, ROIS, 0)),
    "roi_align output_size (0, 3)": ("same", lambda m: m.roi_align(X, ROIS, (0, 3))),
    "roi_align output_size -1": ("same", lambda m: m.roi_align(X, ROIS, -1)),
    "roi_align spatial_scale 0": ("same", lambda m: m.roi_align(X, ROIS, 3, 0.0)),
    "roi_align spatial_scale < 0": ("same", lambda m: m.roi_align(X, ROIS, 3, -0.5, 2)),
    "roi_align spatial_scale < 0 aligned": ("same", lambda m: m.roi_align(X, ROIS, 3, -0.5, 2, True)),
    "roi_align int spatial_scale": ("same", lambda m: m.roi_align(X, ROIS, 3, 1)),
    "roi_align list of boxes": ("same", lambda m: m.roi_align(X, [ROIS[:2, 1:], ROIS[2:, 1:]], 3)),
    "roi_align tuple of boxes": ("same", lambda m: m.roi_align(X, (ROIS[:2, 1:], ROIS[2:, 1:]), 3)),
    "roi_align list with no rows": ("same", lambda m: m.roi_align(X, [torch.zeros(0, 4)], 3)),
    "roi_align empty map": ("same", lambda m: m.roi_align(torch.zeros(0, 3, 8, 8), torch.zeros(0, 5), 3)),
    "roi_align zero channels": ("same", lambda m: m.roi_align(torch.zeros(2, 0, 8, 8), ROIS, 3)),
    "roi_align non-contiguous rois": ("same", lambda m: m.roi_align(X, ROIS.t().contiguous().t(), 3)),
    "roi_align channels-last": ("same", lambda m: m.roi_align(X.to(memory_format=torch.channels_last), ROIS, 3)),
    # torchvision's quantized kernel takes one image and quantized rois
    "roi_align quint8": ("same", lambda m: m.roi_align(_q(X[:1], 1 / 128), _q(ROIS[ROIS[:, 0] == 0], 0.25), 3, 0.5)),
    "roi_align quint8, two images": ("extension", lambda m: m.roi_align(_q(X, 1 / 128), _q(ROIS, 0.25), 3, 0.5)),
    "roi_align boxes [K, 4]": ("same", lambda m: m.roi_align(X, ROIS[:, 1:], 3)),
    "roi_align boxes [K, 6]": ("same", lambda m: m.roi_align(X, torch.rand(3, 6), 3)),
    "roi_align 1-D boxes": ("same", lambda m: m.roi_align(X, ROIS[0], 3)),
    "roi_align list of [K, 5]": ("same", lambda m: m.roi_align(X, [ROIS], 3)),
    "roi_align list of 1-D": ("same", lambda m: m.roi_align(X, [ROIS[0, 1:]], 3)),
    "roi_align 3-D map": ("same", lambda m: m.roi_align(X[0], ROIS, 3)),
    "roi_align int map": ("same", lambda m: m.roi_align((X * 10).int(), ROIS, 3)),
    "roi_align float64 rois": ("extension", lambda m: m.roi_align(X, ROIS.double(), 3)),
    "roi_align batch index out of range": (
        "stricter", lambda m: m.roi_align(X, torch.cat([torch.full((4, 1), 5.0), ROIS[:, 1:]], 1), 3)),
    "roi_pool output_size 0": ("same", lambda m: m.roi_pool(X, ROIS, 0)),
    "roi_pool spatial_scale 0": ("same", lambda m: m.roi_pool(X, ROIS, 3, 0.0)),
    "roi_pool spatial_scale < 0": ("same", lambda m: m.roi_pool(X, ROIS, 3, -0.5)),
    "roi_pool list of boxes": ("same", lambda m: m.roi_pool(X, [ROIS[:2, 1:], ROIS[2:, 1:]], 3)),
    "roi_pool boxes [K, 4]": ("same", lambda m: m.roi_pool(X, ROIS[:, 1:], 3)),
    "roi_pool 1-D boxes": ("same", lambda m: m.roi_pool(X, ROIS[0], 3)),
    "roi_pool list of [K, 5]": ("same", lambda m: m.roi_pool(X, [ROIS], 3)),
    "roi_pool int map": ("same", lambda m: m.roi_pool((X * 10).int(), ROIS, 3)),
    "roi_pool quint8": ("extension", lambda m: m.roi_pool(_q(X, 1 / 128), ROIS, 3)),
    # ps_roi_align / ps_roi_pool (channels: a multiple of the bins)
    "ps_roi_align": ("same", lambda m: m.ps_roi_align(XPS, ROIS, 2, 0.5, 2)),
    "ps_roi_align spatial_scale 0": ("same", lambda m: m.ps_roi_align(XPS, ROIS, 2, 0.0)),
    "ps_roi_pool spatial_scale < 0": ("same", lambda m: m.ps_roi_pool(XPS, ROIS, 2, -0.5)),
    "ps_roi_align list of boxes": ("same", lambda m: m.ps_roi_align(XPS, [ROIS[:2, 1:], ROIS[2:, 1:]], (1, 2))),
    "ps_roi_pool list of boxes": ("same", lambda m: m.ps_roi_pool(XPS, [ROIS[:2, 1:], ROIS[2:, 1:]], 2)),
    "ps_roi_align boxes [K, 4]": ("same", lambda m: m.ps_roi_align(XPS, ROIS[:, 1:], 2)),
    "ps_roi_pool 1-D boxes": ("same", lambda m: m.ps_roi_pool(XPS, ROIS[0], 2)),
    "ps_roi_align channels not a multiple": ("same", lambda m: m.ps_roi_align(XPS, ROIS, 3)),
    "ps_roi_pool channels not a multiple": ("same", lambda m: m.ps_roi_pool(XPS, ROIS, 3)),
    "ps_roi_align quint8": ("same", lambda m: m.ps_roi_align(_q(XPS, 1 / 128), ROIS, 2)),
    "ps_roi_align float64 boxes": ("extension", lambda m: m.ps_roi_align(XPS, ROIS.double(), 2)),
    "ps_roi_pool bfloat16": ("extension", lambda m: m.ps_roi_pool(XPS.bfloat16(), ROIS.bfloat16(), 2)),
    # IoU family
    "box_iou one 1-D box": ("same", lambda m: m.box_iou(B[0], B)),
    "generalized_box_iou one 1-D box": ("same", lambda m: m.generalized_box_iou(B[0], B)),
    "distance_box_iou one 1-D box": ("same", lambda m: m.distance_box_iou(B[0], B)),
    "complete_box_iou one 1-D box": ("same", lambda m: m.complete_box_iou(B[0], B)),
    "box_iou 1-D second": ("same", lambda m: m.box_iou(B, B[0])),
    "box_iou [N, 5]": ("same", lambda m: m.box_iou(torch.rand(3, 5), B)),
    "box_iou batched": ("same", lambda m: m.box_iou(B[None], B[None])),
    "box_iou bool and float": ("same", lambda m: m.box_iou(B > 10, B)),
    "box_iou int": ("same", lambda m: m.box_iou((B * 3).int(), (B * 3).int())),
    "box_iou empty": ("same", lambda m: m.box_iou(torch.zeros(0, 4), B)),
    "box_iou bool and bool": ("extension", lambda m: m.box_iou(B > 10, B > 10)),
    "giou loss 1-D": ("same", lambda m: m.generalized_box_iou_loss(B[0], B[1])),
    "giou loss broadcast": ("same", lambda m: m.generalized_box_iou_loss(B, B[:1])),
    "giou loss mismatch": ("same", lambda m: m.generalized_box_iou_loss(B, B[:2])),
    "giou loss [N, 5]": ("same", lambda m: m.generalized_box_iou_loss(torch.rand(3, 5), torch.rand(3, 5))),
    "giou loss bool": ("same", lambda m: m.generalized_box_iou_loss(B > 10, B)),
    "giou loss int": ("same", lambda m: m.generalized_box_iou_loss(B.int(), B.int())),
    "giou loss empty mean": ("same", lambda m: m.generalized_box_iou_loss(torch.zeros(0, 4), torch.zeros(0, 4),
                                                                          reduction="mean")),
    "giou loss bad reduction": ("same", lambda m: m.generalized_box_iou_loss(B, B, reduction="avg")),
    "diou loss bad reduction": ("same", lambda m: m.distance_box_iou_loss(B, B, reduction="avg")),
    "ciou loss bad reduction": ("same", lambda m: m.complete_box_iou_loss(B, B, reduction="avg")),
    # sigmoid_focal_loss
    "focal bad reduction": ("same", lambda m: m.sigmoid_focal_loss(LOGITS, TARGETS, reduction="avg")),
    "focal negative gamma": ("same", lambda m: m.sigmoid_focal_loss(LOGITS, TARGETS, gamma=-1.0)),
    "focal negative gamma sum": ("same", lambda m: m.sigmoid_focal_loss(LOGITS, TARGETS, 0.5, -0.5, "sum")),
    "focal alpha above 1": ("same", lambda m: m.sigmoid_focal_loss(LOGITS, TARGETS, alpha=2.0)),
    "focal shape mismatch": ("same", lambda m: m.sigmoid_focal_loss(LOGITS, TARGETS[:3])),
    "focal int logits": ("same", lambda m: m.sigmoid_focal_loss((LOGITS * 3).int(), TARGETS)),
    "focal 0-d": ("same", lambda m: m.sigmoid_focal_loss(LOGITS[0], TARGETS[0])),
    "focal int targets": ("extension", lambda m: m.sigmoid_focal_loss(LOGITS, TARGETS.long())),
    # AnchorGenerator, BoxCoder
    "anchors: fewer maps than sizes": (
        "same", lambda m: m.AnchorGenerator(((16,), (32,)), ((0.5, 1.0),) * 2)(_images(), [torch.zeros(2, 4, 8, 8)])),
    "anchors: more maps than sizes": (
        "same", lambda m: m.AnchorGenerator(((16,),), ((1.0,),))(_images(), [torch.zeros(2, 4, 8, 8)] * 2)),
    "anchors: one level": ("same", lambda m: m.AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),))(
        _images(), [torch.zeros(2, 4, 8, 8)])),
    "box decode no boxes": ("same", lambda m: m.BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(torch.zeros(0, 4),
                                                                                       [torch.zeros(0, 4)])),
    "box decode": ("same", lambda m: m.BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(LOGITS.reshape(2, 4) * 0.1,
                                                                               [B[:2]])),
    "box encode int weights": ("same", lambda m: m.BoxCoder((10, 10, 5, 5)).encode([B[:4]], [B[4:]])),
}


def _call(fn, module):
    try:
        return fn(module), None
    except Exception as e:  # noqa: BLE001 (the exception is the result under test)
        return None, e


def _equal(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if a.is_quantized:
        # dequantize-compute-requantize: the same quantization, values within one step
        return (b.is_quantized and a.q_scale() == b.q_scale() and a.q_zero_point() == b.q_zero_point()
                and a.shape == b.shape and bool(((a.int_repr().int() - b.int_repr().int()).abs() <= 1).all()))
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)  # indices: exact
    # Float results: torchvision's up to rounding here; bit-equality is tested per op
    # (tests/ops), where the kernels promise it.
    torch.testing.assert_close(b, a, equal_nan=True)
    return True


@pytest.mark.parametrize("name", list(CASES))
def test_like_torchvision(name):
    kind, fn = CASES[name]
    expected, tv_error = _call(fn, TV)
    got, dt_error = _call(fn, DT)
    if kind == "stricter":
        assert tv_error is None, "torchvision now rejects this input too: make the case 'same'"
        assert dt_error is not None, "detops should reject this input"
        return
    if kind == "extension":
        assert tv_error is not None, "torchvision now accepts this input: make the case 'same'"
        assert dt_error is None, f"detops should accept this input, raised {dt_error!r}"
        return
    if tv_error is None:
        assert dt_error is None, f"torchvision accepts this input, detops raised {dt_error!r}"
        assert _equal(expected, got), (expected, got)
    else:
        assert dt_error is not None, f"torchvision raises {tv_error!r}, detops returned"
        assert isinstance(dt_error, type(tv_error)), (
            f"code catching torchvision's {type(tv_error).__name__} would miss detops' {dt_error!r}"
        )
        assert isinstance(dt_error, (ValueError, TypeError, RuntimeError)), dt_error


def test_reduction_message_keeps_torchvision_phrase():
    for fn in (DT.sigmoid_focal_loss, DT.generalized_box_iou_loss, DT.distance_box_iou_loss,
               DT.complete_box_iou_loss):
        with pytest.raises(ValueError, match="Invalid Value for arg 'reduction'"):
            fn(B, B, reduction="avg") if fn is not DT.sigmoid_focal_loss else fn(LOGITS, TARGETS, reduction="avg")


def test_error_classes_are_exported_and_keep_detops_messages():
    assert issubclass(detops.ShapeError, ValueError) and issubclass(detops.ShapeError, AssertionError)
    assert issubclass(detops.ShapeError, RuntimeError) and issubclass(detops.DtypeError, TypeError)
    with pytest.raises(detops.ShapeError, match=r"boxes must be a Tensor\[K, 5\]"):
        detops.roi_align(X, ROIS[:, 1:], 3)
    with pytest.raises(detops.ShapeError, match=r"boxes must have shape \[N, 4\]"):
        detops.nms(torch.rand(4, 5), torch.rand(4), 0.5)
    with pytest.raises(detops.ShapeError, match="number of feature maps"):
        detops.AnchorGenerator(((16,), (32,)), ((1.0,),) * 2)(_images(), [torch.zeros(2, 4, 8, 8)])


@pytest.mark.parametrize("seed", range(3))
def test_threshold_sweep_matches_torchvision(seed):
    """Random boxes with ties, empty and degenerate boxes, thresholds in and out of [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    n = 40
    boxes = torch.rand(n, 4, generator=g) * 30
    boxes[:, 2:] += boxes[:, :2] * torch.rand(n, 2, generator=g)
    boxes[::5, 2] = boxes[::5, 0]  # zero width
    scores = torch.rand(n, generator=g).round(decimals=1)  # many ties
    idxs = torch.randint(0, 4, (n,), generator=g)
    for thr in (-1.0, -0.2, 0.0, 0.3, 0.7, 1.0, 1.2, float("nan")):
        assert torch.equal(DT.nms(boxes, scores, thr), TV.nms(boxes, scores, thr)), thr
        got = DT.batched_nms(boxes, scores, idxs, thr)
        want = TV.batched_nms(boxes, scores, idxs, thr)
        assert torch.equal(got.sort()[0], want.sort()[0]), thr
