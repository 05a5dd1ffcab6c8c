// CUDA registration of anchor generation: checks, allocation and the launch.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "anchor_generator/anchor_generator.h"
#include "anchor_generator/anchor_generator_cuda.h"
#include "common/cuda_glue.h"

namespace detops {
namespace anchor_generator {
namespace {

at::Tensor grid_anchors_op(const at::Tensor& cell_anchors_in, at::IntArrayRef num_cell_anchors,
                           at::IntArrayRef grid_sizes, at::IntArrayRef strides, int64_t num_images) {
  const LevelTable table = make_table(cell_anchors_in, num_cell_anchors, grid_sizes, strides, num_images);
  const c10::cuda::CUDAGuard guard(cell_anchors_in.device());
  const at::Tensor cell_anchors = cell_anchors_in.contiguous();
  at::Tensor out = at::empty({num_images, table.anchors_per_image, 4}, cell_anchors.options());
  DETOPS_CUDA_CHECK(grid_anchors_cuda(to_dtype(cell_anchors.scalar_type()), table, cell_anchors.const_data_ptr(),
                                      out.mutable_data_ptr(), num_images, current_stream(cell_anchors)));
  return out;
}

}  // namespace
}  // namespace anchor_generator
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CUDA, m) {
  m.impl("grid_anchors", &detops::anchor_generator::grid_anchors_op);
}
