// CPU kernel of anchor generation: at::parallel_for over grid rows of every
// level. Each task writes its rows for the first image and copies them to the
// other images, so the whole batch is one pass over the output.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "anchor_generator/anchor_generator.h"

namespace detops {
namespace anchor_generator {
namespace {

// Output values per parallel task: the writes are memory-bound, so tasks stay large.
constexpr int64_t kGrainValues = int64_t(1) << 18;

at::Tensor grid_anchors_cpu(const at::Tensor& cell_anchors_in, at::IntArrayRef num_cell_anchors,
                            at::IntArrayRef grid_sizes, at::IntArrayRef strides, int64_t num_images) {
  const LevelTable table = make_table(cell_anchors_in, num_cell_anchors, grid_sizes, strides, num_images);
  const at::Tensor cell_anchors = cell_anchors_in.contiguous();
  at::Tensor out = at::empty({num_images, table.anchors_per_image, 4}, cell_anchors.options());
  if (out.numel() == 0) return out;

  // First anchor of every grid row (level l, row y) of an image, and the widest row.
  std::vector<int64_t> row_begin;
  int64_t widest = 1;
  for (int l = 0; l < table.num_levels; ++l) {
    const int64_t row_anchors = table.width[l] * table.num_cell[l];
    if (row_anchors == 0) continue;
    widest = std::max(widest, row_anchors);
    for (int64_t y = 0, H = grid_sizes[2 * l]; y < H; ++y) row_begin.push_back(table.begin[l] + y * row_anchors);
  }
  const int64_t rows = static_cast<int64_t>(row_begin.size());
  const int64_t image_values = table.anchors_per_image * 4;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cell_anchors.scalar_type(), "grid_anchors_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    std::vector<T> cells(static_cast<size_t>(cell_anchors.numel()));
    const scalar_t* cell_ptr = cell_anchors.const_data_ptr<scalar_t>();
    for (size_t i = 0; i < cells.size(); ++i) cells[i] = T(cell_ptr[i]);
    // torch converts the integer shifts to the anchors' dtype before the add.
    const auto shift_of = [](int64_t position, int64_t stride) { return T(scalar_t(T(position * stride))); };
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrainValues / (4 * widest)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const AnchorSite site = locate(table, row_begin[r]);
        const int l = site.level;
        const int64_t W = table.width[l], A = table.num_cell[l];
        const T shift_y = shift_of(site.y, table.stride_h[l]);
        const T* cell = cells.data() + 4 * site.cell;
        scalar_t* dst = o + 4 * row_begin[r];
        for (int64_t x = 0; x < W; ++x) {
          const T shift_x = shift_of(x, table.stride_w[l]);
          for (int64_t a = 0; a < A; ++a, dst += 4) {
            dst[0] = scalar_t(shifted(shift_x, cell[4 * a + 0]));
            dst[1] = scalar_t(shifted(shift_y, cell[4 * a + 1]));
            dst[2] = scalar_t(shifted(shift_x, cell[4 * a + 2]));
            dst[3] = scalar_t(shifted(shift_y, cell[4 * a + 3]));
          }
        }
        const scalar_t* row = o + 4 * row_begin[r];
        for (int64_t image = 1; image < num_images; ++image) {
          std::memcpy(o + image * image_values + 4 * row_begin[r], row, sizeof(scalar_t) * 4 * W * A);
        }
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
