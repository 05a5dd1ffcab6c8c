// Per-box arithmetic of box encoding/decoding, shared by the CPU kernel and
// the CUDA kernel. Boxes are (x1, y1, x2, y2); codes are (dx, dy, dw, dh) as in
// torchvision.models.detection._utils (BoxCoder, encode_boxes). The order of
// operations follows torchvision's so that results agree to the last bits
// where the hardware allows (exp/log may differ by an ulp).
#pragma once

#include <cmath>

#include "common/macros.h"

namespace detops {
namespace box_coder {

// Weights (wx, wy, ww, wh) and the clip of dw/dh before exp(), in the compute type.
template <typename T>
struct CoderParams {
  T wx, wy, ww, wh, clip;
};

template <typename T>
struct Box4 {
  T v[4];
};

DETOPS_HD float exp_of(float x) { return expf(x); }
DETOPS_HD double exp_of(double x) { return exp(x); }
DETOPS_HD float log_of(float x) { return logf(x); }
DETOPS_HD double log_of(double x) { return log(x); }

// torch.clamp(x, max=clip): NaN passes through (a plain min() would drop it).
template <typename T>
DETOPS_HD T clamp_max_nan(T x, T clip) {
  return x > clip ? clip : x;
}

// ------------------------------------------------------------------ decode

// decode is split in two phases around exp() so that the CPU kernel can run
// exp over a block of values with torch's vectorised kernel; the CUDA kernel
// calls decode_forward, which chains them.

// The exponents of one code: dw / ww and dh / wh, clamped to the clip.
template <typename T>
DETOPS_HD void decode_exponents(const Box4<T>& rel, const CoderParams<T>& p, T& dw, T& dh) {
  dw = clamp_max_nan(rel.v[2] / p.ww, p.clip);
  dh = clamp_max_nan(rel.v[3] / p.wh, p.clip);
}

// One (dx, dy, dw, dh) code applied to one reference box -> (x1, y1, x2, y2),
// given exp_w = exp(dw) and exp_h = exp(dh). Same steps as BoxCoder.decode_single.
template <typename T>
DETOPS_HD Box4<T> decode_from_exp(const Box4<T>& box, const Box4<T>& rel, const CoderParams<T>& p, T exp_w,
                                  T exp_h) {
  const T width = box.v[2] - box.v[0];
  const T height = box.v[3] - box.v[1];
  const T ctr_x = box.v[0] + T(0.5) * width;
  const T ctr_y = box.v[1] + T(0.5) * height;
  const T dx = rel.v[0] / p.wx;
  const T dy = rel.v[1] / p.wy;
  const T pred_ctr_x = dx * width + ctr_x;
  const T pred_ctr_y = dy * height + ctr_y;
  const T half_w = T(0.5) * (exp_w * width);
  const T half_h = T(0.5) * (exp_h * height);
  return {{pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h}};
}

template <typename T>
DETOPS_HD Box4<T> decode_forward(const Box4<T>& box, const Box4<T>& rel, const CoderParams<T>& p) {
  T dw, dh;
  decode_exponents(rel, p, dw, dh);
  return decode_from_exp(box, rel, p, exp_of(dw), exp_of(dh));
}

// Gradient of decode: grad_rel gets d/d rel; grad_box ACCUMULATES d/d box (one
// box serves several class codes). exp_w, exp_h are those of decode_exponents.
// torch.clamp passes the gradient where x <= clip, as PyTorch's clamp backward does.
template <typename T>
DETOPS_HD void decode_backward_from_exp(const Box4<T>& box, const Box4<T>& rel, const CoderParams<T>& p, T exp_w,
                                        T exp_h, const Box4<T>& grad, Box4<T>& grad_rel, Box4<T>& grad_box) {
  const T width = box.v[2] - box.v[0];
  const T height = box.v[3] - box.v[1];
  const T dx = rel.v[0] / p.wx;
  const T dy = rel.v[1] / p.wy;
  const T dw_raw = rel.v[2] / p.ww;
  const T dh_raw = rel.v[3] / p.wh;
  // x1 = cx - w/2, x2 = cx + w/2 with cx = pred_ctr_x, w = pred_w.
  const T g_ctr_x = grad.v[0] + grad.v[2];
  const T g_ctr_y = grad.v[1] + grad.v[3];
  const T g_pred_w = T(0.5) * (grad.v[2] - grad.v[0]);
  const T g_pred_h = T(0.5) * (grad.v[3] - grad.v[1]);
  grad_rel.v[0] = g_ctr_x * width / p.wx;
  grad_rel.v[1] = g_ctr_y * height / p.wy;
  grad_rel.v[2] = dw_raw <= p.clip ? g_pred_w * exp_w * width / p.ww : T(0);
  grad_rel.v[3] = dh_raw <= p.clip ? g_pred_h * exp_h * height / p.wh : T(0);
  // pred_ctr_x = dx * width + (x1 + width / 2); pred_w = exp(dw) * width.
  const T g_width = g_ctr_x * dx + g_pred_w * exp_w + T(0.5) * g_ctr_x;
  const T g_height = g_ctr_y * dy + g_pred_h * exp_h + T(0.5) * g_ctr_y;
  grad_box.v[0] += g_ctr_x - g_width;
  grad_box.v[1] += g_ctr_y - g_height;
  grad_box.v[2] += g_width;
  grad_box.v[3] += g_height;
}

template <typename T>
DETOPS_HD void decode_backward(const Box4<T>& box, const Box4<T>& rel, const CoderParams<T>& p,
                               const Box4<T>& grad, Box4<T>& grad_rel, Box4<T>& grad_box) {
  T dw, dh;
  decode_exponents(rel, p, dw, dh);
  decode_backward_from_exp(box, rel, p, exp_of(dw), exp_of(dh), grad, grad_rel, grad_box);
}

// ------------------------------------------------------------------ encode

// encode is split in two phases around log(), as decode is around exp().

// The ratios whose logs are dw and dh: gt_w / ex_w and gt_h / ex_h.
template <typename T>
DETOPS_HD void encode_ratios(const Box4<T>& reference, const Box4<T>& proposal, T& ratio_w, T& ratio_h) {
  ratio_w = (reference.v[2] - reference.v[0]) / (proposal.v[2] - proposal.v[0]);
  ratio_h = (reference.v[3] - reference.v[1]) / (proposal.v[3] - proposal.v[1]);
}

// The code of a reference (ground-truth) box relative to a proposal, given
// log_w = log(ratio_w) and log_h = log(ratio_h). Same steps as torchvision's encode_boxes.
template <typename T>
DETOPS_HD Box4<T> encode_from_log(const Box4<T>& reference, const Box4<T>& proposal, const CoderParams<T>& p,
                                  T log_w, T log_h) {
  const T ex_w = proposal.v[2] - proposal.v[0];
  const T ex_h = proposal.v[3] - proposal.v[1];
  const T ex_ctr_x = proposal.v[0] + T(0.5) * ex_w;
  const T ex_ctr_y = proposal.v[1] + T(0.5) * ex_h;
  const T gt_w = reference.v[2] - reference.v[0];
  const T gt_h = reference.v[3] - reference.v[1];
  const T gt_ctr_x = reference.v[0] + T(0.5) * gt_w;
  const T gt_ctr_y = reference.v[1] + T(0.5) * gt_h;
  return {{p.wx * (gt_ctr_x - ex_ctr_x) / ex_w, p.wy * (gt_ctr_y - ex_ctr_y) / ex_h, p.ww * log_w, p.wh * log_h}};
}

template <typename T>
DETOPS_HD Box4<T> encode_forward(const Box4<T>& reference, const Box4<T>& proposal, const CoderParams<T>& p) {
  T ratio_w, ratio_h;
  encode_ratios(reference, proposal, ratio_w, ratio_h);
  return encode_from_log(reference, proposal, p, log_of(ratio_w), log_of(ratio_h));
}

// Adds d/d of one side of a box given the gradients of its width/height and centre.
template <typename T>
DETOPS_HD void center_size_backward(T g_ctr_x, T g_ctr_y, T g_w, T g_h, Box4<T>& out) {
  // ctr = x1 + w / 2 and w = x2 - x1.
  const T gw = g_w + T(0.5) * g_ctr_x;
  const T gh = g_h + T(0.5) * g_ctr_y;
  out.v[0] = g_ctr_x - gw;
  out.v[1] = g_ctr_y - gh;
  out.v[2] = gw;
  out.v[3] = gh;
}

template <typename T>
DETOPS_HD void encode_backward(const Box4<T>& reference, const Box4<T>& proposal, const CoderParams<T>& p,
                               const Box4<T>& grad, Box4<T>& grad_reference, Box4<T>& grad_proposal) {
  const T ex_w = proposal.v[2] - proposal.v[0];
  const T ex_h = proposal.v[3] - proposal.v[1];
  const T ex_ctr_x = proposal.v[0] + T(0.5) * ex_w;
  const T ex_ctr_y = proposal.v[1] + T(0.5) * ex_h;
  const T gt_w = reference.v[2] - reference.v[0];
  const T gt_h = reference.v[3] - reference.v[1];
  const T gt_ctr_x = reference.v[0] + T(0.5) * gt_w;
  const T gt_ctr_y = reference.v[1] + T(0.5) * gt_h;
  // dx = wx * (gt_ctr_x - ex_ctr_x) / ex_w; dw = ww * log(gt_w / ex_w).
  const T g_diff_x = grad.v[0] * p.wx / ex_w;
  const T g_diff_y = grad.v[1] * p.wy / ex_h;
  const T g_log_w = grad.v[2] * p.ww;
  const T g_log_h = grad.v[3] * p.wh;
  const T g_gt_w = g_log_w / gt_w;
  const T g_gt_h = g_log_h / gt_h;
  const T g_ex_w = -g_diff_x * (gt_ctr_x - ex_ctr_x) / ex_w - g_log_w / ex_w;
  const T g_ex_h = -g_diff_y * (gt_ctr_y - ex_ctr_y) / ex_h - g_log_h / ex_h;
  center_size_backward(g_diff_x, g_diff_y, g_gt_w, g_gt_h, grad_reference);
  center_size_backward(-g_diff_x, -g_diff_y, g_ex_w, g_ex_h, grad_proposal);
}

}  // namespace box_coder
}  // namespace detops
