"""Every public detops function and module with a torchvision (or torch)
counterpart compiles with ``torch.jit.script`` and traces with
``torch.fx.symbolic_trace``, giving the eager results (issue 11); and
torchvision's ``create_feature_extractor`` works on a model holding detops
modules."""

from __future__ import annotations

from typing import Dict, List

import pytest
import torch
import torch.fx
from torch import Tensor, nn

import detops

torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection.image_list import ImageList  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def _boxes(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 20
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 10], dim=1)


B = _boxes(12, 0)
S = torch.rand(12, generator=torch.Generator().manual_seed(1))
IDX = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(2))
X = torch.rand(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
ROIS = torch.cat([torch.tensor([[0.0], [1.0], [0.0]]), _boxes(3, 4) * 0.6], dim=1)
LOGITS = torch.randn(6, 5, generator=torch.Generator().manual_seed(5))
TARGETS = (torch.rand(6, 5, generator=torch.Generator().manual_seed(6)) > 0.7).float()
W = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(7))

# (function, positional arguments): each function is called exactly so, eager and scripted.
FUNCTIONS = {
    "nms": (detops.nms, (B, S, 0.5)),
    "nms negative threshold": (detops.nms, (B, S, -0.5)),
    "batched_nms": (detops.batched_nms, (B, S, IDX, 0.5)),
    "batched_nms float idxs": (detops.batched_nms, (B, S, IDX.float(), 0.5)),
    "box_iou": (detops.box_iou, (B, B[:5])),
    "box_iou xywh aligned": (detops.box_iou, (B, B, "xywh", True)),
    "box_iof": (detops.box_iof, (B, B[:5])),
    "generalized_box_iou": (detops.generalized_box_iou, (B, B[:5])),
    "distance_box_iou": (detops.distance_box_iou, (B, B[:5])),
    "complete_box_iou": (detops.complete_box_iou, (B[None], B[None, :5])),
    "generalized_box_iou_loss": (detops.generalized_box_iou_loss, (B, B.flip(0), "mean")),
    "distance_box_iou_loss": (detops.distance_box_iou_loss, (B, B.flip(0), "sum")),
    "complete_box_iou_loss": (detops.complete_box_iou_loss, (B, B[:1])),
    "sigmoid_focal_loss": (detops.sigmoid_focal_loss, (LOGITS, TARGETS, 0.25, 2.0, "mean")),
    "sigmoid_focal_loss negative gamma": (detops.sigmoid_focal_loss, (LOGITS, TARGETS, 0.25, -1.0, "none")),
    "roi_align": (detops.roi_align, (X, ROIS, 3, 0.5, 2, True)),
    "roi_align int size, list": (detops.roi_align, (X, [ROIS[:2, 1:], ROIS[2:, 1:]], 3)),
    "roi_align output 0": (detops.roi_align, (X, ROIS, [0, 2])),
    "roi_pool": (detops.roi_pool, (X, ROIS, [3, 2], 0.5)),
    "roi_pool list": (detops.roi_pool, (X, [ROIS[:, 1:]], 2)),
    "ps_roi_align": (detops.ps_roi_align, (X, ROIS, 2, 0.5, 2)),
    "ps_roi_align list": (detops.ps_roi_align, (X, [ROIS[:2, 1:], ROIS[2:, 1:]], [1, 2])),
    "ps_roi_pool": (detops.ps_roi_pool, (X, ROIS, [2, 1], 0.5)),
    "encode_boxes": (detops.encode_boxes, (B, B.flip(0), [10.0, 10.0, 5.0, 5.0])),
    "encode_boxes tensor weights": (detops.encode_boxes, (B, B.flip(0), torch.tensor([1.0, 2.0, 3.0, 4.0]))),
    "decode_boxes": (detops.decode_boxes, (LOGITS[:, :4] * 0.1, B[:6], [10.0, 10.0, 5.0, 5.0], 4.0)),
    "conv_transpose2d": (detops.conv_transpose2d, (X, W, None, 2, 1, 0, 4)),
    "conv_transpose2d defaults": (detops.conv_transpose2d, (X, W.expand(4, 4, 4, 4).contiguous())),
    "paste_masks_in_image": (detops.paste_masks_in_image, (X[:1, :1].expand(12, 1, 16, 16), B, (30, 25))),
    "paste_masks": (detops.paste_masks, (X[:1, :1].expand(12, 1, 16, 16), B, IDX[:, None].expand(12, 2) + 20,
                                         [30, 25], 2)),
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_function_scripts_with_eager_results(name):
    fn, args = FUNCTIONS[name]
    scripted = torch.jit.script(fn)
    assert torch.equal(scripted(*args), fn(*args))


def test_scripted_errors_keep_messages():
    scripted = torch.jit.script(detops.nms)
    with pytest.raises(Exception, match=r"boxes must have shape \[N, 4\]"):
        scripted(torch.rand(3, 5), torch.rand(3), 0.5)
    scripted = torch.jit.script(detops.roi_align)
    with pytest.raises(Exception, match=r"boxes must be a Tensor\[K, 5\]"):
        scripted(X, ROIS[:, 1:], 3)


class _Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.align = detops.RoIAlign((3, 2), 0.5, 2, aligned=True)
        self.pool = detops.RoIPool(3, 0.5)
        self.multi = detops.MultiScaleRoIAlign(["p2", "p3"], 3, 2)

    def forward(self, x: Tensor, rois: Tensor, boxes: List[Tensor]) -> List[Tensor]:
        features: Dict[str, Tensor] = {"p2": x, "p3": x[:, :, ::2, ::2]}
        return [self.align(x, rois), self.pool(x, rois), self.multi(features, boxes, [(32, 32), (32, 32)])]


class _Anchors(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.anchors = detops.AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2)
        self.coder = detops.BoxCoder((10.0, 10.0, 5.0, 5.0))

    def forward(self, images: ImageList, features: List[Tensor], codes: Tensor) -> List[Tensor]:
        anchors = self.anchors(images, features)
        decoded = self.coder.decode(codes, anchors)
        encoded = self.coder.encode(anchors, anchors)
        return anchors + [decoded] + list(encoded)


class _PSPools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.align = detops.nn.PSRoIAlign(2, 0.5, 2)
        self.pool = detops.nn.PSRoIPool((1, 2), 0.5)

    def forward(self, x: Tensor, rois: Tensor, boxes: List[Tensor]) -> List[Tensor]:
        return [self.align(x, rois), self.pool(x, boxes)]


def _module_cases():
    boxes = [_boxes(4, 8) * 1.5, _boxes(2, 9) * 1.5]
    images = ImageList(torch.zeros(2, 3, 32, 32), [(32, 32), (30, 28)])
    features = [torch.rand(2, 4, 8, 8), torch.rand(2, 4, 4, 4)]
    codes = torch.randn(2 * (64 + 16) * 3, 4, generator=torch.Generator().manual_seed(10)) * 0.1
    return {
        "RoIAlign, RoIPool, MultiScaleRoIAlign": (_Pools(), (X, ROIS, boxes)),
        "PSRoIAlign, PSRoIPool": (_PSPools(), (X, ROIS, boxes)),
        "AnchorGenerator, BoxCoder": (_Anchors(), (images, features, codes)),
        "ConvTranspose2d": (detops.nn.ConvTranspose2d(4, 8, 2, 2, activation="relu"), (X,)),
        "ConvTranspose2d grouped": (detops.nn.ConvTranspose2d(4, 4, 4, 2, 1, groups=4), (X,)),
        "BilinearUpsample": (detops.nn.BilinearUpsample(4, 2), (X,)),
    }


def _flat(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize("name", list(_module_cases()))
def test_module_scripts_with_eager_results(name):
    module, args = _module_cases()[name]
    eager = _flat(module(*args))
    scripted = torch.jit.script(module)
    for a, b in zip(_flat(scripted(*args)), eager, strict=True):
        assert torch.equal(a, b)


class _UsesFunctions(nn.Module):
    """User code calling detops through its namespace, as torchvision users call torchvision.ops."""

    def forward(self, boxes, scores, idxs, x, rois, logits, targets):
        keep = detops.batched_nms(boxes, scores, idxs, 0.5)
        iou = detops.generalized_box_iou(boxes[keep], boxes)
        loss = detops.sigmoid_focal_loss(logits, targets, reduction="sum")
        pooled = detops.roi_align(x, rois, 2, 0.5)
        return iou.sum() + loss + pooled.mean() + detops.ops.box_iou(boxes, boxes).mean()


@pytest.mark.parametrize("name", ["RoIAlign, RoIPool, MultiScaleRoIAlign", "PSRoIAlign, PSRoIPool", "BilinearUpsample",
                                  "functions"])
def test_fx_symbolic_trace_with_eager_results(name):
    if name == "functions":
        module, args = _UsesFunctions(), (B, S, IDX, X, ROIS, LOGITS, TARGETS)
    else:
        module, args = _module_cases()[name]
    traced = torch.fx.symbolic_trace(module)
    # The ops are graph nodes, not traced into (their checks would need real tensors).
    targets = {getattr(n.target, "__name__", str(n.target)) for n in traced.graph.nodes if n.op == "call_function"}
    assert targets & {"roi_align", "roi_pool", "_multiscale_roi_align", "conv_transpose2d", "batched_nms",
                      "generalized_box_iou", "sigmoid_focal_loss", "ps_roi_align", "ps_roi_pool"}
    for a, b in zip(_flat(traced(*args)), _flat(module(*args)), strict=True):
        assert torch.equal(a, b)


def test_fx_issue_example():
    module = detops.RoIAlign(5, 1.0, -1)
    traced = torch.fx.symbolic_trace(module)
    assert torch.equal(traced(X, ROIS), module(X, ROIS))


def test_fx_conv_transpose_module_with_concrete_output_size():
    module = detops.nn.ConvTranspose2d(4, 8, 2, 2)
    traced = torch.fx.symbolic_trace(module, concrete_args={"output_size": None})
    assert torch.equal(traced(X), module(X))


class _RoIHeadModel(nn.Module):
    """A torchvision FPN detection backbone and box head around detops' pooler."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
        from torchvision.models.detection.faster_rcnn import TwoMLPHead

        torch.manual_seed(0)
        self.backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=0)
        self.box_roi_pool = detops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
        self.box_head = TwoMLPHead(self.backbone.out_channels * 7 * 7, 32)

    def forward(self, images: Tensor, boxes: Tensor) -> Tensor:
        features = self.backbone(images)
        pooled = self.box_roi_pool(features, [boxes], [(64, 64)])
        return self.box_head(pooled)


def test_create_feature_extractor_on_model_with_detops_modules():
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = _RoIHeadModel().eval()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    boxes = _boxes(5, 12) * 2
    _, eval_nodes = get_graph_node_names(model)
    pool_node = next(n for n in eval_nodes if "multiscale_roi_align" in n)
    extractor = create_feature_extractor(model, return_nodes={pool_node: "pooled", "box_head.fc7": "fc7"})
    with torch.no_grad():
        out = extractor(images, boxes)
        features = model.backbone(images)
        pooled = model.box_roi_pool(features, [boxes], [(64, 64)])
        assert torch.equal(out["pooled"], pooled)
        head = model.box_head
        assert torch.equal(out["fc7"], head.fc7(torch.relu(head.fc6(pooled.flatten(1)))))
