"""Transposed-convolution upsampling vs torch (torchvision has no such op):
FCN's bilinear heads (21 classes, 512x512 image, depthwise kernel/stride 4/2,
16/8, 64/32 from the 1/32 and 1/8 maps, and FCN-8s' fused crop + skip add), the
Mask R-CNN mask-head deconvolution (256 -> 256, 2/2, bias + ReLU, 14x14 ->
28x28) and a U-Net decoder up-convolution (2/2, dense)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import detops
from detops.bench.harness import BenchCase
from detops.nn import bilinear_kernel


def _fwd_bwd(fn, tensors):
    """A step that runs fn forward and backward to the tensors that need gradients."""
    leaves = [t.detach().clone().requires_grad_(need) if t is not None else None for t, need in tensors]
    wanted = [t for t in leaves if t is not None and t.requires_grad]

    def step():
        out = fn(*leaves)
        return torch.autograd.grad(out, wanted, torch.ones_like(out))

    return step


def _case(name, size, ours, ref, params, compile_ok=True):
    return BenchCase(
        op="conv_transpose2d", name=name, size=size, detops=ours, baseline=ref, baseline_name="torch",
        compiled=(lambda ref=ref: _compiled(ref)) if compile_ok else None, params=params,
    )


def _compiled(step):
    compiled = torch.compile(step)
    return lambda: compiled()


def cases(device: str, quick: bool) -> list[BenchCase]:
    g = torch.Generator().manual_seed(0)
    out: list[BenchCase] = []
    classes = 21

    # ---- FCN bilinear heads (depthwise, fixed bilinear weights: gradient to the input)
    maps = [(16, "1/32")] if quick else [(16, "1/32"), (64, "1/8")]
    kernels = [(4, 2), (16, 8), (64, 32)]
    for hw, where in maps:
        x = torch.randn(1, classes, hw, hw, generator=g).to(device)
        for k, s in kernels:
            if hw == 64 and k == 64 and device == "cpu":
                continue  # a 2080x2080x21 output: too slow for the CPU run
            w = bilinear_kernel(k).expand(classes, 1, k, k).contiguous().to(device)
            size = f"21x{hw}x{hw} ({where}) k{k}/s{s}"
            params = dict(n=1, c=classes, hw=hw, k=k, s=s)
            out.append(_case(
                "fcn depthwise fwd", size,
                lambda x=x, w=w, s=s: detops.conv_transpose2d(x, w, stride=s, groups=classes),
                lambda x=x, w=w, s=s: F.conv_transpose2d(x, w, stride=s, groups=classes), params,
                compile_ok=False,
            ))
            if quick and k == 64:
                continue  # torch takes ~0.1 s per backward here: full runs only
            ours = lambda a, b, s=s: detops.conv_transpose2d(a, b, stride=s, groups=classes)  # noqa: E731
            ref = lambda a, b, s=s: F.conv_transpose2d(a, b, stride=s, groups=classes)  # noqa: E731
            out.append(_case(
                "fcn depthwise fwd+bwd (learnable)", size,
                _fwd_bwd(ours, [(x, True), (w, True)]), _fwd_bwd(ref, [(x, True), (w, True)]), params,
                compile_ok=False,
            ))

    # ---- FCN-8s fused upsample + crop + skip add: upscore2 (k4/s2) + crop(score_pool4, 5)
    score_fr = torch.randn(1, classes, 16, 16, generator=g).to(device)
    score_pool4 = torch.randn(1, classes, 44, 44, generator=g).to(device)
    w4 = bilinear_kernel(4).expand(classes, 1, 4, 4).contiguous().to(device)

    def fused_pool4():
        return detops.upsample_add(score_fr, score_pool4, w4, stride=2, skip_offset=5, groups=classes)

    def unfused_pool4():
        up = F.conv_transpose2d(score_fr, w4, stride=2, groups=classes)
        return up + score_pool4[:, :, 5 : 5 + up.shape[2], 5 : 5 + up.shape[3]]

    out.append(_case("fcn8s upsample+crop+add", "21x16x16 k4/s2, skip 44x44 @5", fused_pool4, unfused_pool4,
                     dict(k=4, s=2)))
    # FCN-8s final upscore8 (k16/s8) from the 1/8 map, cropped at 31 to the image
    fuse = torch.randn(1, classes, 64 if not quick else 32, 64 if not quick else 32, generator=g).to(device)
    w16 = bilinear_kernel(16).expand(classes, 1, 16, 16).contiguous().to(device)
    img = 8 * fuse.shape[2] - 48

    def fused_final():
        return detops.upsample_add(fuse, None, w16, stride=8, crop=31, groups=classes, output_size=(img, img))

    def unfused_final():
        up = F.conv_transpose2d(fuse, w16, stride=8, groups=classes)
        return up[:, :, 31 : 31 + img, 31 : 31 + img].contiguous()

    out.append(_case("fcn8s upscore8 + crop", f"21x{fuse.shape[2]}^2 k16/s8 -> {img}^2", fused_final,
                     unfused_final, dict(k=16, s=8)))

    # ---- Mask R-CNN mask head: ConvTranspose2d(256, 256, 2, 2) + ReLU on 14x14 RoI features
    rois_list = [8] if quick else [100, 512]
    wm = (torch.randn(256, 256, 2, 2, generator=g) * 0.05).to(device)
    bm = torch.randn(256, generator=g).to(device)
    for rois in rois_list:
        x = torch.randn(rois, 256, 14, 14, generator=g).to(device)
        size = f"{rois}x256x14x14 -> 28x28"
        params = dict(rois=rois)
        out.append(_case(
            "mask head deconv+relu fwd", size,
            lambda x=x: detops.conv_transpose2d(x, wm, bm, stride=2, activation="relu"),
            lambda x=x: F.relu(F.conv_transpose2d(x, wm, bm, stride=2)), params,
        ))
        if rois <= 100:
            ours = lambda a, b, c: detops.conv_transpose2d(a, b, c, stride=2, activation="relu")  # noqa: E731
            ref = lambda a, b, c: F.relu(F.conv_transpose2d(a, b, c, stride=2))  # noqa: E731
            out.append(_case(
                "mask head deconv+relu fwd+bwd", size,
                _fwd_bwd(ours, [(x, True), (wm, True), (bm, True)]),
                _fwd_bwd(ref, [(x, True), (wm, True), (bm, True)]), params, compile_ok=False,
            ))

    # ---- U-Net decoder stage: ConvTranspose2d(256, 128, 2, stride 2) on the 1/4 map
    hw = 32 if quick else 64
    xu = torch.randn(1, 256, hw, hw, generator=g).to(device)
    wu = (torch.randn(256, 128, 2, 2, generator=g) * 0.05).to(device)
    bu = torch.randn(128, generator=g).to(device)
    size = f"256x{hw}x{hw} -> 128x{2 * hw}x{2 * hw}"
    out.append(_case("unet up-conv fwd", size, lambda: detops.conv_transpose2d(xu, wu, bu, stride=2),
                     lambda: F.conv_transpose2d(xu, wu, bu, stride=2), dict(hw=hw)))
    ours = lambda a, b, c: detops.conv_transpose2d(a, b, c, stride=2)  # noqa: E731
    ref = lambda a, b, c: F.conv_transpose2d(a, b, c, stride=2)  # noqa: E731
    out.append(_case("unet up-conv fwd+bwd", size, _fwd_bwd(ours, [(xu, True), (wu, True), (bu, True)]),
                     _fwd_bwd(ref, [(xu, True), (wu, True), (bu, True)]), dict(hw=hw), compile_ok=False))
    # the same layer on a channels-last map (both sides keep that layout)
    xc = xu.contiguous(memory_format=torch.channels_last)
    out.append(_case("unet up-conv fwd", size + " channels-last",
                     lambda: detops.conv_transpose2d(xc, wu, bu, stride=2),
                     lambda: F.conv_transpose2d(xc, wu, bu, stride=2), dict(hw=hw, channels_last=True),
                     compile_ok=False))
    out.append(_case("unet up-conv fwd+bwd", size + " channels-last",
                     _fwd_bwd(ours, [(xc, True), (wu, True), (bu, True)]),
                     _fwd_bwd(ref, [(xc, True), (wu, True), (bu, True)]), dict(hw=hw, channels_last=True),
                     compile_ok=False))
    return out
