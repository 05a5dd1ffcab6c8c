// Mask pasting entry points, shared by the schema file and the CPU and CUDA
// registrations.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/checks.h"
#include "paste_masks/paste_masks_math.h"

namespace detops {
namespace paste_masks {

// masks [N, 1, M_h, M_w] floating, boxes [N, 4] int64, image_sizes [N, 2]
// int64, one device; height, width, padding >= 0.
void check_args(const at::Tensor& masks, const at::Tensor& boxes, const at::Tensor& image_sizes, int64_t height,
                int64_t width, int64_t padding);

}  // namespace paste_masks
}  // namespace detops
