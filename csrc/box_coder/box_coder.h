// Box encoding/decoding entry points, shared by the schema file and the CPU
// and CUDA registrations.
#pragma once

#include <ATen/core/Tensor.h>

#include "box_coder/box_coder_math.h"
#include "common/checks.h"

namespace detops {
namespace box_coder {

// Checks weights (4 finite, non-zero values) and returns them with the clip.
CoderParams<double> make_params(at::ArrayRef<double> weights, double bbox_xform_clip, const char* op);

// rel_codes [N, 4K] and boxes [N, 4] of one floating dtype on one device.
void check_decode_args(const at::Tensor& rel_codes, const at::Tensor& boxes);
// reference_boxes [N, 4] and proposals [N, 4] of one floating dtype on one device.
void check_encode_args(const at::Tensor& reference_boxes, const at::Tensor& proposals);
void check_grad(const at::Tensor& grad, const at::Tensor& like);

template <typename T>
CoderParams<T> cast_params(const CoderParams<double>& p) {
  return {T(p.wx), T(p.wy), T(p.ww), T(p.wh), T(p.clip)};
}

}  // namespace box_coder
}  // namespace detops
