// CUDA registrations of corner pooling: checks, layout, allocation, the launch.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "corner_pool/corner_pool.h"
#include "corner_pool/corner_pool_cuda.h"

namespace detops {
namespace corner_pool {
namespace {

ScanGeometry geometry_of(const at::Tensor& t, bool cl, Direction dir) {
  return scan_geometry(t.size(0), t.size(1), t.size(2), t.size(3), cl, dir);
}

at::Tensor corner_pool_cuda(const at::Tensor& input_in, c10::string_view direction) {
  const Direction dir = parse_direction(direction);
  check_forward_args(input_in);
  const c10::cuda::CUDAGuard guard(input_in.device());
  const bool cl = is_channels_last(input_in);
  const at::Tensor input = input_in.contiguous(format_of(cl));
  at::Tensor out = at::empty(input.sizes(), input.options(), format_of(cl));
  if (out.numel() == 0) return out;
  DETOPS_CUDA_CHECK(forward_cuda(to_dtype(input.scalar_type()), input.const_data_ptr(), out.mutable_data_ptr(),
                                 geometry_of(input, cl, dir), current_stream(input)));
  return out;
}

at::Tensor corner_pool_backward_cuda(const at::Tensor& grad_in, const at::Tensor& input_in,
                                     const at::Tensor& output_in, c10::string_view direction) {
  const Direction dir = parse_direction(direction);
  check_backward_args(grad_in, input_in, output_in);
  const c10::cuda::CUDAGuard guard(input_in.device());
  const bool cl = is_channels_last(input_in);
  const at::Tensor input = input_in.contiguous(format_of(cl));
  const at::Tensor output = output_in.contiguous(format_of(cl));
  const at::Tensor grad = grad_in.contiguous(format_of(cl));
  at::Tensor grad_input = at::empty(input.sizes(), input.options(), format_of(cl));
  if (grad_input.numel() == 0) return grad_input;
  DETOPS_CUDA_CHECK(backward_cuda(to_dtype(input.scalar_type()), grad.const_data_ptr(), input.const_data_ptr(),
                                  output.const_data_ptr(), grad_input.mutable_data_ptr(), geometry_of(input, cl, dir),
                                  current_stream(input)));
  return grad_input;
}

}  // namespace
}  // namespace corner_pool
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CUDA, m) {
  using namespace detops::corner_pool;
  m.impl("corner_pool", &corner_pool_cuda);
  m.impl("corner_pool_backward", &corner_pool_backward_cuda);
}
