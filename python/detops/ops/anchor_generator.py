"""Anchor generation for dense heads and RPNs, with the results of torchvision's
``AnchorGenerator`` (``torchvision.models.detection.anchor_utils``). Anchors are
``(x1, y1, x2, y2)``.

Operator (``torch.ops.detops.*``):

* ``grid_anchors(cell_anchors [sum_l A_l, 4], num_cell_anchors [L], grid_sizes [2L],
  strides [2L], num_images) -> [num_images, sum_l H_l * W_l * A_l, 4]``: every
  level of every image in one kernel launch (``grid_sizes`` is ``(H_0, W_0, H_1,
  W_1, ...)``, ``strides`` is ``(stride_h_0, stride_w_0, ...)``).

CPU: C++; GPU: CUDA C++ (``csrc/anchor_generator``). Anchors carry no gradient.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Sequence, Union

import torch
from torch import Tensor, nn

from ._common import KERNEL_FLOAT_DTYPES, DtypeError, ShapeError, check_tensor, is_kernel_float

try:  # the type torchvision's detectors pass (TorchScript needs the very class)
    from torchvision.models.detection.image_list import ImageList
except ImportError:  # torchvision is optional: the same two fields

    class ImageList:  # type: ignore[no-redef]
        def __init__(self, tensors: Tensor, image_sizes: List[tuple[int, int]]) -> None:
            self.tensors = tensors
            self.image_sizes = image_sizes

__all__ = ["AnchorGenerator", "grid_anchors"]

_ops = torch.ops.detops

MAX_LEVELS = 16  # the level table of the kernel (csrc/anchor_generator) is this big


@torch.library.register_fake("detops::grid_anchors")
def _grid_anchors_fake(cell_anchors, num_cell_anchors, grid_sizes, strides, num_images):
    total = 0
    for level, count in enumerate(num_cell_anchors):
        total = total + grid_sizes[2 * level] * grid_sizes[2 * level + 1] * count
    return cell_anchors.new_empty((num_images, total, 4))


# ------------------------------------------------------------------ checks


def _check_cell_anchors(cell_anchors: Sequence[Tensor]) -> None:
    if not isinstance(cell_anchors, (list, tuple)) or len(cell_anchors) == 0:
        raise ValueError("cell_anchors must be a non-empty list of [A_l, 4] tensors, one per level")
    if len(cell_anchors) > MAX_LEVELS:
        raise ValueError(f"at most {MAX_LEVELS} levels are supported, got {len(cell_anchors)}")
    first = check_tensor(cell_anchors[0], "cell_anchors[0]")
    for level, cells in enumerate(cell_anchors):
        check_tensor(cells, f"cell_anchors[{level}]")
        if cells.dim() != 2 or cells.shape[1] != 4:
            raise ValueError(f"cell_anchors[{level}] must have shape [A, 4], got {list(cells.shape)}")
        if cells.dtype not in KERNEL_FLOAT_DTYPES:
            raise TypeError(
                f"cell_anchors[{level}] must be float16, bfloat16, float32 or float64 (the feature maps' "
                f"dtype), got {cells.dtype}"
            )
        if cells.dtype != first.dtype or cells.device != first.device:
            raise ValueError(
                f"all cell anchors must share one dtype and device, got {first.dtype} on {first.device} "
                f"and {cells.dtype} on {cells.device} at level {level}"
            )


def _pair(value: Any, name: str) -> tuple[Any, Any]:
    try:
        first, second = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (height, width), got {value!r}") from None
    return first, second


def _as_int(value: Union[int, Tensor], name: str):
    """An int, a SymInt, or a 0-dim integer tensor (torchvision passes strides as such)."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.is_complex():
            raise ValueError(f"{name} must be an integer, got a tensor {value}")
        return int(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _flat_levels(grid_sizes, strides, num_levels: int) -> tuple[list, list]:
    if len(grid_sizes) != num_levels or len(strides) != num_levels:
        raise ShapeError(
            "Anchors should be Tuple[Tuple[int]] because each feature map could potentially have different "
            "sizes and aspect ratios. There needs to be a match between the number of feature maps passed "
            f"({len(grid_sizes)} grid sizes, {len(strides)} strides) and the number of sizes / aspect ratios "
            f"specified ({num_levels})."
        )
    flat_sizes, flat_strides = [], []
    for level, (size, stride) in enumerate(zip(grid_sizes, strides)):
        for value in _pair(size, f"grid_sizes[{level}]"):
            value = _as_int(value, f"grid_sizes[{level}]")
            if isinstance(value, int) and value < 0:
                raise ValueError(f"grid_sizes[{level}] must be >= 0, got {size}")
            flat_sizes.append(value)
        for value in _pair(stride, f"strides[{level}]"):
            flat_strides.append(_as_int(value, f"strides[{level}]"))
    return flat_sizes, flat_strides


def _launch(cell_anchors: List[Tensor], flat_sizes: List[int], flat_strides: List[int], num_images: int) -> Tensor:
    if len(cell_anchors) > 16:  # MAX_LEVELS, written out for TorchScript
        raise ValueError(f"at most 16 levels are supported, got {len(cell_anchors)}")
    cells = cell_anchors[0] if len(cell_anchors) == 1 else torch.cat(cell_anchors)
    counts = [c.shape[0] for c in cell_anchors]
    return _ops.grid_anchors(cells, counts, flat_sizes, flat_strides, num_images)


# ------------------------------------------------------------------ public API


def grid_anchors(
    cell_anchors: Sequence[Tensor],
    grid_sizes: Sequence[Sequence[int]],
    strides: Sequence[Sequence[Union[int, Tensor]]],
) -> list[Tensor]:
    """Anchors of every grid position of every level (torchvision's
    ``AnchorGenerator.grid_anchors``), computed in one kernel launch.

    Args:
        cell_anchors: per level, ``[A_l, 4]`` zero-centred anchors ``(x1, y1, x2, y2)``,
            all of one floating dtype and device.
        grid_sizes: per level, the feature map size ``(H_l, W_l)``.
        strides: per level, ``(stride_h, stride_w)`` in pixels (ints or 0-dim integer tensors).

    Returns:
        per level, ``[H_l * W_l * A_l, 4]`` anchors in torchvision's order (row-major
        grid position, then cell anchor); views of one buffer.
    """
    _check_cell_anchors(cell_anchors)
    flat_sizes, flat_strides = _flat_levels(grid_sizes, strides, len(cell_anchors))
    anchors = _launch(list(cell_anchors), flat_sizes, flat_strides, 1)[0]
    counts = [
        flat_sizes[2 * level] * flat_sizes[2 * level + 1] * cells.shape[0] for level, cells in enumerate(cell_anchors)
    ]
    return list(anchors.split(counts))


class AnchorGenerator(nn.Module):
    """Drop-in for ``torchvision.models.detection.anchor_utils.AnchorGenerator``:
    the same constructor arguments, attributes, methods and anchors, with every
    level of every image computed in one kernel launch.

    Anchors of a recent ``(feature sizes, strides, number of images, dtype,
    device)`` are cached (``cache_size`` entries, least recently used dropped),
    so a repeated input size costs no kernel launch. The returned tensors are
    then the cache's own memory: torchvision's detectors only read anchors, and
    an in-place change (seen through the tensors' version counter) makes the
    next call recompute rather than reuse them. Caching is skipped under
    ``torch.compile``. ``cache_size=0`` disables it.

    Args:
        sizes: per level, the anchor sizes (e.g. ``((32,), (64,), ...)``).
        aspect_ratios: per level, the aspect ratios (height / width).
        cache_size: how many input sizes to remember.
    """

    __annotations__ = {"cell_anchors": List[torch.Tensor]}
    __jit_ignored_attributes__ = ["_cache"]  # eager-only; TorchScript launches every call

    def __init__(
        self,
        sizes=((128, 256, 512),),
        aspect_ratios=((0.5, 1.0, 2.0),),
        *,
        cache_size: int = 8,
    ):
        super().__init__()
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (aspect_ratios,) * len(sizes)
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        if len(sizes) != len(aspect_ratios):
            raise ShapeError(
                f"sizes and aspect_ratios must have one entry per level, got {len(sizes)} and {len(aspect_ratios)}"
            )
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.cell_anchors = [
            self.generate_anchors(size, aspect_ratio) for size, aspect_ratio in zip(sizes, aspect_ratios)
        ]
        self.cache_size = cache_size
        self._cache: OrderedDict = OrderedDict()

    # The same arithmetic as torchvision (float32 on the CPU by default, rounded).
    def generate_anchors(
        self,
        scales: List[int],
        aspect_ratios: List[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Tensor:
        """``[len(aspect_ratios) * len(scales), 4]`` zero-centred anchors ``(x1, y1, x2, y2)``."""
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        aspect_ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(aspect_ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        base_anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        return base_anchors.round()

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        self.cell_anchors = [cell_anchor.to(dtype=dtype, device=device) for cell_anchor in self.cell_anchors]

    def num_anchors_per_location(self) -> List[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    @torch.jit.unused
    def grid_anchors(self, grid_sizes: List[List[int]], strides: List[List[Tensor]]) -> List[Tensor]:
        """Per level, ``[H_l * W_l * A_l, 4]`` anchors (see :func:`grid_anchors`)."""
        return grid_anchors(self.cell_anchors, grid_sizes, strides)

    @torch.jit.unused
    def clear_cache(self) -> None:
        self._cache.clear()

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        """Anchors of every image.

        Args:
            image_list: a torchvision ``ImageList`` (``tensors`` ``[B, C, H, W]`` and
                ``image_sizes``).
            feature_maps: per level, ``[B, C_l, H_l, W_l]`` features.

        Returns:
            B tensors ``[sum_l H_l * W_l * A_l, 4]`` of ``(x1, y1, x2, y2)`` anchors, in
            the feature maps' dtype and device.
        """
        if len(feature_maps) == 0:
            raise ValueError("feature_maps must be a non-empty list of [B, C, H, W] tensors")
        if len(feature_maps) != len(self.cell_anchors):
            raise ShapeError(
                "Anchors should be Tuple[Tuple[int]] because each feature map could potentially have different "
                "sizes and aspect ratios. There needs to be a match between the number of feature maps passed "
                f"({len(feature_maps)}) and the number of sizes / aspect ratios specified ({len(self.cell_anchors)})."
            )
        image_h, image_w = image_list.tensors.shape[-2], image_list.tensors.shape[-1]
        flat_sizes: List[int] = []
        flat_strides: List[int] = []
        for level in range(len(feature_maps)):
            shape = feature_maps[level].shape
            if len(shape) < 2 or shape[-2] == 0 or shape[-1] == 0:
                raise ShapeError(f"feature_maps[{level}] must have a non-empty [H, W] grid, got shape {list(shape)}")
            flat_sizes += [shape[-2], shape[-1]]
            flat_strides += [image_h // shape[-2], image_w // shape[-1]]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        if not is_kernel_float(dtype):
            raise DtypeError(f"feature_maps must be float16, bfloat16, float32 or float64, got {dtype}")
        num_images = len(image_list.image_sizes)
        self.set_cell_anchors(dtype, device)
        if not torch.jit.is_scripting():
            if self.cache_size > 0 and not torch.compiler.is_compiling():
                return self._cached(flat_sizes, flat_strides, num_images, dtype, device)
        return list(_launch(self.cell_anchors, flat_sizes, flat_strides, num_images).unbind(0))

    @torch.jit.unused
    def _cached(
        self, flat_sizes: List[int], flat_strides: List[int], num_images: int, dtype: torch.dtype, device: torch.device
    ) -> List[Tensor]:
        # The cell anchors' identities are in the key: set_cell_anchors keeps the
        # same tensors while dtype and device stay, and new ones mean new values.
        key = (tuple(flat_sizes), tuple(flat_strides), num_images, dtype, device,
               tuple(id(c) for c in self.cell_anchors))
        entry = self._cache.get(key)
        if entry is not None and entry[0]._version == entry[1]:
            try:
                self._cache.move_to_end(key)
            except KeyError:  # dropped meanwhile by a call from another thread
                pass
            return list(entry[0].unbind(0))
        # Cached tensors must be normal tensors (inference tensors have no version counter).
        with torch.inference_mode(False), torch.no_grad():
            anchors = _launch(self.cell_anchors, flat_sizes, flat_strides, num_images)
        # The entry holds the cell anchors so that their ids stay unique while it lives.
        self._cache[key] = (anchors, anchors._version, tuple(self.cell_anchors))
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            try:
                self._cache.popitem(last=False)
            except KeyError:
                break
        return list(anchors.unbind(0))
