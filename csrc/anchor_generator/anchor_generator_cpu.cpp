// CPU kernel of anchor generation: at::parallel_for over the anchors of one
// image. Each task walks its anchors in short segments, each started by the
// same locate() the CUDA kernel calls for every anchor, so the CPU tests check
// that index arithmetic at arbitrary positions (mid-row, mid-cell, across
// levels); within a segment the position just advances. The task's anchors are
// then copied to the other images, so the batch is one pass over the output.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "anchor_generator/anchor_generator.h"

namespace detops {
namespace anchor_generator {
namespace {

// Output values per parallel task: the writes are memory-bound, so tasks stay large.
// Anchors per parallel task: the writes are memory-bound, so tasks stay large.
constexpr int64_t kGrainAnchors = int64_t(1) << 16;
// Anchors per locate() call: short enough that segment starts fall at many
// different grid positions (it divides no row length evenly), long enough
// that locate's divisions cost little.
constexpr int64_t kSegment = 1021;

at::Tensor grid_anchors_cpu(const at::Tensor& cell_anchors_in, at::IntArrayRef num_cell_anchors,
                            at::IntArrayRef grid_sizes, at::IntArrayRef strides, int64_t num_images) {
  const LevelTable table = make_table(cell_anchors_in, num_cell_anchors, grid_sizes, strides, num_images);
  const at::Tensor cell_anchors = cell_anchors_in.contiguous();
  at::Tensor out = at::empty({num_images, table.anchors_per_image, 4}, cell_anchors.options());
  if (out.numel() == 0) return out;
  const int64_t image_values = table.anchors_per_image * 4;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cell_anchors.scalar_type(), "grid_anchors_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    std::vector<T> cells(static_cast<size_t>(cell_anchors.numel()));
    const scalar_t* cell_ptr = cell_anchors.const_data_ptr<scalar_t>();
    for (size_t i = 0; i < cells.size(); ++i) cells[i] = T(cell_ptr[i]);
    // torch converts the integer shifts to the anchors' dtype before the add.
    const auto shift_of = [](int64_t position, int64_t stride) { return T(scalar_t(T(position * stride))); };
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, table.anchors_per_image, kGrainAnchors, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const AnchorSite site = locate(table, i);
        const int l = site.level;
        const int64_t W = table.width[l], A = table.num_cell[l];
        const int64_t stop = std::min({end, i + kSegment, table.begin[l + 1]});
        TORCH_INTERNAL_ASSERT(stop > i && site.x < W, "grid_anchors: locate() found no anchor at ", i);
        const T* level_cells = cells.data() + 4 * table.cell_begin[l];
        int64_t a = site.cell - table.cell_begin[l], x = site.x, y = site.y;
        T shift_y = shift_of(y, table.stride_h[l]);
        while (i < stop) {
          // Whole grid positions of row y first (the common case), then a partial one.
          const int64_t positions = a == 0 ? std::min((stop - i) / A, W - x) : 0;
          if (positions > 0) {
            scalar_t* __restrict dst = o + 4 * i;
            for (int64_t p = 0; p < positions; ++p) {
              const T shift_x = shift_of(x + p, table.stride_w[l]);
              for (int64_t k = 0; k < A; ++k, dst += 4) {
                dst[0] = scalar_t(shifted(shift_x, level_cells[4 * k + 0]));
                dst[1] = scalar_t(shifted(shift_y, level_cells[4 * k + 1]));
                dst[2] = scalar_t(shifted(shift_x, level_cells[4 * k + 2]));
                dst[3] = scalar_t(shifted(shift_y, level_cells[4 * k + 3]));
              }
            }
            i += positions * A;
            x += positions;
          } else {
            // The anchors of grid position (x, y) from cell anchor a on, as many as the segment holds.
            const int64_t n = std::min(A - a, stop - i);
            const T shift_x = shift_of(x, table.stride_w[l]);
            const T* __restrict cell = level_cells + 4 * a;
            scalar_t* __restrict dst = o + 4 * i;
            for (int64_t k = 0; k < n; ++k) {
              dst[4 * k + 0] = scalar_t(shifted(shift_x, cell[4 * k + 0]));
              dst[4 * k + 1] = scalar_t(shifted(shift_y, cell[4 * k + 1]));
              dst[4 * k + 2] = scalar_t(shifted(shift_x, cell[4 * k + 2]));
              dst[4 * k + 3] = scalar_t(shifted(shift_y, cell[4 * k + 3]));
            }
            i += n;
            a += n;
            if (a < A) continue;
            a = 0;
            ++x;
          }
          if (x == W) {  // next grid row
            x = 0;
            shift_y = shift_of(++y, table.stride_h[l]);
          }
        }
      }
      for (int64_t image = 1; image < num_images; ++image) {
        std::memcpy(o + image * image_values + 4 * begin, o + 4 * begin, sizeof(scalar_t) * 4 * (end - begin));
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace anchor_generator
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  m.impl("grid_anchors", &detops::anchor_generator::grid_anchors_cpu);
}
