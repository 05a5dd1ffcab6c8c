// Per-element arithmetic of corner pooling (CornerNet's directional cumulative
// max), shared by the CPU and CUDA kernels.
//
// A [N, C, H, W] map is scanned as lanes: outer x inner lanes of length L,
// element (o, l, i) at o * s_outer + start + l * step + i * s_inner, where the
// scan visits l = 0, 1, ..., L - 1. "bottom" and "right" scan down / rightward
// (out = running max of the rows / columns at or above / left of each point);
// "top" and "left" scan upward / leftward (step < 0). The tie and NaN rule is
// torch.cummax's, so the gradient goes where cummax's indices point: a value
// equal to the running max (or a NaN) becomes the new argmax.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace detops {
namespace corner_pool {

enum Direction : int64_t { kTop = 0, kLeft = 1, kBottom = 2, kRight = 3 };

struct ScanGeometry {
  int64_t outer, L, inner;
  int64_t s_outer, start, step, s_inner;  // element strides; step is signed
};

// Geometry of a contiguous tensor stored NCHW or channels-last (NHWC).
DETOPS_HD ScanGeometry scan_geometry(int64_t N, int64_t C, int64_t H, int64_t W, bool channels_last,
                                     int64_t direction) {
  const bool vertical = direction == kTop || direction == kBottom;
  const bool reverse = direction == kTop || direction == kLeft;
  ScanGeometry g;
  int64_t s_line;
  if (!channels_last) {
    // Lanes across the other spatial axis of one (n, c) plane.
    g.outer = N * C;
    g.s_outer = H * W;
    g.L = vertical ? H : W;
    s_line = vertical ? W : 1;
    g.inner = vertical ? W : H;
    g.s_inner = vertical ? 1 : W;
  } else if (vertical) {
    // One image's whole [W, C] row is a run of contiguous lanes.
    g.outer = N;
    g.s_outer = H * W * C;
    g.L = H;
    s_line = W * C;
    g.inner = W * C;
    g.s_inner = 1;
  } else {
    g.outer = N * H;
    g.s_outer = W * C;
    g.L = W;
    s_line = C;
    g.inner = C;
    g.s_inner = 1;
  }
  g.start = reverse ? (g.L - 1) * s_line : 0;
  g.step = reverse ? -s_line : s_line;
  return g;
}

template <typename T>
DETOPS_HD bool is_nan(T x) {
  return x != x;
}

// Whether x, met after a running max `best`, becomes the new max (cummax's rule).
template <typename T>
DETOPS_HD bool takes(T x, T best) {
  return is_nan(x) || (!is_nan(best) && x >= best);
}

// Whether the forward pass took x at this point, read back from its output:
// out == x exactly when x became the running max (a smaller x leaves a larger
// out), and NaN inputs always take.
template <typename T>
DETOPS_HD bool took(T x, T out) {
  return x == out || is_nan(x);
}

}  // namespace corner_pool
}  // namespace detops
