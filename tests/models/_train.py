"""A few optimiser steps on one fixed batch, for the models' "the loss falls" tests."""

from __future__ import annotations

from typing import Callable

import torch


def losses_over_steps(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], steps: int = 8,
                      lr: float = 1e-3) -> list[float]:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return history
