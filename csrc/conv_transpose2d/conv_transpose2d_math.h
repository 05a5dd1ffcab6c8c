// Index math of the transposed convolution, shared by the CPU (.cpp) and CUDA
// (.cu) kernels. One spatial axis at a time (rows and columns use the same
// functions). Dilation is 1.
//
// Conventions. A transposed convolution with stride s and kernel k sends input
// pixel i through tap t to position i * s + t of the uncropped output; the
// returned output is the window [offset, offset + out_size) of it (offset is
// torch's `padding`, out_size covers output_padding and any FCN-style crop).
// So output pixel o receives input i through tap t when
//     o + offset == i * s + t,  0 <= t < k,  0 <= i < in_size.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace detops {
namespace conv_transpose2d {

// The activation applied after bias (and skip) addition.
enum class Activation : int { kNone = 0, kReLU = 1 };

template <typename T>
DETOPS_HD T activate(Activation act, T v) {
  // v < 0 ? 0 : v keeps NaN (as torch's relu does) and compiles to a branch-free max.
  return act == Activation::kReLU ? (v < T(0) ? T(0) : v) : v;
}

// The taps reaching one output position, in gather form: taps t = first_tap +
// j * s meet inputs i = first_input - j, for j in [0, count).
struct TapRange {
  int64_t first_tap;
  int64_t first_input;
  int64_t count;
};

DETOPS_HD TapRange gather_taps(int64_t o, int64_t offset, int64_t stride, int64_t kernel, int64_t in_size) {
  const int64_t pos = o + offset;  // >= 0: offsets are non-negative
  int64_t tap = pos % stride;
  int64_t input = pos / stride;
  // Skip taps whose input lies past the end (only near the bottom/right border).
  if (input >= in_size) {
    const int64_t skip = input - (in_size - 1);
    tap += skip * stride;
    input -= skip;
  }
  int64_t count = 0;
  if (tap < kernel && input >= 0) {
    const int64_t by_kernel = (kernel - 1 - tap) / stride + 1;
    const int64_t by_input = input + 1;
    count = by_kernel < by_input ? by_kernel : by_input;
  }
  return {tap, input, count};
}

// The taps [lo, hi) of input i that land inside the output window [0, out_size):
// output position o = i * s + t - offset.
struct Span {
  int64_t lo;
  int64_t hi;
};

DETOPS_HD Span scatter_taps(int64_t i, int64_t offset, int64_t stride, int64_t kernel, int64_t out_size) {
  const int64_t base = i * stride - offset;  // output position of tap 0
  int64_t lo = -base;
  int64_t hi = out_size - base;
  if (lo < 0) lo = 0;
  if (hi > kernel) hi = kernel;
  if (hi < lo) hi = lo;
  return {lo, hi};
}

// floor(a / b) for b > 0 and any a.
DETOPS_HD int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// The inputs [lo, hi) whose tap t lands inside the output window [0, out_size).
DETOPS_HD Span inputs_of_tap(int64_t tap, int64_t offset, int64_t stride, int64_t in_size, int64_t out_size) {
  // 0 <= i * s + tap - offset < out_size
  int64_t lo = floor_div(offset - tap + stride - 1, stride);
  int64_t hi = floor_div(out_size - 1 + offset - tap, stride) + 1;
  if (lo < 0) lo = 0;
  if (hi > in_size) hi = in_size;
  if (hi < lo) hi = lo;
  return {lo, hi};
}

// Kernel == stride (one tap per output position): the input and tap of output
// position o, or input = -1 when o lies past the input's reach (output_padding).
struct SingleTap {
  int64_t input;
  int64_t tap;
};

DETOPS_HD SingleTap single_tap(int64_t o, int64_t offset, int64_t stride, int64_t in_size) {
  const int64_t pos = o + offset;
  const int64_t input = pos / stride;
  return {input < in_size ? input : int64_t(-1), pos - input * stride};
}

}  // namespace conv_transpose2d
}  // namespace detops

namespace detops {
namespace conv_transpose2d {

// Every size of one call (plain integers so that CUDA launchers take it by
// value). Tensors are NCHW contiguous unless a kernel says otherwise; weight
// is [Cin, Cout / groups, kH, kW] as in torch; skip, when given, is
// [N, Cout, skipH, skipW] and the output reads its window starting at
// (skip_offH, skip_offW).
struct Geometry {
  int64_t N, Cin, H, W;
  int64_t Cout, kH, kW;
  int64_t sH, sW;
  int64_t offH, offW;
  int64_t OH, OW;
  int64_t groups;
  int64_t skipH, skipW, skip_offH, skip_offW;

  DETOPS_HD int64_t cin_g() const { return Cin / groups; }
  DETOPS_HD int64_t cout_g() const { return Cout / groups; }
};

// The dense algorithm's column buffer (kernel == stride): element (row
// r = (oc * kH + ky) * kW + kx, image n of the chunk, input pixel p = iy * W + ix)
// lives at r * rs + n * ns + p * ps.
struct DenseStrides {
  int64_t rs, ns, ps;
};

// Element strides of a [N, C, H, W] tensor (NCHW or channels-last).
struct Strides4 {
  int64_t n, c, h, w;
  DETOPS_HD int64_t at(int64_t in, int64_t ic, int64_t ih, int64_t iw) const {
    return in * n + ic * c + ih * h + iw * w;
  }
};

}  // namespace conv_transpose2d
}  // namespace detops
