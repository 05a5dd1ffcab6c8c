// Per-RoI arithmetic of RoI Pool (max pooling over quantised bins), shared by
// the CPU and CUDA kernels. It follows torchvision's kernels: box corners are
// rounded to map pixels, bins are floor/ceil of the bin edges clamped to the
// map, an empty bin gives 0 and argmax -1.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace detops {
namespace roi_pool {

template <typename T>
struct PoolRoi {
  int64_t start_h, start_w;
  T bin_h, bin_w;
};

struct PoolBin {
  int64_t hstart, hend, wstart, wend;
  DETOPS_HD bool empty() const { return hend <= hstart || wend <= wstart; }
};

// Float to index; far-out values are clamped first so the cast is defined
// (the map is never that large, so results are unchanged).
template <typename T>
DETOPS_HD int64_t to_index(T v) {
  const T limit = T(1099511627776.0);  // 2^40
  if (!(v > -limit)) return -1099511627776LL;
  if (v > limit) return 1099511627776LL;
  return static_cast<int64_t>(v);
}

template <typename T>
DETOPS_HD PoolRoi<T> pool_roi(T x1, T y1, T x2, T y2, T spatial_scale, int64_t pooled_h, int64_t pooled_w) {
  PoolRoi<T> r;
  r.start_w = to_index(round(x1 * spatial_scale));
  r.start_h = to_index(round(y1 * spatial_scale));
  const int64_t end_w = to_index(round(x2 * spatial_scale));
  const int64_t end_h = to_index(round(y2 * spatial_scale));
  // Malformed RoIs are forced to be 1x1.
  const int64_t roi_w = max2<int64_t>(end_w - r.start_w + 1, 1);
  const int64_t roi_h = max2<int64_t>(end_h - r.start_h + 1, 1);
  r.bin_h = T(roi_h) / T(pooled_h);
  r.bin_w = T(roi_w) / T(pooled_w);
  return r;
}

template <typename T>
DETOPS_HD PoolBin pool_bin(const PoolRoi<T>& r, int64_t ph, int64_t pw, int64_t height, int64_t width) {
  PoolBin b;
  b.hstart = to_index(floor(T(ph) * r.bin_h));
  b.wstart = to_index(floor(T(pw) * r.bin_w));
  b.hend = to_index(ceil(T(ph + 1) * r.bin_h));
  b.wend = to_index(ceil(T(pw + 1) * r.bin_w));
  b.hstart = min2<int64_t>(max2<int64_t>(b.hstart + r.start_h, 0), height);
  b.hend = min2<int64_t>(max2<int64_t>(b.hend + r.start_h, 0), height);
  b.wstart = min2<int64_t>(max2<int64_t>(b.wstart + r.start_w, 0), width);
  b.wend = min2<int64_t>(max2<int64_t>(b.wend + r.start_w, 0), width);
  return b;
}

// The bins [lo, hi) along one axis whose span can hold offset u from the
// RoI's start: bin p spans [floor(p * bin), ceil((p + 1) * bin)), so
// u / bin - 1 < p < (u + 1) / bin; widened by one each side for rounding.
// pool_bin still decides exactly, so a sum over these bins equals (bit for
// bit, same order) the sum over all bins.
template <typename T>
DETOPS_HD void bins_holding(int64_t u, T bin, int64_t pooled, int64_t& lo, int64_t& hi) {
  lo = max2<int64_t>(to_index(floor(T(u) / bin)) - 1, 0);
  hi = min2<int64_t>(to_index(ceil(T(u + 1) / bin)) + 1, pooled);
}

// The running maximum's start: 0 for an empty bin, else -FLT_MAX (as torchvision).
template <typename T>
DETOPS_HD T pool_init(const PoolBin& b) {
  return b.empty() ? T(0) : T(-FLT_MAX);
}

}  // namespace roi_pool
}  // namespace detops
