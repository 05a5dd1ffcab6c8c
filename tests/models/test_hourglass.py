"""Stacked hourglass: shapes, intermediate supervision, heatmap decoding."""

from __future__ import annotations

import torch

from detops.models.hourglass import StackedHourglass, heatmaps_to_keypoints, hourglass_loss, keypoint_heatmaps
from tests.models._train import losses_over_steps


def test_shapes_and_loss_falls():
    torch.manual_seed(0)
    model = StackedHourglass(num_keypoints=3, num_stacks=2, channels=8, depth=2)
    x = torch.randn(2, 3, 32, 32)
    outs = model(x)
    assert len(outs) == 2 and all(o.shape == (2, 3, 8, 8) for o in outs)
    kp = torch.tensor([[[1.0, 2.0], [5.0, 5.0], [7.0, 0.0]], [[3.0, 3.0], [0.0, 6.0], [4.0, 4.0]]])
    visible = torch.tensor([[True, True, False], [True, True, True]])
    target = keypoint_heatmaps(kp, visible, (8, 8))
    assert target.shape == (2, 3, 8, 8) and target[0, 2].abs().sum() == 0 and target[0, 0, 2, 1] == 1
    # One loss term per stack: the sum equals the per-stack losses added.
    per_stack = [hourglass_loss([o], target, visible) for o in outs]
    torch.testing.assert_close(hourglass_loss(outs, target, visible), sum(per_stack))
    history = losses_over_steps(model, lambda: hourglass_loss(model(x), target, visible), steps=3, lr=1e-2)
    assert history[-1] < history[0]


def test_decode_keypoints():
    kp = torch.tensor([[[2.0, 5.0], [6.0, 1.0]]])
    heat = keypoint_heatmaps(kp, torch.ones(1, 2, dtype=torch.bool), (8, 10), sigma=1.5)
    xy, scores = heatmaps_to_keypoints(heat, stride=4)
    torch.testing.assert_close(xy, (kp + 0.5) * 4)  # symmetric peaks: no quarter-pixel shift
    torch.testing.assert_close(scores, torch.ones(1, 2))
    # A peak between two pixels moves a quarter pixel towards the higher neighbour.
    heat = keypoint_heatmaps(torch.tensor([[[3.3, 4.0]]]), torch.ones(1, 1, dtype=torch.bool), (8, 10))
    xy, _ = heatmaps_to_keypoints(heat, stride=1)
    torch.testing.assert_close(xy, torch.tensor([[[3.25 + 0.5, 4.5]]]))
