"""FCN (convolutionized classifier, FCN-32s/16s/8s, torchvision's fcn_resnet50) and U-Net."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import detops

from detops.models.segmentation import (
    SkipFCN, UNet, convolutionize, convolutionize_linear, fcn_resnet50, segmentation_loss, segmentation_postprocess,
)
from tests.helpers import assert_close
from tests.models._train import losses_over_steps


def _tiny_vgg(num_classes=10):
    """A VGG-shaped classifier: five conv + max-pool stages (stride 32), a 7x7 map at
    224x224, flattened into Linear-ReLU-Dropout-Linear (as torchvision's VGG)."""
    torch.manual_seed(0)
    layers, c = [], 3
    for out in (8, 8, 16, 16, 16):
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c = out
    features = nn.Sequential(*layers)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(inplace=True), nn.Dropout(),
                               nn.Linear(32, num_classes))
    return features, classifier


def test_convolutionized_classifier_equals_classifier():
    features, classifier = _tiny_vgg()
    conv_head = convolutionize(classifier, 16, 7).eval()
    classifier.eval()
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, 288, 320, generator=g)
    crop = image[..., :224, :224]
    with torch.no_grad():
        ref = classifier(features(crop))
        dense = conv_head(features(crop))
        assert dense.shape == (1, 10, 1, 1)
        assert_close(dense.flatten(1), ref, rtol=1e-5, atol=1e-5)
        # On a larger image every position (i, j) is the classifier on the 7x7 window of
        # the feature map there (the 224x224 image window at (32 i, 32 j), up to the
        # features' zero padding at that window's border).
        fmap = features(image)
        big = conv_head(fmap)
        assert big.shape == (1, 10, 3, 4)
        for i in range(3):
            for j in range(4):
                assert_close(big[..., i, j], classifier(fmap[..., i:i + 7, j:j + 7]), rtol=1e-5, atol=1e-5)


def test_convolutionize_linear_and_bad_layers():
    lin = nn.Linear(12, 5)
    conv = convolutionize_linear(lin, 3, (2, 2))
    x = torch.randn(4, 3, 2, 2)
    assert_close(conv(x).flatten(1), lin(x.flatten(1)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="in_features"):
        convolutionize_linear(lin, 4, 2)
    with pytest.raises(TypeError, match="BatchNorm1d"):
        convolutionize(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), 4, 1)


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_skip_fcn_shapes_loss_and_masks(variant):
    features, classifier = _tiny_vgg()
    head = convolutionize(classifier[:-1], 16, 7)  # fc6, fc7 as convolutions (score_fr replaces fc8)
    # pool3 and pool4 are the outputs of layers 8 and 11 (conv, relu, pool per stage).
    model = SkipFCN(features, head, 32, (16, 16), num_classes=3, variant=variant, taps=(8, 11), head_padding=3)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 64, 80, generator=g)
    target = torch.randint(0, 3, (2, 64, 80), generator=g)
    out = model(x)
    assert out.shape == (2, 3, 64, 80)
    masks = segmentation_postprocess(out)
    assert masks.shape == (2, 64, 80) and masks.dtype == torch.int64 and masks.min() >= 0 and masks.max() < 3
    history = losses_over_steps(model, lambda: segmentation_loss(model(x), target), steps=5, lr=1e-3)
    assert history[-1] < history[0]


def test_skip_fcn_upsampling_is_bilinear_and_fused():
    # With zero skip scores (FCN's init) the 8s output is the bilinear upsampling of score_fr.
    features, classifier = _tiny_vgg()
    model = SkipFCN(features, convolutionize(classifier[:-1], 16, 7), 32, (16, 16), num_classes=2, variant="8s",
                    taps=(8, 11), head_padding=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        score = model.score_fr(model.head(nn.functional.pad(model.features(x), [3] * 4)))
        up = score
        for f in (2, 2, 8):
            k = 2 * f - f % 2
            w = torch.zeros(2, 1, k, k) + torchvision_bilinear(k)
            up = nn.functional.conv_transpose2d(up, w, stride=f, padding=f // 2, groups=2)
    assert_close(out, up, rtol=1e-5, atol=1e-5)


def torchvision_bilinear(k):
    f = (k + 1) // 2
    c = f - 1 if k % 2 == 1 else f - 0.5
    og = torch.arange(k, dtype=torch.float32)
    filt = 1 - (og - c).abs() / f
    return torch.outer(filt, filt)


def test_fcn_resnet50_equals_torchvision():
    aux_loss = True  # covers both heads (two ResNet-50s per case: one case keeps the suite fast)
    torch.manual_seed(0)
    ref = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=aux_loss,
                                                       num_classes=4).eval()
    ours = fcn_resnet50(weights=None, weights_backbone=None, aux_loss=aux_loss, num_classes=4).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 40, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert list(a) == list(b)
    for key in b:
        assert a[key].shape == (1, 4, 40, 48)
        assert_close(a[key], b[key], rtol=0, atol=0)


def test_unet_shapes_loss_and_masks():
    torch.manual_seed(0)
    model = UNet(3, num_classes=3, base_channels=4, depth=2)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 18, 22, generator=g)  # not a multiple of 4: skips are padded to match
    target = torch.randint(0, 3, (2, 18, 22), generator=g)
    assert model(x).shape == (2, 3, 18, 22)
    assert isinstance(model.up[0], detops.nn.ConvTranspose2d)
    history = losses_over_steps(model, lambda: segmentation_loss(model(x), target), steps=4, lr=1e-2)
    assert history[-1] < history[0]
    masks = segmentation_postprocess(model(x))
    assert masks.shape == (2, 18, 22) and masks.min() >= 0 and masks.max() < 3
