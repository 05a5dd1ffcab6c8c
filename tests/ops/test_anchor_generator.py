"""Anchor generation against torchvision's AnchorGenerator: identical anchors
for several image sizes, feature sizes, anchor sizes, aspect ratios and dtypes;
the cache; the functional form; opcheck; torch.compile; bad input."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
from torchvision.models.detection.image_list import ImageList

import detops

FPN_SIZES = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
FPN_RATIOS = ((0.5, 1.0, 2.0),) * 5

# (sizes, aspect_ratios, image (H, W), batch, feature strides or explicit grid sizes)
CONFIGS = {
    "retinanet_fpn": (FPN_SIZES, FPN_RATIOS, (800, 1216), 2, (8, 16, 32, 64, 128)),
    "fpn_odd_image": (
        ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5, (513, 337), 1, (4, 8, 16, 32, 64)
    ),
    "rpn_single_level": (((128, 256, 512),), ((0.5, 1.0, 2.0),), (600, 1000), 3, (16,)),
    "odd_ratios": (((20, 45), (90,)), ((0.3, 1.7, 1.0), (0.25,)), (97, 131), 2, [(13, 17), (3, 5)]),
    "flat_sizes_form": ((16, 48), (0.5, 2.0), (64, 96), 1, [(8, 12), (4, 6)]),
    "large_shifts": (((64, 1000),), ((1.0, 0.37),), (4096, 4096), 1, (32,)),
    "non_divisible_grid": (((40,), (80,)), ((1.0, 2.0),) * 2, (333, 555), 2, [(7, 11), (3, 2)]),
    # odd strides (51, 101) and shifts above 2048: float16 rounds the shift, then the sum, as torch does
    "odd_stride_rounding": (((100, 37),), ((1.0, 0.7),), (3060, 4141), 1, [(60, 41)]),
}


def make_inputs(image_hw, batch, grids, dtype, device):
    images = ImageList(torch.zeros(batch, 3, *image_hw, dtype=dtype, device=device), [image_hw] * batch)
    if isinstance(grids, tuple):  # strides: grids as a backbone would make them
        grids = [((image_hw[0] + s - 1) // s, (image_hw[1] + s - 1) // s) for s in grids]
    features = [torch.zeros(batch, 2, h, w, dtype=dtype, device=device) for h, w in grids]
    return images, features


def assert_identical(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.dtype == b.dtype and a.device == b.device and a.shape == b.shape, (i, a.shape, b.shape)
        assert torch.equal(a, b), f"image {i}: max diff {(a.double() - b.double()).abs().max()}"


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_anchors_identical_to_torchvision(config, dtype, device):
    sizes, ratios, image_hw, batch, grids = CONFIGS[config]
    images, features = make_inputs(image_hw, batch, grids, dtype, device)
    ref = TvAnchorGenerator(sizes, ratios)(images, features)
    ours = detops.AnchorGenerator(sizes, ratios)
    assert_identical(ours(images, features), ref)
    assert_identical(ours(images, features), ref)  # from the cache
    assert_identical(detops.AnchorGenerator(sizes, ratios, cache_size=0)(images, features), ref)


def test_attributes_match_torchvision():
    ours, ref = detops.AnchorGenerator(FPN_SIZES, FPN_RATIOS), TvAnchorGenerator(FPN_SIZES, FPN_RATIOS)
    assert ours.sizes == ref.sizes and ours.aspect_ratios == ref.aspect_ratios
    assert ours.num_anchors_per_location() == ref.num_anchors_per_location()
    for a, b in zip(ours.cell_anchors, ref.cell_anchors):
        assert torch.equal(a, b)
    assert ours.state_dict().keys() == ref.state_dict().keys()


def test_grid_anchors_functional_and_method_match_torchvision(device):
    ref = TvAnchorGenerator(FPN_SIZES, FPN_RATIOS)
    ref.set_cell_anchors(torch.float32, torch.device(device))
    grid_sizes = [[25, 38], [13, 19], [7, 10], [4, 5], [2, 3]]
    # torchvision passes strides as 0-dim int64 tensors; plain ints work too.
    strides = [[torch.tensor(h), torch.tensor(w)] for h, w in [(8, 8), (16, 16), (32, 32), (64, 64), (128, 96)]]
    expected = ref.grid_anchors(grid_sizes, strides)
    for got in (
        detops.grid_anchors(ref.cell_anchors, grid_sizes, strides),
        detops.grid_anchors(ref.cell_anchors, grid_sizes, [[int(h), int(w)] for h, w in strides]),
    ):
        assert_identical(got, expected)
    ours = detops.AnchorGenerator(FPN_SIZES, FPN_RATIOS)
    ours.set_cell_anchors(torch.float32, torch.device(device))
    assert_identical(ours.grid_anchors(grid_sizes, strides), expected)


def test_grid_anchors_random_configs(device):
    """Random level counts, cell anchors (some levels without any), grids and
    strides: the kernel's segments start at many grid positions, mid-row and
    mid-cell, and cross levels."""
    import random

    rng = random.Random(0)
    for trial in range(60):
        levels = rng.randint(1, 6)
        sizes = tuple(tuple(rng.sample([8, 16, 23, 32, 45, 64, 100, 128], rng.randint(0, 3))) for _ in range(levels))
        ratios = tuple(tuple(rng.sample([0.25, 0.5, 1.0, 1.7, 2.0], rng.randint(1, 3))) for _ in range(levels))
        grid_sizes = [[rng.randint(1, 70), rng.randint(1, 70)] for _ in range(levels)]
        strides = [[torch.tensor(rng.randint(1, 40)), torch.tensor(rng.randint(1, 40))] for _ in range(levels)]
        ref = TvAnchorGenerator(sizes, ratios)
        ref.set_cell_anchors(rng.choice([torch.float32, torch.float64, torch.float16]), torch.device(device))
        expected = ref.grid_anchors(grid_sizes, strides)
        got = detops.grid_anchors(ref.cell_anchors, grid_sizes, strides)
        assert len(got) == len(expected)
        for level, (a, b) in enumerate(zip(got, expected)):
            assert a.dtype == b.dtype and torch.equal(a, b), f"trial {trial} level {level}"


def test_empty_batch_and_empty_level(device):
    sizes, ratios = ((32,), ()), ((1.0,), (1.0,))
    images, features = make_inputs((64, 64), 2, [(8, 8), (4, 4)], torch.float32, device)
    expected = TvAnchorGenerator(sizes, ratios)(images, features)
    assert_identical(detops.AnchorGenerator(sizes, ratios)(images, features), expected)
    images0, features0 = make_inputs((64, 64), 0, [(8, 8), (4, 4)], torch.float32, device)
    assert detops.AnchorGenerator(sizes, ratios)(images0, features0) == []


def test_cache_hits_misses_and_in_place_changes():
    ours = detops.AnchorGenerator(FPN_SIZES, FPN_RATIOS, cache_size=2)
    tv = TvAnchorGenerator(FPN_SIZES, FPN_RATIOS)
    inputs = {
        hw: make_inputs(hw, 2, (8, 16, 32, 64, 128), torch.float32, "cpu") for hw in [(256, 256), (320, 256), (256, 384)]
    }
    first = ours(*inputs[(256, 256)])
    again = ours(*inputs[(256, 256)])
    assert again[0].data_ptr() == first[0].data_ptr()  # a hit: no new launch
    assert first[0].data_ptr() != first[1].data_ptr()  # images never share memory
    # Changing returned anchors in place must not poison later calls.
    again[0].add_(1000.0)
    recomputed = ours(*inputs[(256, 256)])
    assert_identical(recomputed, tv(*inputs[(256, 256)]))
    # Other sizes are other entries; the least recently used one is dropped.
    for hw in [(320, 256), (256, 384), (256, 256)]:
        assert_identical(ours(*inputs[hw]), tv(*inputs[hw]))
    assert len(ours._cache) == 2
    # A new dtype is a new entry with new values.
    half = ours(*make_inputs((256, 256), 2, (8, 16, 32, 64, 128), torch.float16, "cpu"))
    assert half[0].dtype == torch.float16
    ours.clear_cache()
    assert len(ours._cache) == 0


def test_cache_under_inference_mode():
    ours = detops.AnchorGenerator(FPN_SIZES, FPN_RATIOS)
    inputs = make_inputs((128, 192), 1, (8, 16, 32, 64, 128), torch.float32, "cpu")
    with torch.inference_mode():
        a = ours(*inputs)
        b = ours(*inputs)
    assert a[0].data_ptr() == b[0].data_ptr()
    assert_identical(b, TvAnchorGenerator(FPN_SIZES, FPN_RATIOS)(*inputs))


def test_opcheck():
    cells = torch.cat(TvAnchorGenerator(((32, 64), (128,)), ((0.5, 1.0), (2.0,))).cell_anchors)
    for dtype in (torch.float32, torch.float64):
        torch.library.opcheck(torch.ops.detops.grid_anchors, (cells.to(dtype), [4, 1], [5, 7, 2, 3], [8, 8, 20, 24], 2))
    torch.library.opcheck(torch.ops.detops.grid_anchors, (cells, [4, 1], [0, 7, 2, 3], [8, 8, 20, 24], 0))


def test_torch_compile_fullgraph():
    ours = detops.AnchorGenerator(FPN_SIZES, FPN_RATIOS)

    def anchors_of(images: torch.Tensor, f0, f1, f2, f3, f4):
        image_list = ImageList(images, [(images.shape[-2], images.shape[-1])] * images.shape[0])
        return ours(image_list, [f0, f1, f2, f3, f4])

    tv = TvAnchorGenerator(FPN_SIZES, FPN_RATIOS)
    for dynamic in (False, True):
        compiled = torch.compile(anchors_of, fullgraph=True, backend="aot_eager", dynamic=dynamic)
        for hw in [(256, 320), (192, 256)]:  # a second size: a recompile, or the same dynamic graph
            images, features = make_inputs(hw, 2, (8, 16, 32, 64, 128), torch.float32, "cpu")
            assert_identical(compiled(images.tensors, *features), tv(images, features))


def test_bad_inputs():
    ours = detops.AnchorGenerator(FPN_SIZES, FPN_RATIOS)
    images, features = make_inputs((256, 256), 1, (8, 16, 32, 64, 128), torch.float32, "cpu")
    with pytest.raises(ValueError, match="number of feature maps"):
        ours(images, features[:3])
    with pytest.raises(TypeError, match="feature_maps must be float"):
        ours(images, [f.to(torch.int32) for f in features])
    with pytest.raises(ValueError, match="non-empty"):
        ours(images, [])
    with pytest.raises(ValueError, match=r"feature_maps\[1\] must have a non-empty"):
        ours(images, [features[0], features[1][..., :0], *features[2:]])
    with pytest.raises(ValueError, match="cache_size"):
        detops.AnchorGenerator(cache_size=-1)
    cells = ours.cell_anchors
    with pytest.raises(ValueError, match=r"grid_sizes\[0\] must be a pair"):
        detops.grid_anchors(cells[:1], [5], [[8, 8]])
    with pytest.raises(ValueError, match=r"strides\[0\] must be an integer"):
        detops.grid_anchors(cells[:1], [[5, 5]], [[8.5, 8]])
    with pytest.raises(ValueError, match=r"cell_anchors\[0\] must have shape"):
        detops.grid_anchors([torch.zeros(3, 5)], [[5, 5]], [[8, 8]])
    with pytest.raises(TypeError, match=r"cell_anchors\[0\] must be float16"):
        detops.grid_anchors([torch.zeros(3, 4, dtype=torch.int64)], [[5, 5]], [[8, 8]])
    with pytest.raises(ValueError, match="at most 16 levels"):
        detops.grid_anchors([cells[0]] * 17, [[1, 1]] * 17, [[8, 8]] * 17)
    op = torch.ops.detops.grid_anchors
    with pytest.raises(RuntimeError, match="num_cell_anchors sums to"):
        op(cells[0], [8], [2, 2], [8, 8], 1)
    with pytest.raises(RuntimeError, match="grid_sizes must hold"):
        op(cells[0], [9], [2], [8, 8], 1)
    with pytest.raises(RuntimeError, match="grid sizes must be >= 0"):
        op(cells[0], [9], [2, -1], [8, 8], 1)


def test_drop_in_for_torchvision_faster_rcnn():
    """Swapping detops' AnchorGenerator and BoxCoder into a torchvision detector
    leaves its detections and training losses unchanged (bit for bit on CPU)."""
    import copy

    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    ref = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=5, box_score_thresh=0.0
    ).eval()
    ours = copy.deepcopy(ref)
    tv_anchors = ref.rpn.anchor_generator
    ours.rpn.anchor_generator = detops.AnchorGenerator(tv_anchors.sizes, tv_anchors.aspect_ratios)
    ours.rpn.box_coder = detops.BoxCoder(ref.rpn.box_coder.weights, ref.rpn.box_coder.bbox_xform_clip)
    ours.roi_heads.box_coder = detops.BoxCoder(ref.roi_heads.box_coder.weights, ref.roi_heads.box_coder.bbox_xform_clip)
    images = [torch.rand(3, 200, 260), torch.rand(3, 180, 240)]
    with torch.no_grad():
        expected, got = ref(images), ours(images)
    for e, g in zip(expected, got):
        assert len(e["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(e[key], g[key]), key
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 100.0, 120.0], [50.0, 60.0, 150.0, 170.0]]),
                "labels": torch.tensor([1, 3])}] * 2
    ref.train()
    ours.train()
    torch.manual_seed(1)  # the samplers draw random anchors and proposals
    expected_losses = ref(images, targets)
    torch.manual_seed(1)
    losses = ours(images, targets)
    for key, value in expected_losses.items():
        assert torch.equal(losses[key], value), key
