// Position-sensitive RoI ops: entry points shared by the schema file and the
// CPU and CUDA registrations. Schemas match torchvision's (so that
// detops.patch_torchvision() can register these ops as torchvision's kernels):
//   ps_roi_align(input [N,C,H,W], rois [K,5], spatial_scale, PH, PW, sampling_ratio)
//       -> (output [K, C/(PH*PW), PH, PW], channel_mapping [K, C/(PH*PW), PH, PW] int32)
//   ps_roi_pool(input, rois, spatial_scale, PH, PW) -> (output, channel_mapping)
//   ps_roi_align_backward / ps_roi_pool_backward(grad, rois, channel_mapping, ..., N, C, H, W)
//       -> grad_input [N, C, H, W]
// Outputs and gradients are contiguous (NCHW) whatever the input's memory
// format, as torchvision's (its fake kernels promise that layout to
// torch.compile). channel_mapping holds (c * PH + ph) * PW + pw, the input
// channel each output element read; the backward kernels use that fixed
// layout, so the tensor is checked but not read.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/checks.h"
#include "common/roi_batch.h"
#include "ps_roi/ps_roi_math.h"

namespace detops {
namespace ps_roi {

// C / (PH * PW), after checking the input, rois and pooling arguments.
int64_t check_forward_args(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                           int64_t pooled_w);
// C / (PH * PW), after checking grad against rois, channel_mapping and the map's shape.
int64_t check_backward_args(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& channel_mapping,
                            double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                            int64_t channels, int64_t height, int64_t width);

}  // namespace ps_roi
}  // namespace detops
