// Per-RoI arithmetic of RoI Align, shared by the CPU and CUDA kernels so that
// the CPU tests prove the CUDA kernel's numbers. It follows torchvision's
// kernels operation by operation (same sample positions, same clamping, same
// products of the bilinear weights), so results agree to the last bits.
//
// Bilinear sampling on RoI Align's regular grid is separable: a sample at
// (y, x) reads the taps {y_low, y_high} x {x_low, x_high} with weights
// {hy, ly} x {hx, lx}, and it is dropped when y or x lies outside the map.
// So the kernels compute one list of row samples per output row (ph) and one
// list of column samples per output column (pw) and form the products.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace detops {
namespace roi_align {

// One sample along one axis: its two taps and their weights.
template <typename T>
struct AxisSample {
  int64_t low;
  int64_t high;
  T w_low;
  T w_high;
};

// torchvision's bilinear_interpolate along one axis. Returns false when the
// sample lies outside [-1, size] or is NaN (it then contributes nothing).
template <typename T>
DETOPS_HD bool axis_sample(T pos, int64_t size, AxisSample<T>& s) {
  if (size <= 0 || !(pos >= T(-1.0) && pos <= T(size))) return false;
  if (pos <= T(0)) pos = T(0);
  int64_t low = static_cast<int64_t>(pos);
  int64_t high;
  if (low >= size - 1) {
    high = low = size - 1;
    pos = T(low);
  } else {
    high = low + 1;
  }
  const T l = pos - T(low);
  s.low = low;
  s.high = high;
  s.w_low = T(1) - l;
  s.w_high = l;
  return true;
}

// The four tap weights of the sample (y, x), low/low, low/high, high/low,
// high/high, as torchvision forms them (products of the axis weights). Its
// value is w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4, added in that order; the
// CPU kernels keep that order (and no FMA contraction), so that their results
// equal torchvision's bit for bit.
template <typename T>
struct SampleWeights {
  T w1, w2, w3, w4;
};

template <typename T>
DETOPS_HD SampleWeights<T> sample_weights(const AxisSample<T>& y, const AxisSample<T>& x) {
  return {y.w_low * x.w_low, y.w_low * x.w_high, y.w_high * x.w_low, y.w_high * x.w_high};
}

// The geometry of one RoI on its feature map, as torchvision computes it.
template <typename T>
struct RoiGeometry {
  T start_h, start_w;  // top-left corner in feature-map pixels
  T bin_h, bin_w;      // size of one output bin
  int64_t grid_h, grid_w;  // samples per bin along each axis (<= 0: none)
  T count;                 // the divisor of the average: max(grid_h * grid_w, 1)
};

template <typename T>
DETOPS_HD RoiGeometry<T> roi_geometry(T x1, T y1, T x2, T y2, T spatial_scale, int64_t pooled_h,
                                      int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  RoiGeometry<T> g;
  g.start_w = x1 * spatial_scale - offset;
  g.start_h = y1 * spatial_scale - offset;
  const T end_w = x2 * spatial_scale - offset;
  const T end_h = y2 * spatial_scale - offset;
  T roi_w = end_w - g.start_w;
  T roi_h = end_h - g.start_h;
  if (!aligned) {
    // Legacy behaviour: malformed RoIs are forced to be at least 1x1.
    roi_w = max2(roi_w, T(1));
    roi_h = max2(roi_h, T(1));
  }
  g.bin_h = roi_h / T(pooled_h);
  g.bin_w = roi_w / T(pooled_w);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(roi_h / T(pooled_h)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(roi_w / T(pooled_w)));
  const int64_t n = g.grid_h * g.grid_w;
  g.count = T(n > 1 ? n : 1);
  return g;
}

// Position of sample i (of grid) in bin p along an axis.
template <typename T>
DETOPS_HD T sample_pos(T start, T bin, int64_t p, int64_t i, int64_t grid) {
  return start + T(p) * bin + T(static_cast<float>(i) + .5f) * bin / T(grid);
}

// The total weight that the samples of bin p put on map index idx along one
// axis (0 when none touch it). Used by gather-form (deterministic) backward
// kernels, which visit each map element once.
template <typename T>
DETOPS_HD T axis_weight_at(T start, T bin, int64_t p, int64_t grid, int64_t size, int64_t idx) {
  T w = T(0);
  for (int64_t i = 0; i < grid; ++i) {
    AxisSample<T> s;
    if (!axis_sample(sample_pos(start, bin, p, i, grid), size, s)) continue;
    if (s.low == idx) w += s.w_low;
    if (s.high == idx) w += s.w_high;
  }
  return w;
}

// The gradient that one RoI sends to map element (y, x) of its plane, in
// gather form: sum over bins of grad[ph, pw] * Wy(ph, y) * Wx(pw, x) / count,
// grad[ph, pw] = gr[ph * gH + pw * gW]. Equal to the sum of the scatter-form
// contributions; the deterministic CUDA backward evaluates it per element and
// the CPU op _roi_align_backward_gather lets the tests check it.
template <typename T>
DETOPS_HD T gather_roi_grad(const RoiGeometry<T>& g, int64_t pooled_h, int64_t pooled_w, int64_t height,
                            int64_t width, int64_t y, int64_t x, const T* gr, int64_t gH, int64_t gW) {
  if (g.grid_h <= 0 || g.grid_w <= 0) return T(0);
  // Quick reject: samples lie between start and start + bins * bin (either
  // order: bins are negative for inverted aligned boxes) and touch indices
  // within 1 of themselves; indices 0 and 1 also take the samples clamped
  // from [-1, 0].
  const T y_end = g.start_h + g.bin_h * T(pooled_h), x_end = g.start_w + g.bin_w * T(pooled_w);
  const T y_lo = min2(g.start_h, y_end), y_hi = max2(g.start_h, y_end);
  const T x_lo = min2(g.start_w, x_end), x_hi = max2(g.start_w, x_end);
  if ((T(y) + T(1) < y_lo && y > 1) || T(y) - T(1) > y_hi) return T(0);
  if ((T(x) + T(1) < x_lo && x > 1) || T(x) - T(1) > x_hi) return T(0);
  T sum = T(0);
  for (int64_t ph = 0; ph < pooled_h; ++ph) {
    const T wy = axis_weight_at(g.start_h, g.bin_h, ph, g.grid_h, height, y);
    if (wy == T(0)) continue;
    for (int64_t pw = 0; pw < pooled_w; ++pw) {
      const T wx = axis_weight_at(g.start_w, g.bin_w, pw, g.grid_w, width, x);
      if (wx == T(0)) continue;
      sum += gr[ph * gH + pw * gW] * wy * wx;
    }
  }
  return sum / g.count;
}

}  // namespace roi_align
}  // namespace detops
