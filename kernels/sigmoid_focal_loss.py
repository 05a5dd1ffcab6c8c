"""Triton kernels of the focal losses (GPU path), one pass each: the forward
reads logits and targets (or labels) and writes the loss, or one partial sum
per program for "mean"/"sum"; the backward reads them again with the incoming
gradient and writes the gradient. The formulas mirror
``csrc/sigmoid_focal_loss/sigmoid_focal_loss_math.h`` operation for operation
(``1 - p`` as ``sigmoid(-x)``, ``log1p(e)`` as ``2 atanh(e / (2 + e))``, the
``m^(gamma-1)`` term as ``m^gamma / m`` and 0 where ``m == 0``); the CPU
tests compare the two.

Each launcher has the signature of its ``torch.ops.detops`` schema and is
registered as that operator's CUDA implementation. float16/bfloat16 are
computed and summed in float32, float64 in float64; results have the logits'
dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024
_REDUCTIONS = ("none", "mean", "sum")


# ------------------------------------------------------------------ element math


@triton.jit
def _log1p_unit(e):
    """log1p(e) for e in [0, 1], with no libdevice (absent from the interpreter)
    and no hardware log (approximate on GPUs, which would spoil log(1 + e) for
    small e). float32: 2 atanh(s), s = e / (2 + e), the series of the C++
    kernel. float64: Goldberg's log(u) e / (u - 1), u = 1 + e (float64 log is exact)."""
    if e.dtype == tl.float64:
        u = 1.0 + e
        d = u - 1.0
        return tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d)))
    else:
        s = e / (2.0 + e)
        z = s * s
        p = 1.0 / 13.0
        p = p * z + 1.0 / 11.0
        p = p * z + 1.0 / 9.0
        p = p * z + 1.0 / 7.0
        p = p * z + 1.0 / 5.0
        p = p * z + 1.0 / 3.0
        return 2.0 * s + 2.0 * s * (z * p)


@triton.jit
def _modulator(m, gamma, GAMMA_KIND: tl.constexpr):
    """m**gamma and its derivative (0 where m == 0). GAMMA_KIND: 0, 1, 2 exact; 3 general."""
    if GAMMA_KIND == 0:
        mg = m * 0.0 + 1.0
        dmg = m * 0.0
    elif GAMMA_KIND == 1:
        mg = m
        dmg = m * 0.0 + 1.0
    elif GAMMA_KIND == 2:
        mg = m * m
        dmg = 2.0 * m
    else:
        safe = tl.where(m > 0.0, m, 1.0)
        mg = tl.where(m > 0.0, tl.exp(gamma * tl.log(safe)), 0.0)
        dmg = tl.where(m > 0.0, gamma * mg / safe, 0.0)
    return mg, dmg


@triton.jit
def _sigmoid_terms(x, t):
    ax = tl.abs(x)
    e = tl.exp(-ax)
    r = 1.0 / (1.0 + e)
    er = e * r
    pos = x >= 0.0
    p = tl.where(pos, r, er)
    q = tl.where(pos, er, r)
    ce = tl.where(pos, x, 0.0) - x * t + _log1p_unit(e)
    m = p * (1.0 - t) + q * t
    return p, q, ce, m


@triton.jit
def _focal_forward(x, t, alpha_pos, alpha_neg, gamma, GAMMA_KIND: tl.constexpr):
    p, q, ce, m = _sigmoid_terms(x, t)
    mg, dmg = _modulator(m, gamma, GAMMA_KIND)
    loss = (alpha_pos * t + alpha_neg * (1.0 - t)) * ce * mg
    return tl.where(x != x, x, loss)


@triton.jit
def _focal_grads(x, t, g, alpha_pos, alpha_neg, alpha_grad, gamma, GAMMA_KIND: tl.constexpr):
    """(d(g loss)/dx, d(g loss)/dt)."""
    p, q, ce, m = _sigmoid_terms(x, t)
    mg, dmg = _modulator(m, gamma, GAMMA_KIND)
    a_t = alpha_pos * t + alpha_neg * (1.0 - t)
    gx = g * a_t * ((p - t) * mg + ce * dmg * (p * q * (1.0 - 2.0 * t)))
    gt = g * (alpha_grad * ce * mg + a_t * (-x * mg + ce * dmg * (q - p)))
    return tl.where(x != x, x, gx), tl.where(x != x, x, gt)


# ------------------------------------------------------------------ sigmoid kernels
# INDEXED: the target of element i = (row, col) is col == labels[row]; rows
# whose label is IGNORE give 0. Otherwise targets are read from t_ptr.


@triton.jit
def _targets(t_ptr, labels_ptr, offs, mask, cols, ignore_index, INDEXED: tl.constexpr, COMPUTE: tl.constexpr):
    if INDEXED:
        row = offs // cols
        col = offs - row * cols
        label = tl.load(labels_ptr + row, mask=mask, other=ignore_index)
        t = (col == label).to(COMPUTE)
        keep = mask & (label != ignore_index)
    else:
        t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
        keep = mask
    return t, keep


@triton.jit
def sigmoid_focal_forward_kernel(x_ptr, t_ptr, labels_ptr, out_ptr, partial_ptr, n, cols, ignore_index,
                                 alpha_pos, alpha_neg, gamma, INDEXED: tl.constexpr, REDUCE: tl.constexpr,
                                 GAMMA_KIND: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    t, keep = _targets(t_ptr, labels_ptr, offs, mask, cols, ignore_index, INDEXED, COMPUTE)
    loss = tl.where(keep, _focal_forward(x, t, alpha_pos, alpha_neg, gamma, GAMMA_KIND), 0.0)
    if REDUCE:
        tl.store(partial_ptr + pid, tl.sum(loss, axis=0))
    else:
        tl.store(out_ptr + offs, loss.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def sigmoid_focal_backward_kernel(grad_ptr, scale_ptr, x_ptr, t_ptr, labels_ptr, gx_ptr, gt_ptr, n, cols,
                                  ignore_index, alpha_pos, alpha_neg, alpha_grad, gamma, INDEXED: tl.constexpr,
                                  REDUCE: tl.constexpr, TARGETS_GRAD: tl.constexpr, GAMMA_KIND: tl.constexpr,
                                  COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    t, keep = _targets(t_ptr, labels_ptr, offs, mask, cols, ignore_index, INDEXED, COMPUTE)
    if REDUCE:
        g = tl.load(scale_ptr).to(COMPUTE)  # grad / count for "mean", grad for "sum"
    else:
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    gx, gt = _focal_grads(x, t, g, alpha_pos, alpha_neg, alpha_grad, gamma, GAMMA_KIND)
    gx = tl.where(keep, gx, 0.0)
    tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    if TARGETS_GRAD:
        tl.store(gt_ptr + offs, gt.to(gt_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------ softmax kernels


@triton.jit
def _one_minus_exp(logp, u):
    """-expm1(logp) given u = exp(logp) (logp <= 0): 1 - u below u = 0.6, else
    the Taylor series of expm1 (|logp| <= 0.52; 16 terms, exact to float64)."""
    p = logp * (1.0 / 16.0) + 1.0
    p = p * logp * (1.0 / 15.0) + 1.0
    p = p * logp * (1.0 / 14.0) + 1.0
    p = p * logp * (1.0 / 13.0) + 1.0
    p = p * logp * (1.0 / 12.0) + 1.0
    p = p * logp * (1.0 / 11.0) + 1.0
    p = p * logp * (1.0 / 10.0) + 1.0
    p = p * logp * (1.0 / 9.0) + 1.0
    p = p * logp * (1.0 / 8.0) + 1.0
    p = p * logp * (1.0 / 7.0) + 1.0
    p = p * logp * (1.0 / 6.0) + 1.0
    p = p * logp * (1.0 / 5.0) + 1.0
    p = p * logp * (1.0 / 4.0) + 1.0
    p = p * logp * (1.0 / 3.0) + 1.0
    p = p * logp * (1.0 / 2.0) + 1.0
    return tl.where(u < 0.6, 1.0 - u, -(logp * p))


@triton.jit
def _softmax_rows(x_ptr, labels_ptr, rows, cols, ignore_index, COMPUTE: tl.constexpr, ROWS: tl.constexpr,
                  BLOCK_C: tl.constexpr):
    """This program's rows: indices, columns, masks, logits, and log-sum-exp
    (rows with ignore_index get a harmless 0 in place of theirs)."""
    pid = tl.program_id(0)
    r = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BLOCK_C)
    row_ok = r < rows
    label = tl.load(labels_ptr + r, mask=row_ok, other=ignore_index)
    keep = row_ok & (label != ignore_index)
    mask = row_ok[:, None] & (c[None, :] < cols)
    x = tl.load(x_ptr + r[:, None] * cols + c[None, :], mask=mask, other=-float("inf")).to(COMPUTE)
    mx = tl.where(keep, tl.max(x, axis=1), 0.0)
    s = tl.sum(tl.where(mask, tl.exp(x - mx[:, None]), 0.0), axis=1)
    lse = mx + tl.log(tl.where(keep, s, 1.0))
    return pid, r, c, row_ok, label, keep, mask, x, lse


@triton.jit
def softmax_focal_forward_kernel(x_ptr, labels_ptr, out_ptr, partial_ptr, rows, cols, ignore_index, scale, gamma,
                                 REDUCE: tl.constexpr, GAMMA_KIND: tl.constexpr, COMPUTE: tl.constexpr,
                                 ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    pid, r, c, row_ok, label, keep, mask, x, lse = _softmax_rows(x_ptr, labels_ptr, rows, cols, ignore_index,
                                                                 COMPUTE, ROWS, BLOCK_C)
    xk = tl.sum(tl.where(c[None, :] == label[:, None], x, 0.0), axis=1)
    logp = tl.minimum(xk - lse, 0.0)
    u = tl.exp(logp)
    omp = _one_minus_exp(logp, u)
    mg, dmg = _modulator(omp, gamma, GAMMA_KIND)
    loss = tl.where(keep, -scale * mg * logp, 0.0)
    if REDUCE:
        tl.store(partial_ptr + pid, tl.sum(loss, axis=0))
    else:
        tl.store(out_ptr + r, loss.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def softmax_focal_backward_kernel(grad_ptr, scale_ptr, x_ptr, labels_ptr, gx_ptr, rows, cols, ignore_index, scale,
                                  gamma, REDUCE: tl.constexpr, GAMMA_KIND: tl.constexpr, COMPUTE: tl.constexpr,
                                  ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    pid, r, c, row_ok, label, keep, mask, x, lse = _softmax_rows(x_ptr, labels_ptr, rows, cols, ignore_index,
                                                                 COMPUTE, ROWS, BLOCK_C)
    is_k = c[None, :] == label[:, None]
    xk = tl.sum(tl.where(is_k, x, 0.0), axis=1)
    logp = tl.minimum(xk - lse, 0.0)
    u = tl.exp(logp)
    omp = _one_minus_exp(logp, u)
    mg, dmg = _modulator(omp, gamma, GAMMA_KIND)
    if REDUCE:
        g = tl.load(scale_ptr).to(COMPUTE)
    else:
        g = tl.load(grad_ptr + r, mask=row_ok, other=0.0).to(COMPUTE)
    dl = g * (-scale * mg + scale * dmg * u * logp)
    dl = tl.where(keep, dl, 0.0)
    soft = tl.where(mask, tl.exp(x - lse[:, None]), 0.0)
    gx = tl.where(keep[:, None], dl[:, None] * (is_k.to(COMPUTE) - soft), 0.0)
    tl.store(gx_ptr + r[:, None] * cols + c[None, :], gx.to(gx_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------ launchers


def _compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gamma_kind(gamma: float) -> int:
    return {0.0: 0, 1.0: 1, 2.0: 2}.get(float(gamma), 3)


def _check_common(inputs: torch.Tensor, alpha: float, gamma: float, reduction: str) -> None:
    if inputs.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"inputs must be float16, bfloat16, float32 or float64, got {inputs.dtype}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if alpha != alpha or alpha > 1:
        raise ValueError(f"alpha must be in [0, 1] (or negative to disable it), got {alpha}")
    if not (gamma >= 0 and gamma != float("inf")):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")


def _check_indexed(inputs: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if inputs.dim() != 2:
        raise ValueError(f"inputs must have shape [N, C], got {list(inputs.shape)}")
    if labels.dtype != torch.int64 or labels.shape != inputs.shape[:1]:
        raise ValueError(f"{name} must be int64 of shape [{inputs.shape[0]}], got {labels.dtype} {list(labels.shape)}")
    if labels.device != inputs.device:
        raise ValueError(f"inputs and {name} must be on the same device, got {inputs.device} and {labels.device}")


def _alphas(alpha: float) -> tuple[float, float, float]:
    """(alpha_pos, alpha_neg, d a_t / d t); alpha < 0 disables the weight."""
    return (alpha, 1.0 - alpha, 2.0 * alpha - 1.0) if alpha >= 0 else (1.0, 1.0, 0.0)


def _finish(partials: torch.Tensor, reduction: str, count, dtype: torch.dtype) -> torch.Tensor:
    total = partials.sum()
    if reduction == "mean":
        total = total / count
    return total.to(dtype)


def _grad_scale(grad: torch.Tensor, reduction: str, count, dtype: torch.dtype) -> torch.Tensor:
    """The incoming gradient of a reduced loss, divided by the mean's count, as one device scalar."""
    if grad.dim() != 0:
        raise ValueError(f"grad of a reduced loss must be a scalar, got shape {list(grad.shape)}")
    scale = grad.to(_acc_dtype(dtype))
    if reduction == "mean":
        scale = scale / count
    return scale.reshape(1).contiguous()


def _uniform_value(grad: torch.Tensor, shape, dtype: torch.dtype):
    """For reduction "none": the one value of a gradient that is a stride-0
    expansion of a scalar (what ``loss.sum().backward()`` sends), as a device
    scalar, so that it is read once instead of copied to a full tensor; else None."""
    if tuple(grad.shape) != tuple(shape):
        raise ValueError(f"grad must have shape {list(shape)}, got {list(grad.shape)}")
    if grad.numel() == 0 or any(st != 0 and sz != 1 for st, sz in zip(grad.stride(), grad.shape)):
        return None
    return grad.as_strided((1,), (1,)).to(_acc_dtype(dtype)).contiguous()


def _sigmoid_forward(inputs, targets, labels, alpha, gamma, reduction, cols, ignore_index, count):
    n = inputs.numel()
    grid = (max(1, triton.cdiv(n, _BLOCK)),)
    reduce = reduction != "none"
    out = torch.empty(inputs.shape, dtype=inputs.dtype, device=inputs.device)
    partials = torch.zeros(grid[0], dtype=_acc_dtype(inputs.dtype), device=inputs.device)
    alpha_pos, alpha_neg, _ = _alphas(alpha)
    if n:
        sigmoid_focal_forward_kernel[grid](
            inputs, targets if targets is not None else inputs, labels if labels is not None else inputs,
            out, partials, n, cols, ignore_index, alpha_pos, alpha_neg, float(gamma),
            INDEXED=labels is not None, REDUCE=reduce, GAMMA_KIND=_gamma_kind(gamma),
            COMPUTE=_compute(inputs.dtype), BLOCK=_BLOCK,
        )
    return _finish(partials, reduction, count, inputs.dtype) if reduce else out


def _sigmoid_backward(grad, inputs, targets, labels, alpha, gamma, reduction, cols, ignore_index, count,
                      targets_grad):
    n = inputs.numel()
    if reduction != "none":
        scale = _grad_scale(grad, reduction, count, inputs.dtype)
    else:
        scale = _uniform_value(grad, inputs.shape, inputs.dtype)
    reduce = scale is not None  # one incoming gradient value for every element
    grad = scale if reduce else grad.to(inputs.dtype).contiguous()
    grad_inputs = torch.empty(inputs.shape, dtype=inputs.dtype, device=inputs.device)
    grad_targets = (torch.empty(inputs.shape, dtype=inputs.dtype, device=inputs.device) if targets_grad
                    else torch.empty(0, dtype=inputs.dtype, device=inputs.device))
    alpha_pos, alpha_neg, alpha_grad = _alphas(alpha)
    if n:
        sigmoid_focal_backward_kernel[(triton.cdiv(n, _BLOCK),)](
            grad, scale, inputs, targets if targets is not None else inputs,
            labels if labels is not None else inputs, grad_inputs, grad_targets if targets_grad else grad_inputs,
            n, cols, ignore_index, alpha_pos, alpha_neg, alpha_grad, float(gamma),
            INDEXED=labels is not None, REDUCE=reduce, TARGETS_GRAD=targets_grad,
            GAMMA_KIND=_gamma_kind(gamma), COMPUTE=_compute(inputs.dtype), BLOCK=_BLOCK,
        )
    return grad_inputs, grad_targets


def _check_dense(inputs: torch.Tensor, targets: torch.Tensor) -> None:
    if targets.shape != inputs.shape:
        raise ValueError(f"targets must have the shape of inputs {list(inputs.shape)}, got {list(targets.shape)}")
    if targets.dtype != inputs.dtype or targets.device != inputs.device:
        raise ValueError("inputs and targets must have the same dtype and device")


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float,
                       reduction: str) -> torch.Tensor:
    """Loss of logits ``[*]`` and float targets ``[*]``: ``[*]``, or a scalar for "mean"/"sum"."""
    _check_common(inputs, alpha, gamma, reduction)
    _check_dense(inputs, targets)
    inputs, targets = inputs.contiguous(), targets.contiguous()
    return _sigmoid_forward(inputs, targets, None, alpha, gamma, reduction, 1, 0, inputs.numel())


def sigmoid_focal_loss_backward(grad: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, alpha: float,
                                gamma: float, reduction: str, targets_grad: bool):
    """(grad_inputs ``[*]``, grad_targets ``[*]`` or ``[0]`` when not asked for)."""
    _check_common(inputs, alpha, gamma, reduction)
    _check_dense(inputs, targets)
    inputs, targets = inputs.contiguous(), targets.contiguous()
    return _sigmoid_backward(grad, inputs, targets, None, alpha, gamma, reduction, 1, 0, inputs.numel(),
                             bool(targets_grad))


def _indexed_count(labels: torch.Tensor, ignore_index: int, cols: int) -> torch.Tensor:
    """Elements of the rows not ignored, as a device scalar (no host sync)."""
    return (labels != ignore_index).sum() * cols


def sigmoid_focal_loss_indexed(inputs: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float,
                               reduction: str, background: int, ignore_index: int) -> torch.Tensor:
    """Loss of logits ``[N, C]`` and class indices ``[N]``: ``[N, C]``, or a scalar."""
    _check_common(inputs, alpha, gamma, reduction)
    _check_indexed(inputs, labels, "labels")
    inputs, labels = inputs.contiguous(), labels.contiguous()
    cols = inputs.shape[1]
    count = _indexed_count(labels, ignore_index, cols) if reduction == "mean" else 1
    # background needs no case of its own: it matches no column, so all targets are 0.
    return _sigmoid_forward(inputs, None, labels, alpha, gamma, reduction, max(cols, 1), ignore_index, count)


def sigmoid_focal_loss_indexed_backward(grad: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
                                        alpha: float, gamma: float, reduction: str, background: int,
                                        ignore_index: int) -> torch.Tensor:
    """Gradient ``[N, C]`` of the indexed loss."""
    _check_common(inputs, alpha, gamma, reduction)
    _check_indexed(inputs, labels, "labels")
    inputs, labels = inputs.contiguous(), labels.contiguous()
    cols = inputs.shape[1]
    count = _indexed_count(labels, ignore_index, cols) if reduction == "mean" else 1
    grad_inputs, _ = _sigmoid_backward(grad, inputs, None, labels, alpha, gamma, reduction, max(cols, 1),
                                       ignore_index, count, False)
    return grad_inputs


def _softmax_tiles(cols: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(max(cols, 1))
    if block_c > 16384:
        raise ValueError(f"softmax_focal_loss on GPU supports up to 16384 classes, got {cols}")
    return max(1, 2048 // block_c), block_c


def softmax_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float, reduction: str,
                       ignore_index: int) -> torch.Tensor:
    """Loss of logits ``[N, C]`` and class indices ``[N]``: ``[N]``, or a scalar."""
    _check_common(inputs, alpha, gamma, reduction)
    _check_indexed(inputs, targets, "targets")
    inputs, targets = inputs.contiguous(), targets.contiguous()
    rows, cols = inputs.shape
    rows_per, block_c = _softmax_tiles(cols)
    grid = (max(1, triton.cdiv(rows, rows_per)),)
    reduce = reduction != "none"
    out = torch.empty(rows if not reduce else 0, dtype=inputs.dtype, device=inputs.device)
    partials = torch.zeros(grid[0], dtype=_acc_dtype(inputs.dtype), device=inputs.device)
    if rows:
        softmax_focal_forward_kernel[grid](
            inputs, targets, out, partials, rows, cols, ignore_index, alpha if alpha >= 0 else 1.0, float(gamma),
            REDUCE=reduce, GAMMA_KIND=_gamma_kind(gamma), COMPUTE=_compute(inputs.dtype),
            ROWS=rows_per, BLOCK_C=block_c,
        )
    if not reduce:
        return out
    count = (targets != ignore_index).sum() if reduction == "mean" else 1
    return _finish(partials, reduction, count, inputs.dtype)


def softmax_focal_loss_backward(grad: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, alpha: float,
                                gamma: float, reduction: str, ignore_index: int) -> torch.Tensor:
    """Gradient ``[N, C]`` of the softmax focal loss."""
    _check_common(inputs, alpha, gamma, reduction)
    _check_indexed(inputs, targets, "targets")
    inputs, targets = inputs.contiguous(), targets.contiguous()
    rows, cols = inputs.shape
    rows_per, block_c = _softmax_tiles(cols)
    if reduction != "none":
        count = (targets != ignore_index).sum() if reduction == "mean" else 1
        scale = _grad_scale(grad, reduction, count, inputs.dtype)
    else:
        scale = _uniform_value(grad, (rows,), inputs.dtype)
    reduce = scale is not None
    grad = scale if reduce else grad.to(inputs.dtype).contiguous()
    grad_inputs = torch.empty(inputs.shape, dtype=inputs.dtype, device=inputs.device)
    if rows and cols:
        softmax_focal_backward_kernel[(triton.cdiv(rows, rows_per),)](
            grad, scale, inputs, targets, grad_inputs, rows, cols, ignore_index, alpha if alpha >= 0 else 1.0,
            float(gamma), REDUCE=reduce, GAMMA_KIND=_gamma_kind(gamma), COMPUTE=_compute(inputs.dtype),
            ROWS=rows_per, BLOCK_C=block_c,
        )
    return grad_inputs
