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

// RoI lists per spatial tile, for the gather-form (deterministic) backward:
// each map element visits only the RoIs whose samples may reach its tile.
// Built with tensor ops on the RoIs' device (no host sync).
constexpr int64_t kTile = 16;  // tile side in map elements (kTileSide in roi_align_cuda.h)

struct TileLists {
  at::Tensor rois;     // [P] int64: RoI indices, grouped by key, ascending RoI order within a key
  at::Tensor offsets;  // [num_levels * N * tiles_y * tiles_x + 1] int64
  int64_t tiles_y = 0, tiles_x = 0;
};

// key of element (level, n, y, x) = ((level * N + n) * tiles_y + y / kTile) * tiles_x + x / kTile.
// rois: [K, 5] floating; levels: [K] int64 or undefined (all level 0). RoIs
// with a batch index outside [0, N) or a bad level are left out.
TileLists make_tile_lists(const at::Tensor& rois, const at::Tensor& levels, at::ArrayRef<double> scales, int64_t N,
                          int64_t max_height, int64_t max_width, bool aligned);

}  // namespace roi_align
}  // namespace detops
