"""Export mode of the detection models (fixed-size outputs, no host sync):
equal to normal mode, torch.export with a save/load round trip,
torch.compile(fullgraph=True), and autocast."""

from __future__ import annotations

import pytest
import torch

import detops.models.detection as dd

from ._detection_common import SMALL, model_pair

NAMES = ["retinanet", "fasterrcnn", "maskrcnn"]
BUILDER = {"retinanet": dd.retinanet_resnet50_fpn, "fasterrcnn": dd.fasterrcnn_resnet50_fpn,
           "maskrcnn": dd.maskrcnn_resnet50_fpn}


def _batch(seed: int, b: int = 2, h: int = 120, w: int = 150) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _assert_export_equals_normal(exported: dict, normal: list, slots: int) -> None:
    b = exported["boxes"].shape[0]
    assert exported["num_detections"].shape == (b,)
    for i, ref in enumerate(normal):
        n = int(exported["num_detections"][i])
        assert n == min(len(ref["boxes"]), slots)
        for key, value in ref.items():
            assert torch.equal(exported[key][i, :n], value[:n]), key
            assert not exported[key][i, n:].any() if key != "labels" else (exported[key][i, n:] == -1).all()


@pytest.mark.parametrize("name", NAMES)
def test_export_mode_equals_normal_mode(name):
    _, model = model_pair(name)
    x = _batch(0)
    try:
        with torch.no_grad():
            normal = model(list(x))
            assert model.export_mode(20) is model
            out = model(x)
        assert out["boxes"].shape == (2, 20, 4) and out["scores"].shape == (2, 20) and out["labels"].shape == (2, 20)
        if name == "maskrcnn":
            assert out["masks"].shape == (2, 20, 1, 120, 150)
        _assert_export_equals_normal(out, normal, 20)
    finally:
        model.export_mode(None)
    assert isinstance(model(list(x[:1])), list)


def test_torch_export_dynamic_batch_save_load(tmp_path):
    # a fresh model, never run eagerly: the export itself sets everything up
    torch.manual_seed(0)
    model = dd.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, backbone_name="resnet18", **SMALL,
                                     box_score_thresh=0.0, box_detections_per_img=20).eval().export_mode(20)
    x = _batch(1)
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    path = tmp_path / "maskrcnn.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    x3 = _batch(2, b=3)
    with torch.no_grad():
        out = loaded(x3)
        normal = model.export_mode(None)(list(x3))
    assert out["boxes"].shape == (3, 20, 4) and out["masks"].shape == (3, 20, 1, 120, 150)
    _assert_export_equals_normal(out, normal, 20)


def test_compile_fullgraph():
    _, model = model_pair("fasterrcnn")
    x = _batch(3)
    try:
        model.export_mode(20)
        with torch.no_grad():
            ref = model(x)
            # fullgraph=True fails on any graph break (a host sync would be one);
            # the eager backend keeps the test fast, Inductor is the benchmark's business
            out = torch.compile(model, fullgraph=True, backend="eager")(x)
        for key in ref:
            assert torch.equal(out[key], ref[key]), key
    finally:
        model.export_mode(None)


@pytest.mark.parametrize("name", ["retinanet", "maskrcnn"])
def test_autocast_bf16(name):
    # bf16 convolutions are slow on CPUs without bf16 units: one small image
    _, model = model_pair(name)
    x = list(_batch(4, b=1, h=96, w=112))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    for r, o in zip(ref, out):
        # anchors, decoding and NMS run in float32 under autocast
        assert o["boxes"].dtype == torch.float32 and o["scores"].dtype == torch.float32
        assert torch.isfinite(o["boxes"]).all() and len(o["boxes"]) > 0
        assert o.keys() == r.keys()
