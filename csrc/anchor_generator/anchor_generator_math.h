// Index arithmetic of anchor generation, shared by the CPU kernel and the CUDA
// kernel. The anchors of one image are the levels' grids one after another
// (torchvision's order): within level l, anchor ((y * W_l + x) * A_l + a) is
// cell anchor a shifted by (x * stride_w, y * stride_h, x * stride_w, y * stride_h).
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace detops {
namespace anchor_generator {

// One launch covers every level; the table travels by value as a kernel
// argument, so the number of levels is bounded (FPNs have 5 or 6).
constexpr int kMaxLevels = 16;

struct LevelTable {
  int num_levels = 0;
  int64_t anchors_per_image = 0;
  int64_t begin[kMaxLevels + 1] = {};  // first anchor of each level in an image; begin[L] = anchors_per_image
  int64_t width[kMaxLevels] = {};      // grid width W_l
  int64_t num_cell[kMaxLevels] = {};   // cell anchors per location A_l
  int64_t cell_begin[kMaxLevels] = {}; // first row of level l in the concatenated cell anchors
  int64_t stride_h[kMaxLevels] = {};
  int64_t stride_w[kMaxLevels] = {};
};

// Where anchor `index` (0 <= index < anchors_per_image) of an image lies.
struct AnchorSite {
  int level;
  int64_t cell;  // row of the concatenated cell anchors
  int64_t x, y;  // grid position
};

DETOPS_HD AnchorSite locate(const LevelTable& t, int64_t index) {
  int l = 0;
  while (l + 1 < t.num_levels && index >= t.begin[l + 1]) ++l;  // skips empty levels too
  const int64_t local = index - t.begin[l];
  const int64_t position = local / t.num_cell[l];
  const int64_t a = local - position * t.num_cell[l];
  const int64_t y = position / t.width[l];
  return {l, t.cell_begin[l] + a, position - y * t.width[l], y};
}

// The shifts are integers (torchvision builds them as int32 aranges times the
// stride) that torch converts to the anchors' dtype S before adding the cell
// anchor in S's compute type T, rounding the sum back to S. Callers pass the
// shift already rounded to S and widened to T.
template <typename T>
DETOPS_HD T shifted(T shift, T cell) {
  return shift + cell;
}

}  // namespace anchor_generator
}  // namespace detops
