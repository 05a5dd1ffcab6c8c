// Per-element math of mask pasting (torchvision's paste_masks_in_image), shared
// by the CPU and CUDA kernels. A mask of in_h x in_w pixels (zero-padded by
// `padding` on every side) is resized into its integer box with F.interpolate's
// bilinear rule (align_corners=False) and written inside the box and the image.
//
// torch's CPU resize rounds differently by path, and detops' CPU results equal
// it bit for bit: boxes with h + w <= 128 take torch's channels-last kernel (a
// four-term sum of taps weighted by products), larger ones its generic kernel
// (columns, then rows). Where torch's kernels are compiled for AVX2 or AVX512,
// the compiler fused their multiply-adds; kFused says so, and the fusions are
// written out here (and the CPU file is built with -ffp-contract=off) so that
// no other fusion changes a value.
#pragma once

#include <cmath>

#include "common/macros.h"

namespace detops {
namespace paste_masks {

// Box sizes up to this h + w use torch's channels-last bilinear kernel.
constexpr int64_t kSmallBoxSum = 128;

// Coordinates and image sizes beyond this (in pixels) are clamped to it before
// any arithmetic, so that no box overflows int64; such a box misses any canvas.
constexpr int64_t kCoordinateLimit = int64_t(1) << 40;

template <typename T>
struct Tap {
  int64_t i0, i1;  // the two source pixels
  T l0, l1;        // their weights
};

template <typename T, bool kFused>
DETOPS_HD T mul_add(T a, T b, T c) {
  if constexpr (kFused) {
#if defined(__CUDA_ARCH__)
    return fma(a, b, c);
#else
    return std::fma(a, b, c);  // ::fma would round a float sum in double first
#endif
  } else {
    return a * b + c;
  }
}

// Source taps of output pixel `o` of one axis resized from in_size to out_size
// pixels (torch's compute_source_index_and_lambda; its index is floorf of the
// float source position, also for double).
template <typename T, bool kFused>
DETOPS_HD Tap<T> axis_tap(int64_t o, int64_t in_size, int64_t out_size) {
  Tap<T> t;
  if (in_size == out_size) {
    t.i0 = t.i1 = o;
    t.l0 = T(1);
    t.l1 = T(0);
    return t;
  }
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  T src = mul_add<T, kFused>(scale, static_cast<T>(o) + T(0.5), T(-0.5));
  if (src < T(0)) src = T(0);
  t.i0 = min2(static_cast<int64_t>(floorf(static_cast<float>(src))), in_size - 1);
  t.l1 = min2(max2(src - static_cast<T>(t.i0), T(0)), T(1));
  t.i1 = t.i0 + (t.i0 < in_size - 1 ? 1 : 0);
  t.l0 = T(1) - t.l1;
  return t;
}

// a * wa + b * wb, as torch's generic kernel rounds it.
template <typename T, bool kFused>
DETOPS_HD T blend2(T a, T wa, T b, T wb) {
  return mul_add<T, kFused>(a, wa, b * wb);
}

// Pixel (r, c) of the zero-padded mask; load(i) reads element i of the mask
// (row-major in_h x in_w) as T, so that each backend converts its storage type.
template <typename T, typename Load>
DETOPS_HD T padded_pixel(const Load& load, int64_t in_h, int64_t in_w, int64_t padding, int64_t r, int64_t c) {
  r -= padding;
  c -= padding;
  return (r >= 0 && r < in_h && c >= 0 && c < in_w) ? load(r * in_w + c) : T(0);
}

// The resized mask at box pixel (y, x) from its row and column taps, by torch's
// rule for a box of h + w pixels.
template <typename T, bool kFused, typename Load>
DETOPS_HD T resized_pixel(const Load& mask, int64_t in_h, int64_t in_w, int64_t padding, const Tap<T>& ty,
                          const Tap<T>& tx, bool small_box) {
  const T i00 = padded_pixel<T>(mask, in_h, in_w, padding, ty.i0, tx.i0);
  const T i01 = padded_pixel<T>(mask, in_h, in_w, padding, ty.i0, tx.i1);
  const T i10 = padded_pixel<T>(mask, in_h, in_w, padding, ty.i1, tx.i0);
  const T i11 = padded_pixel<T>(mask, in_h, in_w, padding, ty.i1, tx.i1);
  if (small_box) {
    const T w00 = ty.l0 * tx.l0, w01 = ty.l0 * tx.l1, w10 = ty.l1 * tx.l0, w11 = ty.l1 * tx.l1;
    if constexpr (kFused) {
      return mul_add<T, true>(i11, w11, mul_add<T, true>(i10, w10, mul_add<T, true>(i00, w00, i01 * w01)));
    } else {
      return i00 * w00 + i01 * w01 + i10 * w10 + i11 * w11;
    }
  }
  return blend2<T, kFused>(blend2<T, kFused>(i00, tx.l0, i01, tx.l1), ty.l0,
                           blend2<T, kFused>(i10, tx.l0, i11, tx.l1), ty.l1);
}

// Where a mask lands: its integer box (x0, y0, x1, y1), the resized size (box
// size, at least 1), and the written window [wy0, wy1) x [wx0, wx1): inside the
// box, the image and the canvas.
struct Placement {
  int64_t x0, y0, h, w;
  int64_t wx0, wx1, wy0, wy1;
  bool small_box;
};

DETOPS_HD int64_t clamp_coordinate(int64_t v, int64_t lo) {
  return v < lo ? lo : (v > kCoordinateLimit ? kCoordinateLimit : v);
}

// box_in: (x1, y1, x2, y2); image_size: (h, w).
DETOPS_HD Placement place(const int64_t* box_in, const int64_t* image_size, int64_t height, int64_t width) {
  int64_t box[4];
  for (int k = 0; k < 4; ++k) box[k] = clamp_coordinate(box_in[k], -kCoordinateLimit);
  const int64_t image_h = clamp_coordinate(image_size[0], 0), image_w = clamp_coordinate(image_size[1], 0);
  Placement p;
  p.x0 = box[0];
  p.y0 = box[1];
  p.w = max2<int64_t>(box[2] - box[0] + 1, 1);
  p.h = max2<int64_t>(box[3] - box[1] + 1, 1);
  p.wx0 = max2<int64_t>(box[0], 0);
  p.wy0 = max2<int64_t>(box[1], 0);
  p.wx1 = min2(min2(box[2] + 1, image_w), width);
  p.wy1 = min2(min2(box[3] + 1, image_h), height);
  p.small_box = p.h + p.w <= kSmallBoxSum;
  return p;
}

DETOPS_HD bool inside(const Placement& p, int64_t y, int64_t x) {
  return y >= p.wy0 && y < p.wy1 && x >= p.wx0 && x < p.wx1;
}

}  // namespace paste_masks
}  // namespace detops
