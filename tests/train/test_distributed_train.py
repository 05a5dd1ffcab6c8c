"""Two gloo processes train what one process trains: BatchNorm statistics of
the global batch on CPU (detops.train.SyncBatchNorm) and the one-process
batches split over the ranks, flipped alike."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from detops.train import SyncBatchNorm, TrainConfig, convert_sync_batchnorm, train
from tests.helpers import assert_close, free_port

BATCH = 6


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(BATCH, 3, 5, 4, generator=g) * 2 + 1, torch.randn(BATCH, 3, 5, 4, generator=g)


def _batchnorm() -> nn.Module:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


def _sync_bn_step(rank: int, world: int) -> dict:
    bn = convert_sync_batchnorm(nn.Sequential(_batchnorm()))[0]
    assert type(bn) is SyncBatchNorm
    x, w = _data()
    share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    x = x[share].clone().requires_grad_()
    y = bn(x)
    (y * w[share]).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "weight_grad": bn.weight.grad, "bias_grad": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var}


def _config(out: str, sync_bn: bool = True) -> TrainConfig:
    return TrainConfig(model="unet", out=out, max_steps=2, image_size=16, train_images=8, val_images=2,
                       batch_size=4, progress=False, sync_bn=sync_bn, extra={"base_channels": 4, "depth": 2})


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    # one process group for everything (train() joins an initialised one): spawning is the slow part
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(_sync_bn_step(rank, world), os.path.join(out_dir, f"bn-rank{rank}.pt"))
        for sync_bn in (True, False):
            train(_config(os.path.join(out_dir, f"two-{sync_bn}"), sync_bn))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_processes")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


def test_sync_batchnorm_on_cpu_equals_batchnorm_of_the_whole_batch(two_processes):
    ranks = [torch.load(two_processes / f"bn-rank{r}.pt") for r in range(2)]
    bn = _batchnorm()
    x, w = _data()
    x.requires_grad_()
    y = bn(x)
    (y * w).sum().backward()
    assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), rtol=1e-5, atol=1e-5)
    assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad, rtol=1e-4, atol=1e-5)
    # each rank's parameter gradient is its share's; DDP's all-reduce adds them
    assert_close(ranks[0]["weight_grad"] + ranks[1]["weight_grad"], bn.weight.grad, rtol=1e-4, atol=1e-5)
    assert_close(ranks[0]["bias_grad"] + ranks[1]["bias_grad"], bn.bias.grad, rtol=1e-4, atol=1e-5)
    for r in ranks:
        assert_close(r["running_mean"], bn.running_mean, rtol=1e-5, atol=1e-6)
        assert_close(r["running_var"], bn.running_var, rtol=1e-5, atol=1e-6)


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_two_processes_train_the_one_process_model(two_processes, tmp_path):
    train(_config(str(tmp_path / "one")))
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["model"]
    two = {s: torch.load(two_processes / f"two-{s}" / "checkpoint.pt", weights_only=False)["model"] for s in (True, False)}
    assert two[True].keys() == one.keys()
    synced, per_rank = _max_difference(two[True], one), _max_difference(two[False], one)
    assert synced < 1e-4, synced
    # the check has teeth: per-rank BatchNorm statistics train another model
    assert per_rank > 100 * synced, (per_rank, synced)
