"""BatchNorm over the global batch under DDP, on CPU as well as on GPU.

``torch.nn.SyncBatchNorm`` computes the statistics of all ranks' inputs
together, but only for GPU tensors: on CPU (gloo) it raises. Without it each
rank's BatchNorm normalises with the statistics of its own share of the batch,
so N processes train a different model than one process with the same global
batch, and DistributedDataParallel refuses a CPU model holding one.
:class:`SyncBatchNorm` is the same computation for CPU tensors, from two
differentiable all-reduces."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce

from ..eval.distributed import is_distributed

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``torch.nn.SyncBatchNorm`` for CPU tensors (gloo).

    In training under an initialised process group of more than one rank, an
    input ``[N, C, *]`` is normalised with the mean and (biased) variance of
    every rank's input, and the running statistics are updated with them, as
    one process would with the concatenated batch. The all-reduces are
    differentiable (their backward sums the gradients over ranks), so the
    gradients are the global batch's too. Otherwise it is ``BatchNorm``."""

    process_group: dist.ProcessGroup | None = None

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects an input [N, C, *], got {input.dim()} dimensions")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        group = self.process_group or dist.group.WORLD
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, c] + [1] * (input.dim() - 2)
        count = input.new_full((1,), input.numel() // max(c, 1))
        # two passes (mean, then squared deviations) as precise as BatchNorm's own variance
        sums = all_reduce(torch.cat([input.sum(dims), count]), group=group)
        n = sums[c]
        mean = sums[:c] / n
        centered = input - mean.view(shape)
        var = all_reduce((centered * centered).sum(dims), group=group) / n
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * (n / (n - 1).clamp(min=1)), momentum)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Every BatchNorm layer of ``module`` as a ``torch.nn.SyncBatchNorm`` on a
    GPU ``device``, as a :class:`SyncBatchNorm` on CPU (same parameters and
    buffers: torch's conversion, then the CPU class)."""
    module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if torch.device(device).type != "cpu":
        return module
    for m in module.modules():
        if type(m) is nn.SyncBatchNorm:
            m.__class__ = SyncBatchNorm
    return module
