// CUDA registrations of corner pooling: checks, layout, allocation, the launch.
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "corner_pool/corner_pool.h"
#include "corner_pool/corner_pool_cuda.h"

namespace detops {
namespace corner_pool {
namespace {

at::Tensor corner_pool_cuda(const at::Tensor& input, c10::string_view direction) {
  const Operands op = forward_operands(input, direction);
  if (op.result.numel() == 0) return op.result;
  const c10::cuda::CUDAGuard guard(input.device());
  DETOPS_CUDA_CHECK(forward_cuda(to_dtype(input.scalar_type()), op.input.const_data_ptr(),
                                 op.result.mutable_data_ptr(), op.geometry, current_stream(input)));
  return op.result;
}

at::Tensor corner_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& output,
                                     c10::string_view direction) {
  const Operands op = backward_operands(grad, input, output, direction);
  if (op.result.numel() == 0) return op.result;
  const c10::cuda::CUDAGuard guard(input.device());
  DETOPS_CUDA_CHECK(backward_cuda(to_dtype(input.scalar_type()), op.grad.const_data_ptr(), op.input.const_data_ptr(),
                                  op.output.const_data_ptr(), op.result.mutable_data_ptr(), op.geometry,
                                  current_stream(input)));
  return op.result;
}

}  // namespace
}  // namespace corner_pool
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CUDA, m) {
  using namespace detops::corner_pool;
  m.impl("corner_pool", &corner_pool_cuda);
  m.impl("corner_pool_backward", &corner_pool_backward_cuda);
}
