// CPU kernel of mask pasting: at::parallel_for over masks. Each mask writes
// its whole canvas plane once (zeros outside its window), so the output needs
// no separate zero fill. Large boxes resize by rows: the two padded-mask rows a
// box row reads are resized along x once and kept while the box rows use them.
//
// Bit-equal to torchvision's paste_masks_in_image (torch's own CPU resize): the
// rounding follows the resize path torch takes (paste_masks_math.h), fused
// where torch's kernels run their AVX2/AVX512 builds. This file is compiled
// with -ffp-contract=off so that no other multiply-add is fused.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/huge_pages.h"
#include "paste_masks/paste_masks.h"

namespace detops {
namespace paste_masks {
namespace {

template <typename T, typename S>
struct Load {
  const S* mask;
  T operator()(int64_t i) const { return static_cast<T>(mask[i]); }
};

struct Canvas {
  int64_t height, width, padding, in_h, in_w;
};

// One mask's whole output plane. T: arithmetic type; S: storage type.
template <typename T, bool kFused, typename S>
inline void paste_one(const S* mask_data, const int64_t* box, const int64_t* image_size, const Canvas& cv, S* out) {
  const Load<T, S> mask{mask_data};
  const Placement p = place(box, image_size, cv.height, cv.width);
  const int64_t padded_h = cv.in_h + 2 * cv.padding, padded_w = cv.in_w + 2 * cv.padding;
  const int64_t cols = std::max<int64_t>(p.wx1 - p.wx0, 0);
  if (p.wy1 <= p.wy0 || cols == 0) {
    std::fill(out, out + cv.height * cv.width, S(0));
    return;
  }
  std::vector<Tap<T>> xtaps(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) xtaps[c] = axis_tap<T, kFused>(p.wx0 + c - p.x0, padded_w, p.w);
  // Padded-mask rows resized along x (large boxes), cached by source row.
  std::vector<T> rows(p.small_box ? 0 : static_cast<size_t>(2 * cols));
  int64_t cached[2] = {-1, -1};
  auto resized_row = [&](int64_t r) -> const T* {
    for (int k = 0; k < 2; ++k) {
      if (cached[k] == r) return rows.data() + k * cols;
    }
    const int k = cached[0] == -1 || (cached[1] != -1 && cached[0] < cached[1]) ? 0 : 1;
    T* dst = rows.data() + k * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const Tap<T>& tx = xtaps[c];
      dst[c] = blend2<T, kFused>(padded_pixel<T>(mask, cv.in_h, cv.in_w, cv.padding, r, tx.i0), tx.l0,
                                 padded_pixel<T>(mask, cv.in_h, cv.in_w, cv.padding, r, tx.i1), tx.l1);
    }
    cached[k] = r;
    return dst;
  };
  for (int64_t y = 0; y < cv.height; ++y) {
    S* row = out + y * cv.width;
    if (y < p.wy0 || y >= p.wy1) {
      std::fill(row, row + cv.width, S(0));
      continue;
    }
    std::fill(row, row + p.wx0, S(0));
    std::fill(row + p.wx0 + cols, row + cv.width, S(0));
    const Tap<T> ty = axis_tap<T, kFused>(y - p.y0, padded_h, p.h);
    S* dst = row + p.wx0;
    if (p.small_box) {
      for (int64_t c = 0; c < cols; ++c) {
        dst[c] = static_cast<S>(resized_pixel<T, kFused>(mask, cv.in_h, cv.in_w, cv.padding, ty, xtaps[c], true));
      }
    } else {
      const T* r0 = resized_row(ty.i0);
      const T* r1 = resized_row(ty.i1);
      for (int64_t c = 0; c < cols; ++c) dst[c] = static_cast<S>(blend2<T, kFused>(r0[c], ty.l0, r1[c], ty.l1));
    }
  }
}

template <typename T, typename S>
__attribute__((target("fma"))) void paste_range_fma(const S* masks, const int64_t* boxes, const int64_t* sizes,
                                                     const Canvas& cv, S* out, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) {
    paste_one<T, true>(masks + n * cv.in_h * cv.in_w, boxes + 4 * n, sizes + 2 * n, cv, out + n * cv.height * cv.width);
  }
}

template <typename T, bool kFused, typename S>
void paste_range(const S* masks, const int64_t* boxes, const int64_t* sizes, const Canvas& cv, S* out,
                 int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) {
    paste_one<T, kFused>(masks + n * cv.in_h * cv.in_w, boxes + 4 * n, sizes + 2 * n, cv,
                         out + n * cv.height * cv.width);
  }
}

// torch's resize kernels fuse multiply-adds where they run an AVX2/AVX512 build.
// (at::get_cpu_capability() names the build: "DEFAULT", "AVX2", "AVX512", ...)
bool torch_resize_fuses() {
  static const bool fuses = at::get_cpu_capability() != "DEFAULT";
  return fuses;
}

at::Tensor paste_masks_cpu(const at::Tensor& masks_in, const at::Tensor& boxes_in, const at::Tensor& sizes_in,
                           int64_t height, int64_t width, int64_t padding) {
  check_args(masks_in, boxes_in, sizes_in, height, width, padding);
  const int64_t N = masks_in.size(0);
  at::Tensor out = with_huge_pages(
      at::empty({N, 1, height, width}, masks_in.options().memory_format(at::MemoryFormat::Contiguous)));
  if (out.numel() == 0) return out;
  const at::Tensor masks = masks_in.contiguous(), boxes = boxes_in.contiguous(), sizes = sizes_in.contiguous();
  const Canvas cv{height, width, padding, masks.size(2), masks.size(3)};
  const bool fused = torch_resize_fuses();
  const bool fma_hw = __builtin_cpu_supports("fma");
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, height * width));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "paste_masks_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* m = masks.const_data_ptr<scalar_t>();
    const int64_t* b = boxes.const_data_ptr<int64_t>();
    const int64_t* s = sizes.const_data_ptr<int64_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      if (fused && fma_hw) {
        paste_range_fma<T>(m, b, s, cv, o, begin, end);
      } else if (fused) {
        paste_range<T, true>(m, b, s, cv, o, begin, end);
      } else {
        paste_range<T, false>(m, b, s, cv, o, begin, end);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace paste_masks
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  m.impl("paste_masks", &detops::paste_masks::paste_masks_cpu);
}
