"""The focal losses against torchvision (sigmoid), the one-hot form (indexed)
and a float64 reference (softmax): values and gradients for every reduction,
alpha disabled, gamma = 0 / 1 / 2 / general, logits of +-100, float16/bfloat16,
gradcheck, opcheck, torch.compile, the Triton kernels under the interpreter,
and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

import detops
from tests.conftest import triton_dtypes
from tests.helpers import assert_close

REDUCTIONS = ["none", "mean", "sum"]
# (alpha, gamma): the default, alpha disabled, gamma 0 / 1 / general.
COEFFS = [(0.25, 2.0), (-1.0, 2.0), (0.25, 0.0), (0.6, 1.0), (0.4, 1.5), (-1.0, 0.0)]
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def logits_and_targets(shape, dtype, device, seed, *, soft=False, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if soft:
        t = torch.rand(shape, generator=g, dtype=torch.float64)
    else:
        t = (torch.rand(shape, generator=g) < 0.3).double()
    return x.to(dtype=dtype, device=device), t.to(dtype=dtype, device=device)


def loss_and_grads(fn, x, t, alpha, gamma, reduction, grad_out_seed=0, targets_grad=False):
    """Loss and the gradients of <loss, w> for a fixed random w."""
    x = x.detach().clone().requires_grad_()
    t = t.detach().clone().requires_grad_(targets_grad)
    loss = fn(x, t, alpha, gamma, reduction)
    w = torch.randn(loss.shape, generator=torch.Generator().manual_seed(grad_out_seed), dtype=torch.float64)
    (loss * w.to(loss.dtype).to(loss.device)).sum().backward()
    return loss.detach(), x.grad, (t.grad if targets_grad else None)


def close(dtype, reduction="none"):
    tol = TOL[dtype]
    # Sums of many terms: the order of the additions differs from torch's.
    return dict(rtol=tol * (10 if reduction != "none" else 1), atol=tol)


# ------------------------------------------------------------------ sigmoid focal loss vs torchvision


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha,gamma", COEFFS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigmoid_equals_torchvision(reduction, alpha, gamma, dtype, device):
    seed = 100 * REDUCTIONS.index(reduction) + COEFFS.index((alpha, gamma))
    x, t = logits_and_targets((300, 11), dtype, device, seed=seed)
    ours = loss_and_grads(detops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    ref = loss_and_grads(tv_sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    assert ours[0].dtype == ref[0].dtype == dtype and ours[0].shape == ref[0].shape
    assert_close(ours[0], ref[0], **close(dtype, reduction), msg="loss")
    assert_close(ours[1], ref[1], **close(dtype), msg="grad inputs")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.5), (0.7, 3.0)])
def test_sigmoid_soft_targets_and_their_gradient(reduction, alpha, gamma, device):
    x, t = logits_and_targets((64, 9), torch.float64, device, seed=3, soft=True)
    ours = loss_and_grads(detops.sigmoid_focal_loss, x, t, alpha, gamma, reduction, targets_grad=True)
    ref = loss_and_grads(tv_sigmoid_focal_loss, x, t, alpha, gamma, reduction, targets_grad=True)
    for a, b, what in zip(ours, ref, ("loss", "grad inputs", "grad targets")):
        assert_close(a, b, rtol=1e-11, atol=1e-12, msg=what)


def test_sigmoid_any_shape_and_noncontiguous(device):
    x, t = logits_and_targets((6, 5, 4, 3), torch.float32, device, seed=4)
    xt, tt = x.transpose(0, 2), t.transpose(0, 2)
    assert not xt.is_contiguous()
    ours = loss_and_grads(detops.sigmoid_focal_loss, xt, tt, 0.25, 2.0, "none")
    ref = loss_and_grads(tv_sigmoid_focal_loss, xt, tt, 0.25, 2.0, "none")
    assert ours[0].shape == xt.shape
    assert_close(ours[0], ref[0], rtol=2e-5, atol=2e-6)
    assert_close(ours[1], ref[1], rtol=2e-5, atol=2e-6)
    # A 0-dim logit and integer/bool targets (converted to the logits' dtype).
    x0 = torch.tensor(0.7, device=device)
    assert_close(detops.sigmoid_focal_loss(x0, torch.tensor(1.0, device=device)),
                 tv_sigmoid_focal_loss(x0, torch.tensor(1.0, device=device)))
    tb = t > 0.5
    assert_close(detops.sigmoid_focal_loss(x, tb), tv_sigmoid_focal_loss(x, tb.float()), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 2.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigmoid_extreme_logits(gamma, dtype, device):
    """+-100 (and +-1e4): finite values and gradients wherever torchvision's are
    finite, equal to them there; never NaN/Inf at all."""
    big = torch.tensor([100.0, -100.0, 1e4, -1e4, 30.0, -30.0, 17.0, -17.0, 88.0, -88.0, 0.0], dtype=dtype)
    x = big.repeat(2).to(device)
    t = torch.cat([torch.ones(11), torch.zeros(11)]).to(dtype=dtype, device=device)
    for alpha in (0.25, -1.0):
        for reduction in REDUCTIONS:
            ours = loss_and_grads(detops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
            ref = loss_and_grads(tv_sigmoid_focal_loss, x, t, alpha, gamma, reduction)
            for a, b, what in zip(ours[:2], ref[:2], ("loss", "grad")):
                assert torch.isfinite(a).all(), f"{what}: {a}"
                finite = torch.isfinite(b)
                assert_close(a[finite], b[finite], rtol=1e-5, atol=1e-6, msg=what)
    # Where torchvision is finite at +-100 it must be for every gamma >= 1 (its pow backward is 0 * inf below 1).
    if gamma >= 1:
        ref = loss_and_grads(tv_sigmoid_focal_loss, x[[0, 1, 11, 12]], t[[0, 1, 11, 12]], 0.25, gamma, "none")
        assert torch.isfinite(ref[1]).all()


@pytest.mark.parametrize("then", ["sum", "mean"])
def test_uniform_incoming_gradient(then, device):
    """reduction="none" followed by .sum()/.mean(): the gradient arrives as a
    stride-0 expansion of one value, which the kernels read once."""
    x, t = logits_and_targets((50, 8), torch.float64, device, seed=21)
    labels = random_labels(50, 8, device, seed=22)
    forms = [
        (lambda a: detops.sigmoid_focal_loss(a, t), lambda a: tv_sigmoid_focal_loss(a, t)),
        (lambda a: detops.sigmoid_focal_loss_indexed(a, labels),
         lambda a: tv_sigmoid_focal_loss(a, one_hot_targets(labels, 8, a.dtype)) * (labels != -2)[:, None]),
        (lambda a: detops.softmax_focal_loss(a, labels.clamp(min=0)),
         lambda a: softmax_focal_reference(a, labels.clamp(min=0), 0.25, 2.0, "none")),
    ]
    for ours, ref in forms:
        grads = []
        for fn in (ours, ref):
            xg = x.clone().requires_grad_()
            getattr(fn(xg), then)().backward()
            grads.append(xg.grad)
        assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)
    g = torch.full((), 0.3, dtype=torch.float64, device=device).expand(50, 8)
    assert g.stride() == (0, 0)
    dense = torch.ops.detops.sigmoid_focal_loss_backward(g, x, t, 0.25, 2.0, "none", True)
    full = torch.ops.detops.sigmoid_focal_loss_backward(g.contiguous(), x, t, 0.25, 2.0, "none", True)
    assert torch.equal(dense[0], full[0]) and torch.equal(dense[1], full[1])


def test_sigmoid_nan_logits_propagate(device):
    x = torch.tensor([float("nan"), 1.0], device=device)
    t = torch.tensor([1.0, 0.0], device=device)
    out = detops.sigmoid_focal_loss(x, t)
    assert torch.isnan(out[0]) and torch.isfinite(out[1])
    assert torch.isnan(detops.sigmoid_focal_loss(x, t, reduction="sum"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_reduced_precision_computes_in_float32(dtype, reduction, device):
    """float16/bfloat16 logits: the float32 result of the same (rounded) inputs,
    rounded once; sums accumulated in float32 (torchvision in float16 would
    lose them)."""
    x, t = logits_and_targets((2000, 20), dtype, device, seed=5)
    ours = loss_and_grads(detops.sigmoid_focal_loss, x, t, 0.25, 2.0, reduction)
    ref32 = loss_and_grads(tv_sigmoid_focal_loss, x.float(), t.float(), 0.25, 2.0, reduction)
    assert ours[0].dtype == dtype and ours[1].dtype == dtype
    eps = torch.finfo(dtype).eps
    assert_close(ours[0], ref32[0].to(dtype), rtol=2 * eps, atol=1e-6, msg="loss")
    assert_close(ours[1], ref32[1].to(dtype), rtol=2 * eps, atol=1e-7, msg="grad")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_is_float32_rounded_once(dtype):
    """Every float16/bfloat16 bit pattern (denormals, inf, NaN included): the
    result is exactly the float32 kernel's on the widened input, rounded once
    to nearest-even, for the loss and both gradients."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype)
    t = (torch.arange(x.numel()) % 3 == 0).to(dtype)
    g = torch.linspace(-3, 3, x.numel()).to(dtype)
    low = torch.ops.detops.sigmoid_focal_loss(x, t, 0.25, 2.0, "none")
    wide = torch.ops.detops.sigmoid_focal_loss(x.float(), t.float(), 0.25, 2.0, "none")
    assert_close(low, wide.to(dtype), rtol=0, atol=0)
    low_grads = torch.ops.detops.sigmoid_focal_loss_backward(g, x, t, 0.25, 2.0, "none", True)
    wide_grads = torch.ops.detops.sigmoid_focal_loss_backward(g.float(), x.float(), t.float(), 0.25, 2.0, "none", True)
    for a, b in zip(low_grads, wide_grads):
        assert_close(a, b.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [-1.0, 0.25])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_gamma_zero_is_bce_bit_for_bit_on_cpu(dtype, alpha, reduction):
    """gamma = 0 makes the loss alpha_t * BCE-with-logits: the CPU op gives
    torchvision's values (and, without alpha, F.binary_cross_entropy_with_logits')
    exactly, on random, large, zero, soft-target and NaN logits."""
    x, t = logits_and_targets((300, 7), dtype, "cpu", seed=12)
    x[0, :4] = torch.tensor([0.0, 40.0, -40.0, float("nan")], dtype=dtype)
    t[1] = torch.rand(7, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dtype)
    ours = detops.sigmoid_focal_loss(x, t, alpha, 0.0, reduction)
    ref = tv_sigmoid_focal_loss(x, t, alpha, 0.0, reduction)
    mask = ~ref.isnan()
    assert torch.equal(ours.isnan(), ref.isnan())
    assert torch.equal(ours[mask], ref[mask])
    if alpha < 0:
        bce = F.binary_cross_entropy_with_logits(x, t, reduction=reduction)
        assert torch.equal(ours[mask], bce[mask])


def test_sigmoid_empty(device):
    x = torch.zeros(0, 80, device=device, requires_grad=True)
    t = torch.zeros(0, 80, device=device)
    for reduction in REDUCTIONS:
        ours = detops.sigmoid_focal_loss(x, t, reduction=reduction)
        ref = tv_sigmoid_focal_loss(x, t, reduction=reduction)
        assert ours.shape == ref.shape
        assert_close(ours.detach(), ref.detach())  # "mean" of nothing is NaN, as in torchvision
    detops.sigmoid_focal_loss(x, t, reduction="sum").backward()
    assert x.grad.shape == x.shape


def test_sigmoid_larger_than_one_block(device):
    """Several CPU blocks and Triton programs, with a ragged end."""
    x, t = logits_and_targets((3 * 2048 + 77,), torch.float64, device, seed=6)
    for reduction in REDUCTIONS:
        ours = loss_and_grads(detops.sigmoid_focal_loss, x, t, 0.25, 2.0, reduction)
        ref = loss_and_grads(tv_sigmoid_focal_loss, x, t, 0.25, 2.0, reduction)
        assert_close(ours[0], ref[0], rtol=1e-12, atol=1e-12)
        assert_close(ours[1], ref[1], rtol=1e-12, atol=1e-12)


def test_reductions_do_not_depend_on_the_thread_count():
    """CPU partial sums are per fixed block and added in block order."""
    x, t = logits_and_targets((700, 80), torch.float32, "cpu", seed=23)
    labels = random_labels(700, 80, "cpu", seed=24)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(torch.stack([
                detops.sigmoid_focal_loss(x, t, reduction="sum"),
                detops.sigmoid_focal_loss_indexed(x, labels, reduction="mean"),
                detops.softmax_focal_loss(x, labels.clamp(min=0), reduction="sum"),
            ]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


# ------------------------------------------------------------------ indexed form


def one_hot_targets(labels, num_classes, dtype):
    t = torch.zeros(labels.shape[0], num_classes, dtype=dtype, device=labels.device)
    fg = labels >= 0
    t[fg, labels[fg]] = 1
    return t


def random_labels(n, num_classes, device, seed, *, background=-1, ignore_index=-2):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    kind = torch.rand(n, generator=g)
    labels[kind < 0.6] = background
    labels[(kind >= 0.6) & (kind < 0.75)] = ignore_index
    return labels.to(device)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha,gamma", COEFFS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_indexed_equals_one_hot_form(reduction, alpha, gamma, dtype, device):
    n, c = 257, 13
    x, _ = logits_and_targets((n, c), dtype, device, seed=7)
    labels = random_labels(n, c, device, seed=8)
    keep = labels != -2
    ours = loss_and_grads(
        lambda a, _t, al, ga, red: detops.sigmoid_focal_loss_indexed(a, labels, al, ga, red), x, x, alpha, gamma,
        reduction)
    # Reference: torchvision on the kept rows with one-hot targets, zeros at the ignored rows.
    xr = x.detach().clone().requires_grad_()
    ref_loss = tv_sigmoid_focal_loss(xr[keep], one_hot_targets(labels[keep], c, dtype), alpha, gamma, reduction)
    if reduction == "none":
        full = torch.zeros_like(xr)
        full[keep] = ref_loss
        ref_loss = full
    w = torch.randn(ref_loss.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (ref_loss * w.to(dtype).to(device)).sum().backward()
    assert ours[0].shape == ref_loss.shape
    assert_close(ours[0], ref_loss.detach(), **close(dtype, reduction), msg="loss")
    assert_close(ours[1], xr.grad, **close(dtype), msg="grad")
    # And bit for bit the dense detops form on the same targets, except at
    # gamma = 0, where the dense CPU op computes torch's BCE (torchvision's bits).
    dense = detops.sigmoid_focal_loss(x[keep], one_hot_targets(labels[keep], c, dtype), alpha, gamma, "none")
    indexed = detops.sigmoid_focal_loss_indexed(x, labels, alpha, gamma, "none")[keep]
    if gamma == 0 and device == "cpu":
        assert_close(indexed, dense, **close(dtype))
    else:
        assert torch.equal(indexed, dense)


def test_indexed_custom_special_values_and_retinanet_normaliser(device):
    n, c = 300, 7
    x, _ = logits_and_targets((n, c), torch.float32, device, seed=9)
    labels = random_labels(n, c, device, seed=10, background=c, ignore_index=-100)
    ours = detops.sigmoid_focal_loss_indexed(x, labels, reduction="sum", background=c, ignore_index=-100)
    keep = labels != -100
    fg = (labels >= 0) & (labels < c)
    t = torch.zeros(n, c, device=device)
    t[fg, labels[fg]] = 1
    ref = tv_sigmoid_focal_loss(x[keep], t[keep], reduction="sum")
    assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert_close(ours / max(1, int(fg.sum())), ref / max(1, int(fg.sum())), rtol=1e-5, atol=1e-6)


def test_indexed_all_ignored_and_empty(device):
    x = torch.randn(5, 3, device=device, requires_grad=True)
    labels = torch.full((5,), -2, device=device)
    assert detops.sigmoid_focal_loss_indexed(x, labels, reduction="sum").item() == 0
    assert torch.isnan(detops.sigmoid_focal_loss_indexed(x, labels, reduction="mean"))  # like an empty mean
    out = detops.sigmoid_focal_loss_indexed(x, labels)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    empty = torch.zeros(0, 80, device=device)
    assert detops.sigmoid_focal_loss_indexed(empty, torch.zeros(0, dtype=torch.long, device=device)).shape == (0, 80)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_indexed_reduced_precision(dtype, device):
    x, _ = logits_and_targets((500, 20), dtype, device, seed=11)
    labels = random_labels(500, 20, device, seed=12)
    for reduction in REDUCTIONS:
        ours = loss_and_grads(
            lambda a, _t, al, ga, red: detops.sigmoid_focal_loss_indexed(a, labels, al, ga, red), x, x, 0.25, 2.0,
            reduction)
        ref = loss_and_grads(
            lambda a, _t, al, ga, red: detops.sigmoid_focal_loss_indexed(a, labels, al, ga, red), x.float(),
            x.float(), 0.25, 2.0, reduction)
        eps = torch.finfo(dtype).eps
        assert ours[0].dtype == dtype
        assert_close(ours[0], ref[0].to(dtype), rtol=2 * eps, atol=1e-6)
        assert_close(ours[1], ref[1].to(dtype), rtol=2 * eps, atol=1e-7)


# ------------------------------------------------------------------ softmax focal loss


def softmax_focal_reference(x, targets, alpha, gamma, reduction, ignore_index=-100):
    """float64 PyTorch: -alpha (1 - p_k)^gamma log p_k."""
    x64 = x.double()
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    logp = F.log_softmax(x64, dim=1).gather(1, safe[:, None])[:, 0]
    p = logp.exp()
    loss = -(alpha if alpha >= 0 else 1.0) * (1 - p) ** gamma * logp
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / keep.sum()
    return loss


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha,gamma", COEFFS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_equals_float64_reference(reduction, alpha, gamma, dtype, device):
    n, c = 200, 10
    x, _ = logits_and_targets((n, c), dtype, device, seed=13, scale=3.0)
    targets = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(14)).to(device)
    targets[::7] = -100
    x[0] = 100.0 * torch.arange(c, device=device) / c  # +-100 logits
    x[1] = -100.0
    x[1, 0] = 100.0
    targets[:2] = torch.tensor([c - 1, 3])
    ours = loss_and_grads(lambda a, _t, al, ga, red: detops.softmax_focal_loss(a, targets, al, ga, red), x, x,
                          alpha, gamma, reduction)
    ref = loss_and_grads(lambda a, _t, al, ga, red: softmax_focal_reference(a, targets, al, ga, red), x.double(),
                         x.double(), alpha, gamma, reduction)
    assert ours[0].dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert torch.isfinite(ours[1]).all()
    assert_close(ours[0].double(), ref[0], rtol=tol, atol=tol, msg="loss")
    assert_close(ours[1].double(), ref[1], rtol=tol, atol=tol, msg="grad")


def test_softmax_gamma0_is_cross_entropy(device):
    x = torch.randn(50, 6, device=device, dtype=torch.float64)
    targets = torch.randint(0, 6, (50,), device=device)
    targets[3] = -100  # ignored, as F.cross_entropy does
    for reduction in REDUCTIONS:
        ours = detops.softmax_focal_loss(x, targets, alpha=-1, gamma=0, reduction=reduction)
        assert_close(ours, F.cross_entropy(x, targets, reduction=reduction), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_softmax_reduced_precision(dtype, device):
    x = torch.randn(100, 9, device=device).to(dtype)
    targets = torch.randint(0, 9, (100,), device=device)
    for reduction in REDUCTIONS:
        ours = loss_and_grads(lambda a, _t, al, ga, red: detops.softmax_focal_loss(a, targets, al, ga, red), x, x,
                              0.25, 2.0, reduction)
        ref = loss_and_grads(lambda a, _t, al, ga, red: softmax_focal_reference(a, targets, al, ga, red),
                             x.double(), x.double(), 0.25, 2.0, reduction)
        eps = torch.finfo(dtype).eps
        assert ours[0].dtype == dtype
        assert_close(ours[0], ref[0].to(dtype), rtol=2 * eps, atol=1e-6)
        assert_close(ours[1], ref[1].to(dtype), rtol=2 * eps, atol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 1.5])
def test_softmax_with_grad_equals_two_passes(reduction, dtype, gamma):
    """Training's one-pass path (softmax_focal_loss_with_grad, taken on CPU when
    the logits need a gradient) gives the forward op's loss bit for bit and the
    backward op's gradient to rounding (the compiler contracts the products into
    fused multiply-adds differently in the two loops)."""
    g = torch.Generator().manual_seed(19)
    x = (torch.randn(300, 11, generator=g) * 4).to(dtype)
    targets = torch.randint(0, 11, (300,), generator=g)
    targets[::5] = -100
    loss, unit = torch.ops.detops.softmax_focal_loss_with_grad(x, targets, 0.25, gamma, reduction, -100)
    assert torch.equal(loss, torch.ops.detops.softmax_focal_loss(x, targets, 0.25, gamma, reduction, -100))
    tol = 1e-12 if dtype == torch.float64 else (1e-6 if dtype == torch.float32 else 1e-2)
    one = torch.ones((), dtype=dtype)
    assert_close(unit, torch.ops.detops.softmax_focal_loss_backward(one, x, targets, 0.25, gamma, reduction, -100),
                 rtol=tol, atol=tol)
    assert (unit[::5] == 0).all()

    xg = x.clone().requires_grad_()
    fused = detops.softmax_focal_loss(xg, targets, 0.25, gamma, reduction)
    assert torch.equal(fused.detach(), loss)
    upstream = torch.tensor(0.37, dtype=dtype)
    (grad,) = torch.autograd.grad(fused, xg, upstream)
    two_pass = torch.ops.detops.softmax_focal_loss_backward(upstream, x, targets, 0.25, gamma, reduction, -100)
    assert_close(grad, two_pass, rtol=tol, atol=tol)
    # create_graph records the backward op's graph, as the two-pass path does.
    (grad_cg,) = torch.autograd.grad(detops.softmax_focal_loss(xg, targets, 0.25, gamma, reduction), xg, upstream,
                                     create_graph=True)
    assert torch.equal(grad_cg.detach(), two_pass)


@pytest.mark.parametrize("retain_graph", [False, True])
def test_softmax_with_grad_unit_seed(retain_graph):
    """loss.backward() seeds 1: the one-pass path hands its saved gradient back
    as it is. It must equal the backward op's gradient, and the saved tensor
    must not alias inputs.grad while the graph keeps it: an in-place change of
    .grad between two backward calls of a retained graph leaves the second
    gradient intact (aliasing would give 3 * g + 3 * g)."""
    g = torch.Generator().manual_seed(23)
    x = (torch.randn(64, 9, generator=g) * 3).requires_grad_()
    targets = torch.randint(0, 9, (64,), generator=g)
    loss = detops.softmax_focal_loss(x, targets, reduction="sum")
    expected = torch.ops.detops.softmax_focal_loss_backward(torch.ones(()), x.detach(), targets, 0.25, 2.0, "sum",
                                                            -100)
    loss.backward(retain_graph=retain_graph)
    assert_close(x.grad, expected, rtol=1e-6, atol=1e-6)
    if retain_graph:
        first = x.grad.clone()
        x.grad.mul_(3)
        loss.backward()
        assert_close(x.grad, 4 * first, rtol=1e-6, atol=1e-6)


def test_softmax_with_grad_size_dispatch():
    """The one-pass path serves up to 32 MiB of logits; past that the two passes run."""
    g = torch.Generator().manual_seed(20)
    # 80 classes: 8388560 and 8388640 float32 logits; 16777120 and 16777280 bfloat16 ones
    for rows, dtype, fused in ((104857, torch.float32, True), (104858, torch.float32, False),
                               (209714, torch.bfloat16, True), (209716, torch.bfloat16, False)):
        x = torch.randn(rows, 80, generator=g).to(dtype).requires_grad_()
        targets = torch.randint(0, 80, (rows,), generator=g)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            loss = detops.softmax_focal_loss(x, targets, reduction="sum")
        names = {e.name for e in prof.events()}
        assert ("detops::softmax_focal_loss_with_grad" in names) == fused
        assert torch.equal(loss.detach(), torch.ops.detops.softmax_focal_loss(x.detach(), targets, 0.25, 2.0, "sum",
                                                                              -100)), (rows, dtype)


def test_softmax_with_grad_opcheck_and_errors():
    x = torch.randn(8, 5, dtype=torch.float64)
    sm = torch.tensor([0, 1, 4, -100, 2, 3, 3, 0])
    for reduction in ("sum", "mean"):
        torch.library.opcheck(torch.ops.detops.softmax_focal_loss_with_grad, (x, sm, 0.25, 2.0, reduction, -100))
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        torch.ops.detops.softmax_focal_loss_with_grad(x, sm, 0.25, 2.0, "none", -100)
    with pytest.raises((ValueError, IndexError, RuntimeError), match="targets"):
        torch.ops.detops.softmax_focal_loss_with_grad(x, torch.full((8,), 7), 0.25, 2.0, "sum", -100)


# ------------------------------------------------------------------ gradcheck, opcheck, compile


def test_gradcheck_all_forms():
    g = torch.Generator().manual_seed(15)
    x = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.rand(6, 5, generator=g, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([0, -1, 4, -2, 2, -1])
    sm_targets = torch.tensor([0, 1, 4, -100, 2, 3])
    for reduction in REDUCTIONS:
        for alpha, gamma in [(0.25, 2.0), (-1.0, 1.5), (0.4, 0.0), (0.3, 1.0)]:
            assert torch.autograd.gradcheck(
                lambda a, b: detops.sigmoid_focal_loss(a, b, alpha, gamma, reduction), (x, t))
            assert torch.autograd.gradcheck(
                lambda a: detops.sigmoid_focal_loss_indexed(a, labels, alpha, gamma, reduction), (x,))
            assert torch.autograd.gradcheck(
                lambda a: detops.softmax_focal_loss(a, sm_targets, alpha, gamma, reduction), (x,))


def test_opcheck_all_ops():
    g = torch.Generator().manual_seed(16)
    ops = torch.ops.detops
    for dtype in (torch.float64, torch.float32, torch.float16):
        x = torch.randn(8, 5, generator=g).to(dtype)
        t = (torch.rand(8, 5, generator=g) < 0.3).to(dtype)
        labels = torch.tensor([0, -1, 4, -2, 2, -1, 1, 3])
        sm = torch.tensor([0, 1, 4, -100, 2, 3, 3, 0])
        for reduction in REDUCTIONS:
            xg = x.clone().requires_grad_(dtype != torch.float16)
            tg = t.clone().requires_grad_(dtype == torch.float64)
            torch.library.opcheck(ops.sigmoid_focal_loss, (xg, tg, 0.25, 2.0, reduction))
            torch.library.opcheck(ops.sigmoid_focal_loss_indexed, (xg, labels, 0.25, 1.5, reduction, -1, -2))
            torch.library.opcheck(ops.softmax_focal_loss, (xg, sm, -1.0, 2.0, reduction, -100))
            grad = torch.randn(()) if reduction != "none" else torch.randn(8, 5)
            torch.library.opcheck(ops.sigmoid_focal_loss_backward, (grad.to(dtype), x, t, 0.25, 2.0, reduction, True))
            torch.library.opcheck(ops.sigmoid_focal_loss_backward, (grad.to(dtype), x, t, 0.25, 2.0, reduction, False))
            torch.library.opcheck(ops.sigmoid_focal_loss_indexed_backward,
                                  (grad.to(dtype), x, labels, 0.25, 2.0, reduction, -1, -2))
            sgrad = grad[:, 0].contiguous() if reduction == "none" else grad
            torch.library.opcheck(ops.softmax_focal_loss_backward, (sgrad.to(dtype), x, sm, 0.25, 2.0, reduction, -100))


def test_torch_compile_fullgraph():
    x, t = logits_and_targets((40, 6), torch.float32, "cpu", seed=17)
    labels = random_labels(40, 6, "cpu", seed=18)
    sm = labels.clamp(min=0)

    def step(logits, targets):
        return (detops.sigmoid_focal_loss(logits, targets, reduction="sum")
                + detops.sigmoid_focal_loss_indexed(logits, labels, reduction="mean")
                + detops.softmax_focal_loss(logits, sm).sum())

    compiled = torch.compile(step, fullgraph=True)
    assert_close(compiled(x, t), step(x, t), rtol=1e-6, atol=1e-6)
    xg = x.clone().requires_grad_()
    (grad_compiled,) = torch.autograd.grad(compiled(xg, t), xg)
    (grad_eager,) = torch.autograd.grad(step(xg, t), xg)
    assert_close(grad_compiled, grad_eager, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ Triton kernels (interpreter or GPU)


@pytest.mark.triton
def test_triton_kernels_equal_cpp(triton_device):
    from detops.kernels import sigmoid_focal_loss as K

    ops = torch.ops.detops
    for dtype in triton_dtypes(triton_device):
        x, t = logits_and_targets((24, 7), dtype, triton_device, seed=19)
        x[0, :4] = torch.tensor([100.0, -100.0, 0.0, 30.0])
        labels = random_labels(24, 7, triton_device, seed=20)
        sm = labels.clone()
        sm[sm == -1] = 3
        sm[sm == -2] = -100
        cpu = lambda v: v.cpu() if isinstance(v, torch.Tensor) else v  # noqa: E731
        tol = {torch.float64: 1e-12, torch.float32: 5e-6}.get(dtype, 2e-3)
        for reduction in REDUCTIONS:
            for alpha, gamma in [(0.25, 2.0), (-1.0, 0.0), (0.4, 1.5)]:
                grad = torch.randn(() if reduction != "none" else (24, 7)).to(dtype=dtype, device=triton_device)
                sgrad = grad[:, 0].contiguous() if reduction == "none" else grad
                if alpha < 0 and reduction == "none":  # a stride-0 gradient, as .sum() sends
                    grad = grad[0, 0].expand(24, 7)
                    sgrad = grad[:, 0]
                cases = [
                    ("sigmoid_focal_loss", (x, t, alpha, gamma, reduction)),
                    ("sigmoid_focal_loss_backward", (grad, x, t, alpha, gamma, reduction, True)),
                    ("sigmoid_focal_loss_indexed", (x, labels, alpha, gamma, reduction, -1, -2)),
                    ("sigmoid_focal_loss_indexed_backward", (grad, x, labels, alpha, gamma, reduction, -1, -2)),
                    ("softmax_focal_loss", (x, sm, alpha, gamma, reduction, -100)),
                    ("softmax_focal_loss_backward", (sgrad, x, sm, alpha, gamma, reduction, -100)),
                ]
                for name, args in cases:
                    got = getattr(K, name)(*args)
                    want = getattr(ops, name)(*[cpu(a) for a in args])
                    got = got if isinstance(got, tuple) else (got,)
                    want = want if isinstance(want, tuple) else (want,)
                    for a, b in zip(got, want):
                        assert a.dtype == b.dtype and a.shape == b.shape, name
                        assert_close(a.cpu(), b, rtol=tol, atol=tol, msg=f"{name} {dtype} {reduction} {alpha} {gamma}")


@pytest.mark.triton
def test_triton_kernels_empty_and_bad_args(triton_device):
    from detops.kernels import sigmoid_focal_loss as K

    empty = torch.zeros(0, 5, device=triton_device)
    assert K.sigmoid_focal_loss(empty, empty, 0.25, 2.0, "none").shape == (0, 5)
    assert K.sigmoid_focal_loss(empty, empty, 0.25, 2.0, "sum").item() == 0
    no_labels = torch.zeros(0, dtype=torch.long, device=triton_device)
    assert K.softmax_focal_loss(empty, no_labels, 0.25, 2.0, "none", -100).shape == (0,)
    with pytest.raises(ValueError, match="reduction"):
        K.sigmoid_focal_loss(empty, empty, 0.25, 2.0, "max")
    with pytest.raises(ValueError, match="labels"):
        K.sigmoid_focal_loss_indexed(empty, no_labels.int(), 0.25, 2.0, "none", -1, -2)


_AOT_COMPILE = """
import triton, triton.language as tl
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from detops.kernels import sigmoid_focal_loss as K

def compile_(fn, sig, consts):
    sig = {**sig, **{k: "constexpr" for k in consts}}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32))
    assert k.asm["cubin"]

for pt, acc in (("*fp32", "*fp32"), ("*bf16", "*fp32")):
    for indexed in (False, True):
        compile_(K.sigmoid_focal_forward_kernel,
                 {"x_ptr": pt, "t_ptr": pt, "labels_ptr": "*i64", "out_ptr": pt, "partial_ptr": acc, "n": "i64",
                  "cols": "i32", "ignore_index": "i32", "alpha_pos": "fp32", "alpha_neg": "fp32", "gamma": "fp32"},
                 {"INDEXED": indexed, "REDUCE": indexed, "GAMMA_KIND": 2, "COMPUTE": tl.float32, "BLOCK": 1024})
        compile_(K.sigmoid_focal_backward_kernel,
                 {"grad_ptr": pt, "scale_ptr": acc, "x_ptr": pt, "t_ptr": pt, "labels_ptr": "*i64", "gx_ptr": pt,
                  "gt_ptr": pt, "n": "i64", "cols": "i32", "ignore_index": "i32", "alpha_pos": "fp32",
                  "alpha_neg": "fp32", "alpha_grad": "fp32", "gamma": "fp32"},
                 {"INDEXED": indexed, "REDUCE": indexed, "TARGETS_GRAD": not indexed, "GAMMA_KIND": 3,
                  "COMPUTE": tl.float32, "BLOCK": 1024})
    common = {"rows": "i32", "cols": "i32", "ignore_index": "i32", "scale": "fp32", "gamma": "fp32"}
    consts = {"REDUCE": True, "GAMMA_KIND": 2, "COMPUTE": tl.float32, "ROWS": 16, "BLOCK_C": 128}
    compile_(K.softmax_focal_forward_kernel,
             {"x_ptr": pt, "labels_ptr": "*i64", "out_ptr": pt, "partial_ptr": acc, **common}, consts)
    compile_(K.softmax_focal_backward_kernel,
             {"grad_ptr": pt, "scale_ptr": acc, "x_ptr": pt, "labels_ptr": "*i64", "gx_ptr": pt, **common}, consts)
print("ok")
"""


@pytest.mark.triton
def test_triton_kernels_compile_for_sm90(tmp_path):
    """Without a GPU, Triton can still compile the kernels to a cubin for sm_90:
    this catches GPU-only type errors the interpreter does not see (bfloat16
    included, which the interpreter cannot run). Runs in a subprocess because
    TRITON_INTERPRET swaps the kernels for interpreted ones in this one."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-c", _AOT_COMPILE], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


# ------------------------------------------------------------------ bad input


def test_bad_input_messages():
    x = torch.randn(4, 3)
    t = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="shape of inputs"):
        detops.sigmoid_focal_loss(x, t[:2])
    with pytest.raises(TypeError, match="inputs must be float"):
        detops.sigmoid_focal_loss(x.long(), t)
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor"):
        detops.sigmoid_focal_loss([1.0], t)
    with pytest.raises(ValueError, match="reduction"):
        detops.sigmoid_focal_loss(x, t, reduction="max")
    with pytest.raises(ValueError, match="alpha"):
        detops.sigmoid_focal_loss(x, t, alpha=1.5)
    # A negative gamma runs, as in torchvision (issue 11); NaN stays an error.
    with pytest.raises(ValueError, match="gamma"):
        detops.sigmoid_focal_loss(x, t, gamma=float("nan"))
    with pytest.raises(ValueError, match="same device"):
        detops.sigmoid_focal_loss(x, t.to("meta"))
    with pytest.raises(ValueError, match="same device"):
        detops.sigmoid_focal_loss_indexed(x, torch.zeros(4, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="same device"):
        detops.softmax_focal_loss(x, torch.zeros(4, dtype=torch.long, device="meta"))
    # The same checks guard direct operator calls.
    with pytest.raises(ValueError, match="gamma"):
        torch.ops.detops.sigmoid_focal_loss(x, t, 0.25, -1.0, "sum")
    with pytest.raises(RuntimeError, match="reduction"):
        torch.ops.detops.sigmoid_focal_loss(x, t, 0.25, 2.0, "max")
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.detops.sigmoid_focal_loss(x, t.double(), 0.25, 2.0, "sum")


def test_bad_labels():
    x = torch.randn(4, 3)
    labels = torch.tensor([0, 1, -1, -2])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\).*found 3"):
        detops.sigmoid_focal_loss_indexed(x, torch.tensor([0, 3, -1, -2]))
    with pytest.raises(ValueError, match="found -5"):
        detops.sigmoid_focal_loss_indexed(x, torch.tensor([0, -5, -1, -2]))
    with pytest.raises(ValueError, match="found -5"):
        detops.sigmoid_focal_loss_indexed(x, torch.tensor([0, -5, -1, -2]), reduction="sum")
    with pytest.raises(ValueError, match="shape"):
        detops.sigmoid_focal_loss_indexed(x, labels[:3])
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        detops.sigmoid_focal_loss_indexed(x[0], labels)
    with pytest.raises(TypeError, match="integer"):
        detops.sigmoid_focal_loss_indexed(x, labels.float())
    with pytest.raises(ValueError, match="background must not be a class"):
        detops.sigmoid_focal_loss_indexed(x, labels, background=0)
    with pytest.raises(ValueError, match="must differ"):
        detops.sigmoid_focal_loss_indexed(x, labels, background=-2)
    with pytest.raises(ValueError, match="targets must be in"):
        detops.softmax_focal_loss(x, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="ignore_index must not be a class"):
        detops.softmax_focal_loss(x, torch.tensor([0, 1, 2, 1]), ignore_index=2)
    # int32 labels are accepted (converted).
    assert_close(detops.sigmoid_focal_loss_indexed(x, labels.int()), detops.sigmoid_focal_loss_indexed(x, labels))
