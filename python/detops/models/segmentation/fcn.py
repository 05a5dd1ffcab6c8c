"""Fully convolutional networks (Long, Shelhamer and Darrell, 2015).

* :func:`convolutionize` / :func:`convolutionize_linear`: a classifier's Linear
  layers as convolutions with the same weights, so that the classifier's output
  is reproduced at every position of a larger image.
* :class:`SkipFCN`: FCN-32s, -16s and -8s: class scores from the convolutionized
  head, upsampled by transposed convolutions initialised bilinear and fused with
  scores of earlier pooling stages (crop and add, :func:`detops.upsample_add`).
* :func:`fcn_resnet50`: torchvision's model (same signature, modules and
  state_dict; same outputs).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.fcn import FCNHead

from ... import ops
from ...nn import BilinearUpsample

__all__ = ["convolutionize_linear", "convolutionize", "SkipFCN", "FCN", "fcn_resnet50"]


def convolutionize_linear(linear: nn.Linear, in_channels: int, kernel_size: int | tuple[int, int] = 1) -> nn.Conv2d:
    """``nn.Linear`` on a flattened ``[C, kh, kw]`` map as an ``nn.Conv2d(C, out, (kh, kw))`` with the
    same weights (reshaped; torch flattens channel-major, as the weight's view expects)."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if linear.in_features != in_channels * kh * kw:
        raise ValueError(
            f"linear.in_features ({linear.in_features}) must equal in_channels * kh * kw "
            f"({in_channels} * {kh} * {kw})"
        )
    conv = nn.Conv2d(in_channels, linear.out_features, (kh, kw), bias=linear.bias is not None)
    conv = conv.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.view(linear.out_features, in_channels, kh, kw))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def convolutionize(classifier: nn.Module, in_channels: int, kernel_size: int | tuple[int, int]) -> nn.Sequential:
    """A classifier head ``[N, C * kh * kw] -> [N, K]`` (a Sequential of Linear, activation
    and Dropout layers, optionally starting with ``nn.Flatten``) as a fully convolutional
    head ``[N, C, H, W] -> [N, K, H - kh + 1, W - kw + 1]``: the first Linear becomes a
    ``(kh, kw)`` convolution, later ones 1x1 convolutions, other layers are kept.

    On a ``[N, C, kh, kw]`` map the result equals the classifier's output; on a larger
    map each position is the classifier applied to the window there.
    """
    layers: list[nn.Module] = []
    c, k = in_channels, kernel_size
    for layer in (classifier if isinstance(classifier, nn.Sequential) else [classifier]):
        if isinstance(layer, nn.Flatten):
            continue
        if isinstance(layer, nn.Linear):
            layers.append(convolutionize_linear(layer, c, k))
            c, k = layer.out_features, 1
        elif isinstance(layer, (nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity)):
            layers.append(layer)
        else:
            raise TypeError(f"convolutionize cannot convert a {type(layer).__name__} layer")
    return nn.Sequential(*layers)


class SkipFCN(nn.Module):
    """FCN-32s / 16s / 8s over a stride-32 feature extractor.

    Args:
        features: an ``nn.Sequential`` mapping ``[N, 3, H, W]`` to ``[N, C5, H / 32, W / 32]``
            (e.g. VGG's ``features``), with stride-8 and stride-16 outputs after layers
            ``taps = (pool3_index, pool4_index)``.
        head: the convolutionized classifier ``[N, C5, h, w] -> [N, Ch, h', w']`` (padded so
            that ``h' = h``, e.g. by ``head_padding``), or any module with that shape rule.
        head_channels: Ch.
        skip_channels: ``(C3, C4)``, the channels of the pool3 and pool4 outputs.
        num_classes: K.
        variant: ``"32s"``, ``"16s"`` or ``"8s"``.
        head_padding: zero padding added before ``head`` (``kh // 2`` keeps the grid).

    ``forward(images [N, 3, H, W]) -> [N, K, H, W]`` class scores. The 2x upsamplings
    are learnable transposed convolutions initialised bilinear; the final one is a fixed
    bilinear filter (FCN's ``lr_mult: 0``); each skip is cropped to the coarser map's
    upsampled extent and added in the same kernel (:func:`detops.upsample_add`).
    """

    def __init__(self, features: nn.Sequential, head: nn.Module, head_channels: int, skip_channels: Sequence[int],
                 num_classes: int, variant: str = "8s", taps: Sequence[int] = (16, 23), head_padding: int = 0) -> None:
        super().__init__()
        if variant not in ("32s", "16s", "8s"):
            raise ValueError(f"variant must be '32s', '16s' or '8s', got {variant!r}")
        self.variant, self.taps, self.head_padding = variant, tuple(taps), head_padding
        self.features, self.head = features, head
        self.score_fr = nn.Conv2d(head_channels, num_classes, 1)
        final = {"32s": 32, "16s": 16, "8s": 8}[variant]
        self.upscore = BilinearUpsample(num_classes, final, learnable=False)
        if variant in ("16s", "8s"):
            self.score_pool4 = nn.Conv2d(skip_channels[1], num_classes, 1)
            self.upscore2 = BilinearUpsample(num_classes, 2, learnable=True)
            nn.init.zeros_(self.score_pool4.weight)  # FCN's zero-initialised skip scores
            nn.init.zeros_(self.score_pool4.bias)
        if variant == "8s":
            self.score_pool3 = nn.Conv2d(skip_channels[0], num_classes, 1)
            self.upscore_pool4 = BilinearUpsample(num_classes, 2, learnable=True)
            nn.init.zeros_(self.score_pool3.weight)
            nn.init.zeros_(self.score_pool3.bias)

    @staticmethod
    def _up(up: BilinearUpsample, x: Tensor, skip: Tensor | None, size: Sequence[int]) -> Tensor:
        # up's padding is the crop that makes the output exactly factor x the input;
        # output_size then crops (or bias-fills) to the finer map's extent.
        return ops.upsample_add(x, skip, up.weight.to(x.dtype), None, up.factor, up.padding,
                                groups=up.channels if up.depthwise else 1, output_size=list(size))

    def forward(self, images: Tensor) -> Tensor:
        x, pools = images, []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                pools.append(x)
        if self.head_padding:
            x = F.pad(x, [self.head_padding] * 4)
        score = self.score_fr(self.head(x))
        if self.variant in ("16s", "8s"):
            p4 = self.score_pool4(pools[1])
            score = self._up(self.upscore2, score, p4, p4.shape[-2:])
        if self.variant == "8s":
            p3 = self.score_pool3(pools[0])
            score = self._up(self.upscore_pool4, score, p3, p3.shape[-2:])
        return self._up(self.upscore, score, None, images.shape[-2:])


class FCN(nn.Module):
    """torchvision's ``FCN`` (``backbone``, ``classifier``, ``aux_classifier``): same modules
    and state_dict names, same forward.

    ``forward(x [N, 3, H, W]) -> OrderedDict(out=[N, K, H, W], aux=[N, K, H, W] if aux)``.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone, self.classifier, self.aux_classifier = backbone, classifier, aux_classifier

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        result = OrderedDict()
        # Bilinear resize with align_corners=False, as torchvision (a transposed
        # convolution differs at the borders, where interpolate replicates the edge).
        result["out"] = F.interpolate(self.classifier(features["out"]), size=size, mode="bilinear",
                                      align_corners=False)
        if self.aux_classifier is not None:
            result["aux"] = F.interpolate(self.aux_classifier(features["aux"]), size=size, mode="bilinear",
                                          align_corners=False)
        return result


def fcn_resnet50(*, weights: Any = None, progress: bool = True, num_classes: int | None = None,
                 aux_loss: bool | None = None, weights_backbone: Any = None, **kwargs: Any) -> FCN:
    """FCN on a dilated ResNet-50 (output stride 8), as ``torchvision.models.segmentation.fcn_resnet50``:
    same keyword-only signature, modules and state_dict, so torchvision's checkpoints load.

    Args:
        weights: ``FCN_ResNet50_Weights`` (or its name) or None.
        progress: show download progress.
        num_classes: K (default 21).
        aux_loss: add the ``aux_classifier`` on ``layer3``.
        weights_backbone: ``ResNet50_Weights`` for the backbone, or None.

    Returns:
        :class:`FCN`; ``model(x [N, 3, H, W])["out"]`` is ``[N, K, H, W]``.
    """
    from torchvision.models import ResNet50_Weights, resnet50
    from torchvision.models._utils import _ovewrite_value_param
    from torchvision.models.segmentation import FCN_ResNet50_Weights

    weights = FCN_ResNet50_Weights.verify(weights)
    weights_backbone = ResNet50_Weights.verify(weights_backbone)
    if weights is not None:
        weights_backbone = None
        num_classes = _ovewrite_value_param("num_classes", num_classes, len(weights.meta["categories"]))
        aux_loss = _ovewrite_value_param("aux_loss", aux_loss, True)
    elif num_classes is None:
        num_classes = 21
    backbone = resnet50(weights=weights_backbone, replace_stride_with_dilation=[False, True, True])
    return_layers = {"layer4": "out"}
    if aux_loss:
        return_layers["layer3"] = "aux"
    model = FCN(IntermediateLayerGetter(backbone, return_layers=return_layers), FCNHead(2048, num_classes),
                FCNHead(1024, num_classes) if aux_loss else None)
    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True))
    return model


