"""Triton kernels of the IoU losses (GIoU / DIoU / CIoU), forward and fused
analytic backward: one pass reads each pair of boxes and writes the loss, or
both boxes' gradients. The formulas mirror ``csrc/box_iou/box_iou_math.h``
(``loss_forward`` / ``loss_backward``) operation for operation; the CPU tests
compare the two.

eps is a compile-time constant (a Triton float argument would be float32,
too coarse for float64 boxes); it rarely changes.

Boxes are ``[K, 4]`` ``(x1, y1, x2, y2)``, contiguous; float16/bfloat16 are
computed in float32, the loss (and the incoming gradient) is float32 for them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_VARIANTS = {"giou": 1, "diou": 2, "ciou": 3}
_CIOU_SCALE = 0.40528473456935108578  # 4 / pi**2
_BLOCK = 256


@triton.jit
def _const(value: tl.constexpr, DT: tl.constexpr):
    """A constant in the compute dtype. A bare Python float becomes a float32
    constant in Triton, which would cost float64 kernels their precision."""
    return tl.full((), value, DT)


@triton.jit
def _atan(x, DT: tl.constexpr):
    """Cephes' atan (rational approximation after range reduction). Triton's
    interpreter has no libdevice, and this keeps CPU and GPU on one formula."""
    sign = tl.where(x < 0, -1.0, 1.0)
    ax = tl.abs(x)
    big = ax > _const(2.414213562373095, DT)
    mid = (ax > _const(0.66, DT)) & (~big)
    xr = tl.where(big, -1.0 / tl.where(big, ax, 1.0), tl.where(mid, (ax - 1.0) / (ax + 1.0), ax))
    base = tl.where(big, _const(1.5707963267948966, DT), tl.where(mid, _const(0.7853981633974483, DT), 0.0))
    morebits = tl.where(big, _const(6.123233995736766e-17, DT), tl.where(mid, _const(3.061616997868383e-17, DT), 0.0))
    z = xr * xr
    p = (((_const(-8.750608600031904e-1, DT) * z + _const(-1.615753718733365e1, DT)) * z
          + _const(-7.500855792314705e1, DT)) * z + _const(-1.228866684490136e2, DT)) * z \
        + _const(-6.485021904942025e1, DT)
    q = ((((z + _const(2.485846490142306e1, DT)) * z + _const(1.650270098316988e2, DT)) * z
          + _const(4.328810604912903e2, DT)) * z + _const(4.853903996359137e2, DT)) * z \
        + _const(1.945506571482614e2, DT)
    y = base + (xr * (z * p / q) + xr + morebits)
    return sign * y


@triton.jit
def _max_backward(a, b, g):
    """Gradient of maximum(a, b): ties split in half, as PyTorch's autograd does."""
    half = g * 0.5
    return tl.where(a > b, g, tl.where(a == b, half, 0.0)), tl.where(b > a, g, tl.where(a == b, half, 0.0))


@triton.jit
def _min_backward(a, b, g):
    half = g * 0.5
    return tl.where(a < b, g, tl.where(a == b, half, 0.0)), tl.where(b < a, g, tl.where(a == b, half, 0.0))


@triton.jit
def _load_pair(b1_ptr, b2_ptr, offs, mask, COMPUTE: tl.constexpr):
    base = offs * 4
    px1 = tl.load(b1_ptr + base + 0, mask=mask, other=0.0).to(COMPUTE)
    py1 = tl.load(b1_ptr + base + 1, mask=mask, other=0.0).to(COMPUTE)
    px2 = tl.load(b1_ptr + base + 2, mask=mask, other=1.0).to(COMPUTE)
    py2 = tl.load(b1_ptr + base + 3, mask=mask, other=1.0).to(COMPUTE)
    tx1 = tl.load(b2_ptr + base + 0, mask=mask, other=0.0).to(COMPUTE)
    ty1 = tl.load(b2_ptr + base + 1, mask=mask, other=0.0).to(COMPUTE)
    tx2 = tl.load(b2_ptr + base + 2, mask=mask, other=1.0).to(COMPUTE)
    ty2 = tl.load(b2_ptr + base + 3, mask=mask, other=1.0).to(COMPUTE)
    return px1, py1, px2, py2, tx1, ty1, tx2, ty2


@triton.jit
def box_iou_loss_forward_kernel(b1_ptr, b2_ptr, out_ptr, K, EPS: tl.constexpr, VARIANT: tl.constexpr,
                                 COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < K
    px1, py1, px2, py2, tx1, ty1, tx2, ty2 = _load_pair(b1_ptr, b2_ptr, offs, mask, COMPUTE)
    xk1 = tl.maximum(px1, tx1)
    yk1 = tl.maximum(py1, ty1)
    xk2 = tl.minimum(px2, tx2)
    yk2 = tl.minimum(py2, ty2)
    inter = tl.where((yk2 > yk1) & (xk2 > xk1), (xk2 - xk1) * (yk2 - yk1), 0.0)
    uni = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter
    iou_eps = _const(1e-7, COMPUTE) if VARIANT == 3 else _const(EPS, COMPUTE)
    iou = inter / (uni + iou_eps)
    dxc = tl.maximum(px2, tx2) - tl.minimum(px1, tx1)
    dyc = tl.maximum(py2, ty2) - tl.minimum(py1, ty1)
    if VARIANT == 1:
        area_c = dxc * dyc
        loss = 1.0 - (iou - ((area_c - uni) / (area_c + _const(EPS, COMPUTE))))
    else:
        diag = dxc * dxc + dyc * dyc + iou_eps
        dx = (px2 + px1) / 2.0 - (tx1 + tx2) / 2.0
        dy = (py2 + py1) / 2.0 - (ty1 + ty2) / 2.0
        loss = 1.0 - iou + (dx * dx + dy * dy) / diag
        if VARIANT == 3:
            dt = _atan((tx2 - tx1) / (ty2 - ty1), COMPUTE) - _atan((px2 - px1) / (py2 - py1), COMPUTE)
            v = _const(0.40528473456935108578, COMPUTE) * (dt * dt)
            alpha = v / (1.0 - iou + v + _const(EPS, COMPUTE))
            loss = loss + alpha * v
    tl.store(out_ptr + offs, loss.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def box_iou_loss_backward_kernel(grad_ptr, b1_ptr, b2_ptr, g1_ptr, g2_ptr, K, EPS: tl.constexpr,
                                 VARIANT: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < K
    px1, py1, px2, py2, tx1, ty1, tx2, ty2 = _load_pair(b1_ptr, b2_ptr, offs, mask, COMPUTE)
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(COMPUTE)

    xk1 = tl.maximum(px1, tx1)
    yk1 = tl.maximum(py1, ty1)
    xk2 = tl.minimum(px2, tx2)
    yk2 = tl.minimum(py2, ty2)
    overlap = (yk2 > yk1) & (xk2 > xk1)
    dxk = xk2 - xk1
    dyk = yk2 - yk1
    inter = tl.where(overlap, dxk * dyk, 0.0)
    wp = px2 - px1
    hp = py2 - py1
    wt = tx2 - tx1
    ht = ty2 - ty1
    uni = wp * hp + wt * ht - inter
    iou_eps = _const(1e-7, COMPUTE) if VARIANT == 3 else _const(EPS, COMPUTE)
    den_iou = uni + iou_eps
    iou = inter / den_iou
    dxc = tl.maximum(px2, tx2) - tl.minimum(px1, tx1)
    dyc = tl.maximum(py2, ty2) - tl.minimum(py1, ty1)

    zero = g * 0.0
    gpx1 = zero
    gpy1 = zero
    gpx2 = zero
    gpy2 = zero
    gtx1 = zero
    gty1 = zero
    gtx2 = zero
    gty2 = zero
    g_wp = zero
    g_hp = zero
    g_wt = zero
    g_ht = zero
    g_uni = zero
    g_iou = -g
    if VARIANT == 1:
        area_c = dxc * dyc
        den = area_c + _const(EPS, COMPUTE)
        g_num = g / den
        g_area_c = g_num - g * (area_c - uni) / (den * den)
        g_uni = g_uni - g_num
        g_dxc = g_area_c * dyc
        g_dyc = g_area_c * dxc
    else:
        diag = dxc * dxc + dyc * dyc + iou_eps
        dx = (px2 + px1) / 2.0 - (tx1 + tx2) / 2.0
        dy = (py2 + py1) / 2.0 - (ty1 + ty2) / 2.0
        dist = dx * dx + dy * dy
        g_dist = g / diag
        g_diag = -g * dist / (diag * diag)
        g_dxc = 2.0 * dxc * g_diag
        g_dyc = 2.0 * dyc * g_diag
        g_dx = 2.0 * dx * g_dist / 2.0
        g_dy = 2.0 * dy * g_dist / 2.0
        gpx1 += g_dx
        gpx2 += g_dx
        gtx1 -= g_dx
        gtx2 -= g_dx
        gpy1 += g_dy
        gpy2 += g_dy
        gty1 -= g_dy
        gty2 -= g_dy
        if VARIANT == 3:
            rt = wt / ht
            rp = wp / hp
            dt = _atan(rt, COMPUTE) - _atan(rp, COMPUTE)
            v = _const(0.40528473456935108578, COMPUTE) * (dt * dt)
            alpha = v / (1.0 - iou + v + _const(EPS, COMPUTE))
            g_dt = _const(0.40528473456935108578, COMPUTE) * (g * alpha) * 2.0 * dt
            g_rt = g_dt / (rt * rt + 1.0)
            g_rp = -g_dt / (rp * rp + 1.0)
            g_wt += g_rt / ht
            g_ht -= g_rt * wt / (ht * ht)
            g_wp += g_rp / hp
            g_hp -= g_rp * wp / (hp * hp)
    a, b = _max_backward(px2, tx2, g_dxc)
    gpx2 += a
    gtx2 += b
    a, b = _min_backward(px1, tx1, -g_dxc)
    gpx1 += a
    gtx1 += b
    a, b = _max_backward(py2, ty2, g_dyc)
    gpy2 += a
    gty2 += b
    a, b = _min_backward(py1, ty1, -g_dyc)
    gpy1 += a
    gty1 += b

    g_uni = g_uni - g_iou * inter / (den_iou * den_iou)
    g_inter = g_iou / den_iou - g_uni
    g_wp += g_uni * hp
    g_hp += g_uni * wp
    g_wt += g_uni * ht
    g_ht += g_uni * wt
    g_ix = tl.where(overlap, g_inter * dyk, 0.0)
    g_iy = tl.where(overlap, g_inter * dxk, 0.0)
    a, b = _min_backward(px2, tx2, g_ix)
    gpx2 += a
    gtx2 += b
    a, b = _max_backward(px1, tx1, -g_ix)
    gpx1 += a
    gtx1 += b
    a, b = _min_backward(py2, ty2, g_iy)
    gpy2 += a
    gty2 += b
    a, b = _max_backward(py1, ty1, -g_iy)
    gpy1 += a
    gty1 += b
    gpx2 += g_wp
    gpx1 -= g_wp
    gpy2 += g_hp
    gpy1 -= g_hp
    gtx2 += g_wt
    gtx1 -= g_wt
    gty2 += g_ht
    gty1 -= g_ht

    base = offs * 4
    ty = g1_ptr.dtype.element_ty
    tl.store(g1_ptr + base + 0, gpx1.to(ty), mask=mask)
    tl.store(g1_ptr + base + 1, gpy1.to(ty), mask=mask)
    tl.store(g1_ptr + base + 2, gpx2.to(ty), mask=mask)
    tl.store(g1_ptr + base + 3, gpy2.to(ty), mask=mask)
    tl.store(g2_ptr + base + 0, gtx1.to(ty), mask=mask)
    tl.store(g2_ptr + base + 1, gty1.to(ty), mask=mask)
    tl.store(g2_ptr + base + 2, gtx2.to(ty), mask=mask)
    tl.store(g2_ptr + base + 3, gty2.to(ty), mask=mask)


def _variant_code(variant: str) -> int:
    if variant not in _VARIANTS:
        raise ValueError(f"box_iou_loss: variant must be 'giou', 'diou' or 'ciou', got {variant!r}")
    return _VARIANTS[variant]


def _check_pairs(boxes1: torch.Tensor, boxes2: torch.Tensor) -> None:
    if boxes1.dim() != 2 or boxes1.shape[-1] != 4 or boxes1.shape != boxes2.shape:
        raise ValueError(f"box_iou_loss: boxes must be [K, 4] pairs, got {list(boxes1.shape)} and {list(boxes2.shape)}")
    if boxes1.dtype != boxes2.dtype:
        raise TypeError(f"box_iou_loss: boxes1 and boxes2 must share a dtype, got {boxes1.dtype} and {boxes2.dtype}")


def _compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def box_iou_loss_forward(boxes1: torch.Tensor, boxes2: torch.Tensor, variant: str, eps: float) -> torch.Tensor:
    """Per-pair loss ``[K]`` of ``[K, 4]`` boxes (no reduction)."""
    code = _variant_code(variant)
    _check_pairs(boxes1, boxes2)
    boxes1, boxes2 = boxes1.contiguous(), boxes2.contiguous()
    k = boxes1.shape[0]
    out = torch.empty(k, dtype=_out_dtype(boxes1.dtype), device=boxes1.device)
    if k:
        grid = (triton.cdiv(k, _BLOCK),)
        box_iou_loss_forward_kernel[grid](boxes1, boxes2, out, k, EPS=float(eps), VARIANT=code,
                                          COMPUTE=_compute(boxes1.dtype), BLOCK=_BLOCK)
    return out


def box_iou_loss_backward(grad: torch.Tensor, boxes1: torch.Tensor, boxes2: torch.Tensor, variant: str,
                          eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``([K, 4], [K, 4])`` of the per-pair loss, in the boxes' dtype."""
    code = _variant_code(variant)
    _check_pairs(boxes1, boxes2)
    if grad.shape != boxes1.shape[:1]:
        raise ValueError(f"box_iou_loss_backward: grad must have shape [{boxes1.shape[0]}], got {list(grad.shape)}")
    boxes1, boxes2, grad = boxes1.contiguous(), boxes2.contiguous(), grad.contiguous()
    k = boxes1.shape[0]
    grad1 = torch.empty_like(boxes1)
    grad2 = torch.empty_like(boxes2)
    if k:
        grid = (triton.cdiv(k, _BLOCK),)
        box_iou_loss_backward_kernel[grid](grad, boxes1, boxes2, grad1, grad2, k, EPS=float(eps), VARIANT=code,
                                           COMPUTE=_compute(boxes1.dtype), BLOCK=_BLOCK)
    return grad1, grad2
