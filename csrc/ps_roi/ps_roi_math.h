// Per-RoI arithmetic of the position-sensitive RoI ops (R-FCN's ps_roi_pool,
// Light-Head R-CNN's ps_roi_align), shared by the CPU and CUDA kernels. Output
// channel c of bin (ph, pw) reads input channel (c * PH + ph) * PW + pw, and
// otherwise each bin is pooled as by the plain RoI ops, whose math headers
// hold the sampling and binning this file reuses. The differences from those
// ops follow torchvision's PS kernels operation by operation, so CPU results
// equal torchvision's bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"
#include "roi_align/roi_align_math.h"
#include "roi_pool/roi_pool_math.h"

namespace detops {
namespace ps_roi {

using roi_align::AxisSample;
using roi_align::RoiGeometry;
using roi_pool::PoolBin;
using roi_pool::PoolRoi;

// torchvision's channel_mapping: the input channel that output channel c of
// bin (ph, pw) reads.
DETOPS_HD int64_t input_channel(int64_t c, int64_t ph, int64_t pw, int64_t pooled_h, int64_t pooled_w) {
  return (c * pooled_h + ph) * pooled_w + pw;
}

// ps_roi_align: RoI Align's half-pixel geometry (no minimum size), but the
// divisor is grid_h * grid_w unclamped, as torchvision's PS kernel forms it:
// a box of zero height or width with adaptive sampling has no samples and a
// divisor of 0, so its bins are 0 / 0 = NaN there and here.
template <typename T>
DETOPS_HD RoiGeometry<T> align_geometry(T x1, T y1, T x2, T y2, T spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                        int64_t sampling_ratio) {
  RoiGeometry<T> g =
      roi_align::roi_geometry<T>(x1, y1, x2, y2, spatial_scale, pooled_h, pooled_w, sampling_ratio, true);
  g.count = T(g.grid_h * g.grid_w);
  return g;
}

// ps_roi_pool: the corners are rounded to map pixels and a RoI is at least
// 1x1, but its size is end - start (roi_pool's is end - start + 1).
template <typename T>
DETOPS_HD PoolRoi<T> pool_geometry(T x1, T y1, T x2, T y2, T spatial_scale, int64_t pooled_h, int64_t pooled_w) {
  PoolRoi<T> r;
  r.start_w = roi_pool::to_index(round(x1 * spatial_scale));
  r.start_h = roi_pool::to_index(round(y1 * spatial_scale));
  const int64_t end_w = roi_pool::to_index(round(x2 * spatial_scale));
  const int64_t end_h = roi_pool::to_index(round(y2 * spatial_scale));
  const int64_t roi_w = max2<int64_t>(end_w - r.start_w, 1);
  const int64_t roi_h = max2<int64_t>(end_h - r.start_h, 1);
  r.bin_h = T(roi_h) / T(pooled_h);
  r.bin_w = T(roi_w) / T(pooled_w);
  return r;
}

// torchvision's PS forward clips bin edges to [0, size - 1], so the last row
// and column of the map never enter a bin (its backward clips to [0, size]
// and so is not the gradient of its forward; detops' backward is, see
// ps_roi_cpu.cpp).
template <typename T>
DETOPS_HD PoolBin ps_pool_bin(const PoolRoi<T>& r, int64_t ph, int64_t pw, int64_t height,
                              int64_t width) {
  return roi_pool::pool_bin(r, ph, pw, height - 1, width - 1);
}

// The bin's divisor as torchvision forms it ((hend - hstart) * (wend - wstart)).
template <typename T>
DETOPS_HD T bin_area(const PoolBin& b) {
  return T((b.hend - b.hstart) * (b.wend - b.wstart));
}

}  // namespace ps_roi
}  // namespace detops
