"""The training CLI end to end, at toy sizes: a few optimiser steps of every
model, one evaluation, the written outputs, a resume, and fine-tuning into a
new class count."""

import json

import pytest
import torch

from detops.train import MODELS
from detops.train.cli import main, parse_args

TINY = ["--image-size", "64", "--train-images", "8", "--val-images", "2", "--batch-size", "2", "--no-progress"]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_each_model_trains_evaluates_and_writes(model, tmp_path):
    out = tmp_path / model
    assert main(["--model", model, "--max-steps", "2", "--out", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    assert final["step"] == 2
    key = "miou" if MODELS[model](parse_args([])).task == "segmentation" else "bbox_map"
    assert 0.0 <= final[key] <= 1.0
    assert (out / "predictions.png").stat().st_size > 1000
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and state["config"]["model"] == model


def test_resume_continues_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["--model", "fcn", "--out", str(out), *TINY]
    main([*args, "--max-steps", "2"])
    first = torch.load(out / "checkpoint.pt", weights_only=False)
    main([*args, "--max-steps", "3", "--resume", str(out / "checkpoint.pt")])
    second = torch.load(out / "checkpoint.pt", weights_only=False)
    assert second["step"] == 3
    assert [h["step"] for h in second["history"]] == [2, 3]
    changed = [k for k, v in first["model"].items() if v.is_floating_point() and not torch.equal(v, second["model"][k])]
    assert changed, "the resumed run took an optimiser step"


def test_finetune_into_a_new_class_count_with_a_frozen_backbone(tmp_path):
    base = tmp_path / "base"
    main(["--model", "fcn", "--out", str(base), "--max-steps", "1", *TINY])
    out = tmp_path / "tuned"
    main(["--model", "fcn", "--out", str(out), "--max-steps", "1", "--num-classes", "2",
          "--finetune", str(base / "checkpoint.pt"), "--freeze-backbone", *TINY])
    before = torch.load(base / "checkpoint.pt", weights_only=False)["model"]
    after = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    cfg = parse_args(["--model", "fcn", "--num-classes", "2", *TINY])
    spec = MODELS["fcn"](cfg)
    model = spec.build(2, cfg)
    frozen_ids = {id(p) for p in spec.backbone_parameters(model)}
    backbone = [name for name, p in model.named_parameters() if id(p) in frozen_ids]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
    head = [name for name, p in model.named_parameters() if id(p) not in frozen_ids and name in before
            and before[name].shape == after[name].shape]
    assert any(not torch.equal(before[k], after[k]) for k in head), "the rest still trains"
    assert any(before[k].shape != after[k].shape for k in after if k in before), "a new head for 2 classes"


def test_bad_flags():
    with pytest.raises(SystemExit):
        parse_args(["--model", "nope"])
    with pytest.raises(SystemExit, match="COCO folder"):
        main(["--data", "/nonexistent-folder", "--max-steps", "1"])


def test_pictures_take_any_number_of_images(tmp_path):
    from detops.data import SyntheticShapes
    from detops.train.draw import draw_detections, draw_segmentations

    items = [SyntheticShapes(9, 32, seed=4)[i] for i in range(9)]
    images = [im for im, _ in items]
    draw_segmentations(images, [t["semantic"] for _, t in items], [t["semantic"] for _, t in items],
                       tmp_path / "seg.png", class_names=["bg", "a", "b", "c"])
    preds = [dict(boxes=t["boxes"], labels=t["labels"], scores=torch.ones(len(t["labels"]))) for _, t in items]
    draw_detections(images, preds, [t for _, t in items], tmp_path / "det.png")
    assert (tmp_path / "seg.png").stat().st_size > 1000 and (tmp_path / "det.png").stat().st_size > 1000


def test_retinanet_cpu_recipe_and_its_model_args():
    cfg = parse_args(["--model", "retinanet"])
    spec = MODELS["retinanet"](cfg)
    assert cfg.image_size is None and spec.image_size == 96  # the model's size when --image-size is not given

    def shape(*model_args: str) -> tuple[list[tuple[int, ...]], int]:
        c = parse_args(["--model", "retinanet", "--image-size", "96", *model_args])
        model = spec.build(3, c).eval()
        with torch.no_grad():
            levels = [tuple(f.shape[1:]) for f in model.backbone(torch.zeros(1, 3, 96, 96)).values()]
        return levels, len(model.head.classification_head.conv)

    assert shape() == ([(64, 12, 12), (64, 6, 6), (64, 3, 3)], 2)
    # torchvision's RetinaNet shape: five levels (C3-C5, P6, P7) of 256 channels, four convs per head
    levels, convs = shape("--model-arg", "fpn_channels=256", "--model-arg", "levels=5", "--model-arg", "head_convs=4")
    assert levels == [(256, 12, 12), (256, 6, 6), (256, 3, 3), (256, 2, 2), (256, 1, 1)] and convs == 4
    with pytest.raises(ValueError, match="levels"):
        shape("--model-arg", "levels=7")
