// RoI Pool's entry points, shared by the schema file and the CPU and CUDA
// registrations.
//   roi_pool(input [N,C,H,W], rois [K,5], ...) -> (output [K,C,PH,PW], argmax [K,C,PH,PW] int64)
// argmax is the index h * W + w within the (image, channel) plane, -1 for an
// empty bin. Output and argmax have the input's memory format.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/checks.h"
#include "common/memory_format.h"
#include "common/roi_batch.h"
#include "roi_pool/roi_pool_math.h"

namespace detops {
namespace roi_pool {

void check_forward_args(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                        int64_t pooled_width);
void check_backward_args(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                         int64_t pooled_height, int64_t pooled_width);

}  // namespace roi_pool
}  // namespace detops
