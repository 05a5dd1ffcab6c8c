"""Run torchvision on detops: ``patch_torchvision()`` and ``unpatch_torchvision()``.

``detops.patch_torchvision()`` (a function, and a context manager) routes every
torchvision op in the process to detops, whatever the import order and
however the caller reached the op; ``detops.unpatch_torchvision()`` (or leaving
the ``with`` block) restores torchvision exactly. Patching twice, or undoing
without a patch, does nothing. ``deform_conv2d`` is not routed (detops has no
such op).

What is routed, and how:

1. torchvision's registered operators get detops kernels through
   ``torch.library`` (one ``Library("torchvision", "IMPL")`` whose destruction
   restores torchvision's kernels), so ``torch.ops.torchvision.*`` callers,
   TorchScript'd models and every Python wrapper reach detops:

   * ``nms`` -> ``detops::nms``
   * ``roi_align``, ``_roi_align_backward`` -> ``detops::roi_align``, ``detops::roi_align_backward``
   * ``roi_pool``, ``_roi_pool_backward`` -> ``detops::roi_pool``, ``detops::roi_pool_backward``
   * ``ps_roi_align``, ``_ps_roi_align_backward`` -> ``detops::ps_roi_align``, ``detops::ps_roi_align_backward``
   * ``ps_roi_pool``, ``_ps_roi_pool_backward`` -> ``detops::ps_roi_pool``, ``detops::ps_roi_pool_backward``
     (torchvision's ps_roi_pool backward also sends gradient to the map's last
     row and column, which its forward never reads; detops' is the forward's
     gradient)

   for the CPU and CUDA dispatch keys, and for ``AutocastCPU``/``AutocastCUDA``
   where torchvision registers autocast (computing in float32, as torchvision's
   autocast does). torchvision's own autograd formulas stay in place and call
   the routed backward kernels.

2. torchvision's Python functions keep their identity but run detops: the
   code object of each function below is swapped for a one-line call into
   detops (and swapped back on undo). Every place that holds the function
   therefore reaches detops: the modules that bind it
   (``torchvision.ops``, ``torchvision.ops.boxes``,
   ``torchvision.models.detection.rpn``/``roi_heads``/``retinanet``/``fcos``/...),
   names imported before the patch (``from torchvision.ops import batched_nms``),
   attributes of models built before it (``rpn.box_similarity``), and the
   methods of existing ``AnchorGenerator``/``MultiScaleRoIAlign``/``BoxCoder``
   instances. ``inspect.signature`` and ``inspect.getsource`` still show
   torchvision's.

   * ``torchvision.ops.boxes``: ``box_iou``, ``generalized_box_iou``,
     ``distance_box_iou``, ``complete_box_iou``, ``_box_inter_union``,
     ``box_area``, ``box_convert``, ``clip_boxes_to_image``,
     ``remove_small_boxes``, ``masks_to_boxes``, ``batched_nms``
   * ``torchvision.ops``: ``generalized_box_iou_loss``, ``distance_box_iou_loss``,
     ``complete_box_iou_loss``, ``sigmoid_focal_loss``
   * ``torchvision.ops.poolers._multiscale_roi_align`` (the pooling of
     ``MultiScaleRoIAlign.forward``) -> ``detops::multi_scale_roi_align``
     (one fused kernel over the FPN levels, torchvision's level mapping)
   * ``AnchorGenerator.forward`` -> ``detops::grid_anchors`` (every level
     of every image in one launch)
   * ``BoxCoder.encode_single`` / ``decode_single`` -> ``detops::box_encode`` /
     ``detops::box_decode``
   * ``torchvision.models.detection.roi_heads.paste_masks_in_image`` (Mask
     R-CNN's postprocessing) -> ``detops::paste_masks`` (all masks of an
     image in one kernel, bit-equal on CPU)

   Inputs detops does not handle (rotated box formats, feature maps of mixed
   dtypes, ``torch.jit`` tracing, where torchvision takes ONNX-friendly
   paths) run torchvision's original code.

Not routed: ``deform_conv2d``, ``BoxLinearCoder`` (FCOS), ``Matcher``,
``DefaultBoxGenerator`` (SSD) and keypoint decoding (plain torch).
"""

from __future__ import annotations

import inspect
import threading
import types
from typing import Any, Callable

import torch
from torch import Tensor

from . import ops
from .ops._common import is_kernel_float

__all__ = ["patch_torchvision", "unpatch_torchvision", "is_patched"]

_AXIS_FORMATS = ("xyxy", "xywh", "cxcywh")
_ROUTE_GLOBAL = "__detops_route_{}__"  # a global of torchvision's module, only while patched
_lock = threading.RLock()


class _State:
    library: torch.library.Library | None = None
    # (function, torchvision's code object, name of the route global)
    swapped: list[tuple[types.FunctionType, types.CodeType, str]] = []
    originals: dict[types.FunctionType, types.FunctionType] = {}
    trampolines: dict[types.FunctionType, tuple[str, types.CodeType]] = {}


def _original(fn: types.FunctionType) -> Callable[..., Any]:
    """A callable copy of torchvision's ``fn`` as it was before the patch."""
    return _State.originals.get(fn, fn)


# ------------------------------------------------------------------ kernel routes (torch.library)


def _autocast_keys() -> torch._C.DispatchKeySet:
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU) | torch._C.DispatchKeySet(
        torch._C.DispatchKey.AutocastCUDA
    )
    return keys


def _f32(t: Tensor) -> Tensor:
    # torchvision's autocast rule: float16/bfloat16 run in float32, float64 stays.
    return t.float() if t.is_floating_point() and t.dtype != torch.float64 else t


def _nms_kernel(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    return torch.ops.detops.nms(dets, scores, iou_threshold)


def _roi_align_kernel(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return torch.ops.detops.roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_backward_kernel(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                               height, width, sampling_ratio, aligned):
    return torch.ops.detops.roi_align_backward(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size,
                                               channels, height, width, sampling_ratio, aligned, False)


def _roi_pool_kernel(input, rois, spatial_scale, pooled_height, pooled_width):
    out, argmax = torch.ops.detops.roi_pool(input, rois, spatial_scale, pooled_height, pooled_width)
    # The same argmax (pixel index in the map plane, -1 for an empty bin) in torchvision's int32.
    return out, argmax.to(torch.int32)


def _roi_pool_backward_kernel(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                              height, width):
    return torch.ops.detops.roi_pool_backward(grad, rois, argmax.long(), spatial_scale, pooled_height, pooled_width,
                                              batch_size, channels, height, width, False)


def _autocast(kernel: Callable[..., Any], num_tensors: int, restore_dtype: bool) -> Callable[..., Any]:
    """torchvision's autocast wrapper around a detops kernel: the first
    ``num_tensors`` arguments in float32, the first output back in the input dtype."""
    keys = _autocast_keys()

    def wrapper(*args):
        dtype = args[0].dtype
        with torch._C._ExcludeDispatchKeyGuard(keys):
            out = kernel(*(_f32(a) for a in args[:num_tensors]), *args[num_tensors:])
        if not restore_dtype:
            return out
        if isinstance(out, tuple):
            return (out[0].to(dtype), *out[1:])
        return out.to(dtype)

    return wrapper


def _kernel_routes() -> list[tuple[str, Callable[..., Any], int, bool, tuple[str, ...]]]:
    """(torchvision op, kernel, tensors cast under autocast, cast back, autocast keys)."""
    return [
        ("nms", _nms_kernel, 2, False, ("AutocastCPU", "AutocastCUDA")),
        ("roi_align", _roi_align_kernel, 2, True, ("AutocastCPU", "AutocastCUDA")),
        ("_roi_align_backward", _roi_align_backward_kernel, 0, False, ()),
        ("roi_pool", _roi_pool_kernel, 2, True, ("AutocastCUDA",)),
        ("_roi_pool_backward", _roi_pool_backward_kernel, 0, False, ()),
        # The position-sensitive ops: detops' operators have torchvision's schemas.
        ("ps_roi_align", torch.ops.detops.ps_roi_align, 2, True, ("AutocastCUDA",)),
        ("_ps_roi_align_backward", torch.ops.detops.ps_roi_align_backward, 0, False, ()),
        ("ps_roi_pool", torch.ops.detops.ps_roi_pool, 2, True, ("AutocastCUDA",)),
        ("_ps_roi_pool_backward", torch.ops.detops.ps_roi_pool_backward, 0, False, ()),
    ]


def _register_kernels() -> torch.library.Library:
    lib = torch.library.Library("torchvision", "IMPL")
    for op, kernel, cast, restore, autocast_keys in _kernel_routes():
        for key in ("CPU", "CUDA"):
            lib.impl(op, kernel, key)
        for key in autocast_keys:
            lib.impl(op, _autocast(kernel, cast, restore), key)
    return lib


# ------------------------------------------------------------------ Python routes


def _box_iou(boxes1, boxes2, fmt="xyxy"):
    if fmt not in _AXIS_FORMATS:
        return _original(_tv().boxes.box_iou)(boxes1, boxes2, fmt)
    return ops.box_iou(boxes1, boxes2, fmt)


def _box_inter_union(boxes1, boxes2, fmt="xyxy"):
    return ops._box_inter_union(boxes1, boxes2, fmt)


def _box_area(boxes, fmt="xyxy"):
    return ops.box_area(boxes, fmt)


def _box_convert(boxes, in_fmt, out_fmt):
    if in_fmt not in _AXIS_FORMATS or out_fmt not in _AXIS_FORMATS:
        return _original(_tv().boxes.box_convert)(boxes, in_fmt, out_fmt)
    return ops.box_convert(boxes, in_fmt, out_fmt)


def _clip_boxes_to_image(boxes, size):
    if torch.jit.is_tracing():  # torchvision's ONNX-exportable form
        return _original(_tv().boxes.clip_boxes_to_image)(boxes, size)
    return ops.clip_boxes_to_image(boxes, size)


def _batched_nms(boxes, scores, idxs, iou_threshold):
    if torch.jit.is_tracing():
        return _original(_tv().boxes.batched_nms)(boxes, scores, idxs, iou_threshold)
    keep = ops.batched_nms(boxes, scores, idxs, iou_threshold)
    if boxes.numel() > (4000 if boxes.device.type == "cpu" else 20000):
        # torchvision's per-class path orders the kept boxes by torch.sort of their
        # scores, whose order of equal scores is its own: take the same step.
        kept = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        kept[keep] = True
        keep = torch.where(kept)[0]
        keep = keep[scores[keep].sort(descending=True)[1]]
    return keep


def _multiscale_roi_align(x_filtered, boxes, output_size, sampling_ratio, scales, mapper):
    if (torch.jit.is_tracing() or scales is None or mapper is None or len(x_filtered) == 1
            or len({f.dtype for f in x_filtered}) > 1):
        # One level is a plain roi_align (routed as a kernel); mixed dtypes (autocast) stay torchvision's.
        return _original(_tv().poolers._multiscale_roi_align)(
            x_filtered, boxes, output_size, sampling_ratio, scales, mapper)
    from .ops.roi_align import _to_rois

    rois = _to_rois(list(boxes), x_filtered[0])
    levels = mapper(boxes)  # torchvision's own level of every box
    return torch.ops.detops.multi_scale_roi_align(
        x_filtered, rois, levels, [float(s) for s in scales], int(output_size[0]), int(output_size[1]),
        int(sampling_ratio), False)


def _anchor_forward(self, image_list, feature_maps):
    from .ops.anchor_generator import _check_cell_anchors, _flat_levels, _launch

    grid_sizes = [f.shape[-2:] for f in feature_maps]
    image_size = image_list.tensors.shape[-2:]
    dtype, device = feature_maps[0].dtype, feature_maps[0].device
    strides = [(image_size[0] // g[0], image_size[1] // g[1]) for g in grid_sizes]
    self.set_cell_anchors(dtype, device)
    _check_cell_anchors(self.cell_anchors)
    flat_sizes, flat_strides = _flat_levels(grid_sizes, strides, len(self.cell_anchors))
    anchors = _launch(self.cell_anchors, flat_sizes, flat_strides, len(image_list.image_sizes))
    return list(anchors.unbind(0))


def _encode_single(self, reference_boxes, proposals):
    return ops.encode_boxes(reference_boxes, proposals, self.weights)


def _decode_single(self, rel_codes, boxes):
    return ops.decode_boxes(rel_codes, boxes, self.weights, self.bbox_xform_clip)


def _paste_masks_in_image(masks, boxes, img_shape, padding=1):
    if (torch.jit.is_tracing() or (masks.requires_grad and torch.is_grad_enabled())
            or masks.dim() != 4 or not is_kernel_float(masks.dtype)
            or (boxes.is_floating_point() and not bool(torch.isfinite(boxes).all()))):
        # ONNX tracing, a gradient, odd shapes and non-finite boxes: torchvision's own code
        return _original(_tv().roi_heads.paste_masks_in_image)(masks, boxes, img_shape, padding)
    return ops.paste_masks_in_image(masks, boxes, img_shape, padding)


def _tv():
    """torchvision's modules that hold the routed functions (imported on demand)."""
    import torchvision.models.detection._utils as det_utils
    import torchvision.models.detection.anchor_utils as anchor_utils
    import torchvision.models.detection.roi_heads as roi_heads
    import torchvision.ops
    import torchvision.ops.boxes as boxes
    import torchvision.ops.poolers as poolers

    return types.SimpleNamespace(ops=torchvision.ops, boxes=boxes, poolers=poolers, det_utils=det_utils,
                                 anchor_utils=anchor_utils, roi_heads=roi_heads)


def _python_routes() -> list[tuple[types.FunctionType, Callable[..., Any]]]:
    """(torchvision function, the detops function it runs while patched)."""
    tv = _tv()
    b = tv.boxes
    return [
        (b.box_iou, _box_iou),
        (b.generalized_box_iou, ops.generalized_box_iou),
        (b.distance_box_iou, ops.distance_box_iou),
        (b.complete_box_iou, ops.complete_box_iou),
        (b._box_inter_union, _box_inter_union),
        (b.box_area, _box_area),
        (b.box_convert, _box_convert),
        (b.clip_boxes_to_image, _clip_boxes_to_image),
        (b.remove_small_boxes, ops.remove_small_boxes),
        (b.masks_to_boxes, ops.masks_to_boxes),
        (b.batched_nms, _batched_nms),
        (tv.ops.generalized_box_iou_loss, ops.generalized_box_iou_loss),
        (tv.ops.distance_box_iou_loss, ops.distance_box_iou_loss),
        (tv.ops.complete_box_iou_loss, ops.complete_box_iou_loss),
        (tv.ops.sigmoid_focal_loss, ops.sigmoid_focal_loss),
        (tv.poolers._multiscale_roi_align, _multiscale_roi_align),
        (tv.anchor_utils.AnchorGenerator.forward, _anchor_forward),
        (tv.det_utils.BoxCoder.encode_single, _encode_single),
        (tv.det_utils.BoxCoder.decode_single, _decode_single),
        (tv.roi_heads.paste_masks_in_image, _paste_masks_in_image),
    ]


def _trampoline(fn: types.FunctionType, route_global: str) -> types.CodeType:
    """A code object with ``fn``'s parameters that passes them to the function
    held in ``fn``'s globals under ``route_global``. It keeps ``fn``'s name, file
    and first line, so tracebacks and ``inspect.getsource`` point at
    torchvision's source; ``fn``'s defaults and annotations stay on ``fn``."""
    cached = _State.trampolines.get(fn)
    if cached is not None and cached[0] == route_global:
        return cached[1]
    params, call = [], []
    seen_star = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"cannot route {fn.__qualname__}: positional-only parameters")
        if p.kind is p.VAR_POSITIONAL:
            params.append(f"*{p.name}")
            call.append(f"*{p.name}")
            seen_star = True
        elif p.kind is p.VAR_KEYWORD:
            params.append(f"**{p.name}")
            call.append(f"**{p.name}")
        elif p.kind is p.KEYWORD_ONLY:
            if not seen_star:
                params.append("*")
                seen_star = True
            params.append(p.name)
            call.append(f"{p.name}={p.name}")
        else:
            params.append(p.name)
            call.append(p.name)
    source = f"def {fn.__name__}({', '.join(params)}): return {route_global}({', '.join(call)})"
    namespace: dict[str, Any] = {}
    exec(compile(source, fn.__code__.co_filename, "exec"), namespace)
    code = namespace[fn.__name__].__code__
    code = code.replace(co_firstlineno=fn.__code__.co_firstlineno, co_qualname=fn.__code__.co_qualname)
    _State.trampolines[fn] = (route_global, code)  # a re-patch compiles nothing
    return code


def _swap_functions() -> None:
    for fn, route in _python_routes():
        if fn.__closure__:
            raise TypeError(f"cannot route {fn.__qualname__}: it has a closure")
        original = fn.__code__
        name = _ROUTE_GLOBAL.format(fn.__qualname__.replace(".", "_"))
        _State.originals[fn] = types.FunctionType(original, fn.__globals__, fn.__name__, fn.__defaults__,
                                                  fn.__closure__)
        _State.originals[fn].__kwdefaults__ = fn.__kwdefaults__
        fn.__globals__[name] = route
        fn.__code__ = _trampoline(fn, name)
        _State.swapped.append((fn, original, name))


def _restore_functions() -> None:
    while _State.swapped:
        fn, original, name = _State.swapped.pop()
        fn.__code__ = original
        fn.__globals__.pop(name, None)
    _State.originals.clear()


# ------------------------------------------------------------------ public API


class _Patch:
    """What ``patch_torchvision()`` returns: the patch is already on; as a
    context manager, leaving the block undoes it (unless it was on before)."""

    def __init__(self, was_patched: bool):
        self._was_patched = was_patched

    def __enter__(self) -> "_Patch":
        return self

    def __exit__(self, *exc) -> None:
        if not self._was_patched:
            unpatch_torchvision()


def is_patched() -> bool:
    """Whether torchvision's ops currently run on detops."""
    return _State.library is not None


def patch_torchvision() -> _Patch:
    """Route every torchvision op in this process to detops (see the module
    docstring for the full list). Use as ``detops.patch_torchvision()`` or
    ``with detops.patch_torchvision(): ...``; calling it while patched does
    nothing (and a nested ``with`` leaves the patch on at its end).

    Examples:
        >>> import torchvision
        >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
        >>> with detops.patch_torchvision():
        ...     keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)  # runs detops::nms
        >>> keep
        tensor([0])
    """
    with _lock:
        if _State.library is not None:
            return _Patch(was_patched=True)
        import torchvision  # noqa: F401  (its operators must be registered before they are overridden)

        library = _register_kernels()
        try:
            _swap_functions()
        except BaseException:
            _restore_functions()
            library._destroy()
            raise
        _State.library = library
        return _Patch(was_patched=False)


def unpatch_torchvision() -> None:
    """Restore torchvision's kernels and functions exactly; harmless when not patched."""
    with _lock:
        _restore_functions()
        if _State.library is not None:
            _State.library._destroy()
            _State.library = None
