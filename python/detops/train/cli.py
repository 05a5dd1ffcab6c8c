"""``python -m detops.train`` (also ``detops-train``): train a detector or a
segmenter on synthetic or COCO-format data, evaluate it, and write
``metrics.json``, ``predictions.png`` and ``checkpoint.pt`` into ``--out``.

Under ``torchrun --nproc_per_node=N`` the same command trains with
DistributedDataParallel (gloo on CPU, nccl on GPU); ``--batch-size`` is the
global batch, split over the ranks."""

from __future__ import annotations

import argparse
import dataclasses
import json

from .engine import TrainConfig, train
from .zoo import MODELS


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m detops.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=defaults.model, choices=sorted(MODELS), help="what to train")
    p.add_argument("--data", default=defaults.data,
                   help="'synthetic', or a COCO folder holding train.json, val.json and the images they name")
    p.add_argument("--out", default=defaults.out, help="folder for metrics.json, predictions.png, checkpoint.pt")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps, then evaluate and write")
    p.add_argument("--device", default=defaults.device, help="cpu or cuda")
    p.add_argument("--resume", default=None, metavar="PATH", help="a checkpoint.pt written into --out")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch (split over ranks)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: the model's)")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--image-size", type=int, default=defaults.image_size, help="synthetic image side and model input size (default: the model's, 96 for retinanet, else 128)")
    p.add_argument("--train-images", type=int, default=defaults.train_images, help="synthetic training set size")
    p.add_argument("--val-images", type=int, default=defaults.val_images, help="synthetic validation set size")
    p.add_argument("--num-classes", type=int, default=None, help="object classes (default: the data's)")
    p.add_argument("--backbone", default=None, help="torchvision backbone name (default: the model's small one)")
    p.add_argument("--finetune", default=None, metavar="PATH",
                   help="start from a local checkpoint; tensors whose shape differs (a new head) stay fresh")
    p.add_argument("--freeze-backbone", action="store_true", help="train only the layers after the backbone")
    p.add_argument("--eval-every", type=int, default=0, metavar="STEPS", help="also evaluate every N steps")
    p.add_argument("--workers", type=int, default=defaults.workers, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="under torchrun, BatchNorm uses each rank's own share of the batch (default: the global batch)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=JSON",
                   help="extra keyword for the model builder, e.g. --model-arg trainable_backbone_layers=5")
    args = vars(p.parse_args(argv))
    extra = {}
    for item in args.pop("model_arg"):
        key, _, value = item.partition("=")
        if not key or not value:
            p.error(f"--model-arg takes KEY=JSON, got {item!r}")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in args.items() if k in fields}, extra=extra)


def main(argv: list[str] | None = None) -> int:
    metrics = train(parse_args(argv))
    print(json.dumps(metrics))
    return 0
