"""Stacked hourglass networks for keypoints (Newell, Yang and Deng, 2016):
recursive hourglass modules, stacked with intermediate supervision, Gaussian
heatmap targets and heatmap-to-keypoint decoding. Keypoints are ``(x, y)`` in
input pixels unless said otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Residual", "Hourglass", "StackedHourglass", "keypoint_heatmaps", "hourglass_loss", "heatmaps_to_keypoints"]


class Residual(nn.Module):
    """The hourglass paper's bottleneck residual block ``[N, cin, H, W] -> [N, cout, H, W]``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(cout // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, mid, 1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.skip(x)


class Hourglass(nn.Module):
    """One hourglass of ``depth`` recursive levels: ``[N, C, H, W] -> [N, C, H, W]`` (H and W
    divisible by ``2 ** depth``). Each level keeps a full-resolution branch, pools, recurses,
    and adds the nearest-upsampled result to the branch."""

    def __init__(self, depth: int, channels: int) -> None:
        super().__init__()
        self.up1 = Residual(channels, channels)
        self.low1 = Residual(channels, channels)
        self.low2 = Hourglass(depth - 1, channels) if depth > 1 else Residual(channels, channels)
        self.low3 = Residual(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2))))
        return self.up1(x) + F.interpolate(low, size=x.shape[-2:], mode="nearest")


class StackedHourglass(nn.Module):
    """``forward(images [N, 3, H, W]) -> list of num_stacks heatmaps [N, K, H / 4, W / 4]``.

    A stride-4 stem, then ``num_stacks`` hourglasses; each predicts heatmaps (supervised
    by :func:`hourglass_loss`) that are mapped back and added, with its features, to the
    next stack's input. The last stack's heatmaps are the prediction.
    """

    def __init__(self, num_keypoints: int, num_stacks: int = 2, channels: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            Residual(64, 128), nn.MaxPool2d(2), Residual(128, 128), Residual(128, channels),
        )
        self.hourglasses = nn.ModuleList([Hourglass(depth, channels) for _ in range(num_stacks)])
        self.features = nn.ModuleList([
            nn.Sequential(Residual(channels, channels), nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels),
                          nn.ReLU(inplace=True)) for _ in range(num_stacks)])
        self.heads = nn.ModuleList([nn.Conv2d(channels, num_keypoints, 1) for _ in range(num_stacks)])
        self.merge_features = nn.ModuleList([nn.Conv2d(channels, channels, 1) for _ in range(num_stacks - 1)])
        self.merge_heatmaps = nn.ModuleList([nn.Conv2d(num_keypoints, channels, 1) for _ in range(num_stacks - 1)])

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)
        outputs = []
        for i, (hg, feat, head) in enumerate(zip(self.hourglasses, self.features, self.heads)):
            f = feat(hg(x))
            heat = head(f)
            outputs.append(heat)
            if i < len(self.heads) - 1:
                x = x + self.merge_features[i](f) + self.merge_heatmaps[i](heat)
        return outputs


def keypoint_heatmaps(keypoints: Tensor, visible: Tensor, size: tuple[int, int], sigma: float = 1.0) -> Tensor:
    """Gaussian heatmap targets.

    Args:
        keypoints: ``[N, K, 2]`` ``(x, y)`` in heatmap pixels.
        visible: ``[N, K]`` bool; invisible keypoints get an all-zero map.
        size: ``(h, w)`` of the heatmaps.

    Returns:
        ``[N, K, h, w]`` with peak 1 at each visible keypoint.
    """
    h, w = size
    ys = torch.arange(h, dtype=keypoints.dtype, device=keypoints.device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=keypoints.dtype, device=keypoints.device).view(1, 1, 1, w)
    d2 = (xs - keypoints[..., 0, None, None]) ** 2 + (ys - keypoints[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma * sigma)) * visible[..., None, None].to(keypoints.dtype)


def hourglass_loss(heatmaps: list[Tensor], target: Tensor, visible: Tensor | None = None) -> Tensor:
    """Intermediate supervision: the sum over stacks of the mean squared error of each stack's
    heatmaps ``[N, K, h, w]`` against ``target`` (same shape); ``visible [N, K]`` masks
    keypoints out. Returns a scalar."""
    w = 1.0 if visible is None else visible[..., None, None].to(target.dtype)
    return sum(((h - target) ** 2 * w).mean() for h in heatmaps)


def heatmaps_to_keypoints(heatmaps: Tensor, stride: float = 4.0) -> tuple[Tensor, Tensor]:
    """Decode heatmaps ``[N, K, h, w]`` into keypoints.

    Each keypoint is its map's argmax, moved a quarter pixel towards the higher
    neighbour on each axis (the hourglass paper's sub-pixel step), then scaled by
    ``stride`` to input pixels (pixel centres at ``(i + 0.5) * stride``).

    Returns:
        ``(keypoints [N, K, 2] (x, y) in input pixels, scores [N, K] the peak values)``.
    """
    N, K, h, w = heatmaps.shape
    flat = heatmaps.reshape(N, K, -1)
    scores, idx = flat.max(-1)
    y, x = (idx // w), (idx % w)
    xy = torch.stack([x, y], -1).to(heatmaps.dtype)
    pad = F.pad(heatmaps, (1, 1, 1, 1), mode="replicate").reshape(N, K, -1)
    wp = w + 2

    def at(dy: int, dx: int) -> Tensor:
        return pad.gather(-1, ((y + 1 + dy) * wp + (x + 1 + dx)).unsqueeze(-1)).squeeze(-1)

    xy[..., 0] += 0.25 * torch.sign(at(0, 1) - at(0, -1))
    xy[..., 1] += 0.25 * torch.sign(at(1, 0) - at(-1, 0))
    return (xy + 0.5) * stride, scores
