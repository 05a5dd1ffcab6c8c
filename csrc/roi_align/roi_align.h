// RoI Align's entry points and argument checks, shared by the schema file and
// the CPU and CUDA registrations.
//
// Ops (boxes are (x1, y1, x2, y2) in image pixels; rois are [K, 5] with the
// batch index first):
//   roi_align(input [N,C,H,W], rois [K,5], ...) -> [K, C, PH, PW]
//   multi_scale_roi_align(features [L x [N,C,Hl,Wl]], rois [K,5], levels [K], scales [L], ...)
//       -> [K, C, PH, PW], RoI k pooled from features[levels[k]] at scales[levels[k]]
// The output has the input's memory format (channels-last in, channels-last
// out); the input gradient has the input's memory format too.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "common/checks.h"
#include "common/memory_format.h"
#include "common/roi_batch.h"
#include "roi_align/roi_align_math.h"

namespace detops {
namespace roi_align {

void check_pool_args(int64_t pooled_height, int64_t pooled_width, double spatial_scale);

// Checks the features of a multi-level call (same dtype, device, batch and
// channels) and that rois, levels and scales agree with them.
void check_multi_args(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                      at::ArrayRef<double> scales, int64_t pooled_height, int64_t pooled_width);

// make_tile_lists (RoI lists per spatial tile, for the gather-form backward):
// common/roi_batch.h.

}  // namespace roi_align
}  // namespace detops
