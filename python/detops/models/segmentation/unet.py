"""U-Net (Ronneberger et al., 2015): an encoder of conv blocks and poolings, a
decoder of transposed-convolution upsamplings (``detops.nn.ConvTranspose2d``),
each concatenated with the encoder stage of the same size (the skip)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn import ConvTranspose2d

__all__ = ["UNet", "segmentation_loss", "segmentation_postprocess"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """``forward(images [N, in_channels, H, W]) -> logits [N, num_classes, H, W]``.

    Args:
        in_channels: input channels.
        num_classes: K.
        base_channels: channels of the first stage; each deeper stage doubles them.
        depth: number of poolings (the bottleneck is at stride ``2 ** depth``).

    Sizes that are not multiples of ``2 ** depth`` work: an upsampled map is padded
    to its skip's size before the concatenation.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base_channels: int = 64, depth: int = 4) -> None:
        super().__init__()
        chans = [base_channels * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, chans[0])] + [_block(chans[i], chans[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth))])
        self.dec = nn.ModuleList([_block(2 * chans[i], chans[i]) for i in reversed(range(depth))])
        self.classifier = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        skips = []
        x = images
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec):
            skip = skips.pop()
            x = up(x)
            dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            if dy or dx:
                x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            x = dec(torch.cat([skip, x], 1))
        return self.classifier(x)


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Pixel-wise cross-entropy: ``logits [N, K, H, W]``, ``target [N, H, W]`` int64 classes
    (``ignore_index`` pixels skipped); returns a scalar."""
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def segmentation_postprocess(logits: Tensor) -> Tensor:
    """``logits [N, K, H, W] -> masks [N, H, W]`` int64: the best class per pixel."""
    return logits.argmax(1)
