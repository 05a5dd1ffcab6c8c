"""Backbone helpers shared by the models in this package."""

from __future__ import annotations


import torchvision
from torch import nn

__all__ = ["classifier_backbone", "tiny_backbone"]


def classifier_backbone(name: str, **kwargs) -> tuple[nn.Module, int]:
    """Any torchvision classification model as a feature extractor.

    Builds ``torchvision.models.get_model(name, **kwargs)`` and replaces its last
    ``nn.Linear`` (``fc``, ``classifier[-1]``, ``heads.head``, ...) with ``nn.Identity``.

    Returns:
        ``(backbone, num_features)``: the backbone maps ``[N, 3, H, W]`` images to
        ``[N, num_features]``.
    """
    model = torchvision.models.get_model(name, **kwargs)
    last = None
    for full_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (full_name, module)
    if last is None:
        raise ValueError(f"torchvision model {name!r} has no nn.Linear classifier to replace")
    full_name, linear = last
    parent_name, _, attr = full_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Identity())
    return model, linear.in_features


def tiny_backbone(in_channels: int = 3, channels: int = 32, num_downsamples: int = 3) -> nn.Sequential:
    """A small convolutional backbone ``[N, in_channels, H, W] -> [N, channels, H / 2^d, W / 2^d]``
    (``d = num_downsamples``; conv-BN-ReLU stages, each halving the size); for tests and demos."""
    layers: list[nn.Module] = []
    c = in_channels
    for i in range(num_downsamples):
        out = channels if i == num_downsamples - 1 else max(8, channels // 2 ** (num_downsamples - 1 - i))
        layers += [nn.Conv2d(c, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
    seq = nn.Sequential(*layers)
    seq.out_channels = channels  # type: ignore[attr-defined]
    return seq


