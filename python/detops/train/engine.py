"""The training loop: data, optimiser, periodic evaluation, checkpoints,
pictures, and torch.distributed (one process, or one per rank under torchrun)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..data import CocoDetection, InferenceSampler, RandomHorizontalFlip, SyntheticShapes
from ..data import collate_detection, collate_segmentation
from ..eval import MeanAveragePrecision, SegmentationMetrics
from .sync_bn import convert_sync_batchnorm
from .zoo import MODELS, ModelSpec

__all__ = ["TrainConfig", "train"]


@dataclass
class TrainConfig:
    """What ``python -m detops.train`` was asked to do (its flags)."""

    model: str = "retinanet"
    data: str = "synthetic"
    out: str = "train-out"
    epochs: int = 1
    max_steps: int | None = None
    device: str = "cpu"
    resume: str | None = None
    batch_size: int = 8
    lr: float | None = None
    weight_decay: float = 1e-4
    image_size: int | None = None  # None: the model's (ModelSpec.image_size)
    train_images: int = 2048
    val_images: int = 64
    num_classes: int | None = None
    backbone: str | None = None
    finetune: str | None = None
    freeze_backbone: bool = False
    eval_every: int = 0
    workers: int = 0
    seed: int = 0
    sync_bn: bool = True
    show: int = 8
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ distributed


def _init_distributed(device: str) -> tuple[int, int, torch.device]:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1):
    gloo on CPU, nccl on CUDA, one GPU per local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        dev, backend = torch.device(device), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), dev


# ------------------------------------------------------------------ data


class _Augmented(torch.utils.data.Dataset):
    """The training set with a random horizontal flip drawn from a generator
    seeded by ``(seed, epoch, index)``, not from a process's global one: an image
    is flipped the same way whichever rank or worker loads it, so N processes
    (whose DistributedSampler shares of a global batch are the one-process
    batch's images) train on what one process trains on."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63)
        return RandomHorizontalFlip(0.5, generator=g)(*self.dataset[index])


def _datasets(cfg: TrainConfig, spec: ModelSpec) -> tuple[Any, Any, list[str], int]:
    if cfg.data == "synthetic":
        num_classes = cfg.num_classes or 3
        common = dict(size=cfg.image_size, num_classes=num_classes)
        train_set = _Augmented(SyntheticShapes(cfg.train_images, seed=cfg.seed + 1, **common), cfg.seed)
        val_set = SyntheticShapes(cfg.val_images, seed=cfg.seed + 1_000_000, **common)
        return train_set, val_set, list(val_set.class_names), num_classes
    root = Path(cfg.data)
    if not root.is_dir():
        raise SystemExit(f"--data must be 'synthetic' or a COCO folder (train.json, val.json, images), got {cfg.data!r}")
    for name in ("train.json", "val.json"):
        if not (root / name).is_file():
            raise SystemExit(f"--data {cfg.data}: {name} not found (a COCO folder holds train.json and val.json)")
    masks = spec.needs_masks
    coco_train = CocoDetection(root, root / "train.json", masks=masks, contiguous_labels=True)
    val_set = CocoDetection(root, root / "val.json", masks=masks, contiguous_labels=True)
    names = {c["id"]: c.get("name", str(c["id"])) for c in coco_train.dataset.get("categories", [])}
    class_names = ["background", *[names[c] for c in coco_train.category_ids]]
    return _Augmented(coco_train, cfg.seed), val_set, class_names, cfg.num_classes or len(coco_train.category_ids)


def _loaders(cfg: TrainConfig, spec: ModelSpec, train_set, val_set, rank: int, world: int):
    collate = collate_segmentation if spec.task == "segmentation" else collate_detection
    per_rank = max(cfg.batch_size // world, 1)
    sampler = torch.utils.data.DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
    train_loader = torch.utils.data.DataLoader(train_set, per_rank, sampler=sampler, collate_fn=collate,
                                               num_workers=cfg.workers, drop_last=True)
    val_loader = torch.utils.data.DataLoader(val_set, per_rank, sampler=InferenceSampler(len(val_set), rank, world),
                                             collate_fn=collate_detection, num_workers=cfg.workers)
    return sampler, train_loader, val_loader


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


# ------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(spec: ModelSpec, model: nn.Module, loader, device: torch.device) -> tuple[dict[str, float], tuple]:
    """COCO mAP (detection) or mIoU (segmentation) over the loader, synced
    across ranks. Returns the metrics and this rank's first batch with its
    predictions, for the picture."""
    model.eval()
    if spec.task == "segmentation":
        metric = SegmentationMetrics(spec.num_classes + 1, ignore_index=None)
    else:
        metric = MeanAveragePrecision(iou_type="segm" if spec.needs_masks else "bbox")
        box_metric = MeanAveragePrecision() if spec.needs_masks else None
    first: tuple = ()
    for images, targets in loader:
        images, targets = _to(images, device), _to(targets, device)
        preds = spec.predict(model, images)
        if spec.task == "segmentation":
            metric.update(preds, torch.stack([t["semantic"] for t in targets]))
        else:
            if spec.needs_masks:
                box_metric.update(preds, targets)
                preds_m = [dict(p, masks=(p["masks"][:, 0] >= 0.5)) for p in preds]
                targets_m = [dict(t, masks=t["masks"].bool()) for t in targets]
                metric.update(preds_m, targets_m)
            else:
                metric.update(preds, targets)
        if not first:
            first = (images, preds, targets)
    out: dict[str, float]
    if spec.task == "segmentation":
        scores = metric.compute()
        out = {"miou": float(scores["miou"]), "pixel_accuracy": float(scores["pixel_accuracy"])}
    else:
        stats = (box_metric or metric).compute()
        out = {"bbox_map": float(stats["map"]), "bbox_map_50": float(stats["map_50"]),
               "bbox_map_75": float(stats["map_75"])}
        if spec.needs_masks:
            segm = metric.compute()
            out.update(segm_map=float(segm["map"]), segm_map_50=float(segm["map_50"]))
    model.train()
    return out, first


def _draw(spec: ModelSpec, first: tuple, path: Path, class_names: list[str], show: int) -> None:
    from .draw import draw_detections, draw_segmentations

    images, preds, targets = first
    images = list(images)[:show]
    if spec.task == "segmentation":
        draw_segmentations(images, list(preds[:show]), [t["semantic"] for t in targets[:show]], path,
                           class_names=class_names)
    else:
        draw_detections(images, preds[:show], targets[:show], path, class_names=class_names)


# ------------------------------------------------------------------ checkpoints


def _load_finetune(model: nn.Module, path: str) -> list[str]:
    """Load a local checkpoint's weights where names and shapes match (a new
    head for a new class count keeps its fresh weights). Returns the skipped keys."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def _save(path: Path, model: nn.Module, optimizer, scheduler, step: int, epoch: int, history: list, cfg: TrainConfig):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "epoch": epoch, "history": history, "config": asdict(cfg)}, tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------ the loop


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; write ``metrics.json``,
    ``predictions.png`` and ``checkpoint.pt`` into ``cfg.out`` (rank 0).
    Returns the final metrics."""
    if cfg.model not in MODELS:
        raise SystemExit(f"--model must be one of {', '.join(MODELS)}, got {cfg.model!r}")
    rank, world, device = _init_distributed(cfg.device)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    make_spec = MODELS[cfg.model]
    spec = make_spec(cfg)  # reads num_classes etc. below
    if cfg.image_size is None:
        cfg = replace(cfg, image_size=spec.image_size)
    train_set, val_set, class_names, num_classes = _datasets(cfg, spec)
    spec.num_classes = num_classes
    model = spec.build(num_classes, cfg).to(device)
    if world > 1 and cfg.sync_bn:  # BatchNorm statistics of the global batch, as in one process
        model = convert_sync_batchnorm(model, device)
    if cfg.finetune:
        skipped = _load_finetune(model, cfg.finetune)
        if rank == 0:
            print(f"fine-tuning from {cfg.finetune}: {len(skipped)} tensors keep fresh weights (new head)")
    if cfg.freeze_backbone:
        for p in spec.backbone_parameters(model):
            p.requires_grad_(False)
    sampler, train_loader, val_loader = _loaders(cfg, spec, train_set, val_set, rank, world)
    steps_per_epoch = len(train_loader)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    total = max(total, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for all parameters (the per-tensor loop took ~15% of a small model's CPU step)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr or spec.lr, weight_decay=cfg.weight_decay, fused=True)
    warmup = min(100, total // 10 + 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    step, epoch, history = 0, 0, []
    if cfg.resume:
        state = torch.load(cfg.resume, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, history = state["step"], state["epoch"], state["history"]
        if rank == 0:
            print(f"resumed from {cfg.resume} at step {step}")
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=spec.unused_parameters)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, desc=f"train {cfg.model}", disable=rank != 0 or not cfg.progress,
               dynamic_ncols=True)
    start = time.perf_counter()
    model.train()
    last_eval_step = -1
    first: tuple | None = None
    while step < total:
        sampler.set_epoch(epoch)
        train_set.epoch = epoch
        skip = step - epoch * steps_per_epoch  # resuming mid-epoch: skip the batches already seen
        for k, (images, targets) in enumerate(train_loader):
            if k < skip:
                continue
            images, targets = _to(images, device), _to(targets, device)
            losses = spec.losses(ddp_model, images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {float(loss)} at step {step}: {({k: float(v) for k, v in losses.items()})}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                entry, first = _evaluate_and_log(spec, model, val_loader, device, step, epoch, start, rank, bar)
                history.append(entry)
                last_eval_step = step
                if rank == 0:
                    _save(ckpt_path, model, optimizer, scheduler, step, epoch, history, cfg)
            if step >= total:
                break
        else:
            epoch += 1
    bar.close()
    if last_eval_step != step or first is None:
        entry, first = _evaluate_and_log(spec, model, val_loader, device, step, epoch, start, rank, None)
        history.append(entry)
    metrics = history[-1]
    if rank == 0:
        _save(ckpt_path, model, optimizer, scheduler, step, epoch, history, cfg)
        (out / "metrics.json").write_text(json.dumps({"model": cfg.model, "world_size": world, "final": metrics,
                                                      "history": history}, indent=2))
        if first:
            _draw(spec, first, out / "predictions.png", class_names, cfg.show)
        print(f"wrote {out / 'metrics.json'}, {out / 'predictions.png'} and {ckpt_path}")
    if world > 1:
        dist.barrier()
    return metrics


def _evaluate_and_log(spec, model, loader, device, step, epoch, start, rank, bar) -> tuple[dict[str, Any], tuple]:
    metrics, first = evaluate(spec, model, loader, device)
    entry = {"step": step, "epoch": epoch, "seconds": round(time.perf_counter() - start, 1), **metrics}
    if rank == 0:
        line = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())
        (bar.write if bar is not None else print)(f"eval: {line}")
    return entry, first
