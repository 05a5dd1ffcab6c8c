// Schema of anchor generation (torchvision's AnchorGenerator.grid_anchors for
// every level and every image of a batch, in one call):
//   grid_anchors(cell_anchors [sum_l A_l, 4], num_cell_anchors [L],
//                grid_sizes [2L] = (H_0, W_0, H_1, W_1, ...),
//                strides [2L] = (stride_h_0, stride_w_0, ...), num_images)
//     -> [num_images, sum_l H_l * W_l * A_l, 4]
// Anchors are (x1, y1, x2, y2), in the cell anchors' dtype, in torchvision's
// order: level by level, then row-major grid position, then cell anchor.
#include "anchor_generator/anchor_generator.h"

#include <torch/library.h>

#include <limits>

namespace detops {
namespace anchor_generator {

LevelTable make_table(const at::Tensor& cell_anchors, at::IntArrayRef num_cell_anchors, at::IntArrayRef grid_sizes,
                      at::IntArrayRef strides, int64_t num_images) {
  TORCH_CHECK(cell_anchors.dim() == 2 && cell_anchors.size(1) == 4, "cell_anchors must have shape [A, 4], got ",
              cell_anchors.sizes());
  TORCH_CHECK(is_kernel_float(cell_anchors.scalar_type()),
              "cell_anchors must be float16, bfloat16, float32 or float64, got ", cell_anchors.scalar_type());
  const int64_t L = static_cast<int64_t>(num_cell_anchors.size());
  TORCH_CHECK(L <= kMaxLevels, "grid_anchors supports at most ", kMaxLevels, " levels, got ", L);
  TORCH_CHECK(static_cast<int64_t>(grid_sizes.size()) == 2 * L,
              "grid_sizes must hold (height, width) for each of the ", L, " levels, got ", grid_sizes.size(),
              " values");
  TORCH_CHECK(static_cast<int64_t>(strides.size()) == 2 * L, "strides must hold (stride_h, stride_w) for each of the ",
              L, " levels, got ", strides.size(), " values");
  TORCH_CHECK(num_images >= 0, "num_images must be >= 0, got ", num_images);
  LevelTable t;
  t.num_levels = static_cast<int>(L);
  int64_t cells = 0, anchors = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t A = num_cell_anchors[l], H = grid_sizes[2 * l], W = grid_sizes[2 * l + 1];
    TORCH_CHECK(A >= 0, "num_cell_anchors must be >= 0, got ", A, " at level ", l);
    TORCH_CHECK(H >= 0 && W >= 0, "grid sizes must be >= 0, got (", H, ", ", W, ") at level ", l);
    // The grid's positions and shifts are exact integers only below 2**31 (torchvision's int32 aranges).
    TORCH_CHECK(H < (int64_t(1) << 31) && W < (int64_t(1) << 31), "grid size too large at level ", l);
    t.begin[l] = anchors;
    t.width[l] = W;
    t.num_cell[l] = A;
    t.cell_begin[l] = cells;
    t.stride_h[l] = strides[2 * l];
    t.stride_w[l] = strides[2 * l + 1];
    cells += A;
    TORCH_CHECK(H == 0 || W == 0 || A == 0 || H * W <= std::numeric_limits<int64_t>::max() / 4 / A,
                "too many anchors at level ", l);
    anchors += H * W * A;
  }
  t.begin[L] = anchors;
  t.anchors_per_image = anchors;
  TORCH_CHECK(cell_anchors.size(0) == cells, "cell_anchors has ", cell_anchors.size(0),
              " rows but num_cell_anchors sums to ", cells);
  return t;
}

}  // namespace anchor_generator
}  // namespace detops

TORCH_LIBRARY_FRAGMENT(detops, m) {
  m.def("grid_anchors(Tensor cell_anchors, int[] num_cell_anchors, SymInt[] grid_sizes, SymInt[] strides, SymInt num_images) -> Tensor");
}
