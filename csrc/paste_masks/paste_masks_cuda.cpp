// CUDA registration of mask pasting: checks, allocation and the launch.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "paste_masks/paste_masks.h"
#include "paste_masks/paste_masks_cuda.h"

namespace detops {
namespace paste_masks {
namespace {

at::Tensor paste_masks_op(const at::Tensor& masks_in, const at::Tensor& boxes_in, const at::Tensor& sizes_in,
                          int64_t height, int64_t width, int64_t padding) {
  check_args(masks_in, boxes_in, sizes_in, height, width, padding);
  const c10::cuda::CUDAGuard guard(masks_in.device());
  const at::Tensor masks = masks_in.contiguous(), boxes = boxes_in.contiguous(), sizes = sizes_in.contiguous();
  const int64_t N = masks.size(0);
  at::Tensor out = at::empty({N, 1, height, width}, masks.options().memory_format(at::MemoryFormat::Contiguous));
  DETOPS_CUDA_CHECK(paste_masks_cuda(to_dtype(masks.scalar_type()), masks.const_data_ptr(),
                                     boxes.const_data_ptr<int64_t>(), sizes.const_data_ptr<int64_t>(),
                                     out.mutable_data_ptr(), N, masks.size(2), masks.size(3), height, width, padding,
                                     current_stream(masks)));
  return out;
}

}  // namespace
}  // namespace paste_masks
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CUDA, m) {
  m.impl("paste_masks", &detops::paste_masks::paste_masks_op);
}
