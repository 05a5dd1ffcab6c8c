"""Distributed evaluation equals single-process evaluation exactly: two gloo
processes against one process seeing every image. COCO mAP is fed each rank's
DistributedSampler share (with its padding repeat, which image ids remove);
the segmentation metrics, which sum pixel counts, an InferenceSampler share."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detops.data import InferenceSampler
from detops.eval import MeanAveragePrecision, SegmentationMetrics
from tests.helpers import free_port

NUM_IMAGES = 11  # odd, so DistributedSampler pads rank 1 with a repeat


def _image(i: int) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    n_gt, n_dt = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(0, 9, (1,), generator=g))
    xy = torch.rand(n_gt, 2, generator=g) * 80
    gt_boxes = torch.cat([xy, xy + 8 + torch.rand(n_gt, 2, generator=g) * 40], 1)
    pick = torch.randint(0, n_gt, (n_dt,), generator=g)
    dt_boxes = gt_boxes[pick] + torch.randn(n_dt, 4, generator=g) * 4
    target = {"boxes": gt_boxes, "labels": torch.randint(0, 3, (n_gt,), generator=g), "image_id": torch.tensor(i)}
    pred = {"boxes": dt_boxes, "labels": target["labels"][pick], "scores": torch.rand(n_dt, generator=g)}
    seg_target = torch.randint(0, 4, (16, 16), generator=g)
    seg_pred = torch.where(torch.rand(16, 16, generator=g) < 0.7, seg_target, torch.randint(0, 4, (16, 16), generator=g))
    return pred, target, seg_pred, seg_target


def _evaluate(map_indices: list[int], seg_indices: list[int]) -> tuple[dict, dict]:
    metric, seg = MeanAveragePrecision(), SegmentationMetrics(4)
    for i in map_indices:
        pred, target, _, _ = _image(i)
        metric.update([pred], [target])
    for i in seg_indices:
        _, _, seg_pred, seg_target = _image(i)
        seg.update(seg_pred, seg_target)
    return metric.compute(), seg.compute()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sampler = torch.utils.data.DistributedSampler(range(NUM_IMAGES), num_replicas=world, rank=rank, shuffle=False)
        assert len(sampler) * world > NUM_IMAGES  # padded
        shard = list(InferenceSampler(NUM_IMAGES, rank, world))
        torch.save(_evaluate(list(sampler), shard), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    everything = list(range(NUM_IMAGES))
    single_map, single_seg = _evaluate(everything, everything)
    for rank in range(2):
        got_map, got_seg = torch.load(tmp_path / f"rank{rank}.pt")
        assert got_map.keys() == single_map.keys()
        for key, value in single_map.items():
            assert torch.equal(got_map[key], value), key
        assert torch.equal(got_seg["confusion_matrix"], single_seg["confusion_matrix"])
        assert torch.equal(got_seg["miou"], single_seg["miou"])
    # the rank's own share alone would differ: the sync is what makes them equal
    own_map, _ = _evaluate(list(range(0, NUM_IMAGES, 2)), [0])
    assert not all(torch.equal(own_map[k], single_map[k]) for k in ("map", "map_50", "mar_100"))


def test_inference_sampler_covers_every_index_once():
    for size in (0, 1, 7, 12):
        for world in (1, 2, 3, 5):
            shares = [list(InferenceSampler(size, r, world)) for r in range(world)]
            assert sum(shares, []) == list(range(size))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
