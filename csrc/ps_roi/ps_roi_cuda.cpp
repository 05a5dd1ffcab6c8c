// CUDA registrations of the position-sensitive RoI ops: checks, allocation,
// the launch. The backward scatters with atomics by default and uses the
// gather form (bit-reproducible) under torch.use_deterministic_algorithms(True),
// as roi_pool's does.
#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "ps_roi/ps_roi.h"
#include "ps_roi/ps_roi_cuda.h"

namespace detops {
namespace ps_roi {
namespace {

at::ScalarType opmath_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

MapArgs map_args(const at::Tensor& t) {
  return {t.size(0), t.size(1), t.size(2), t.size(3), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

std::tuple<at::Tensor, at::Tensor> forward(bool align, const at::Tensor& input, const at::Tensor& rois_in,
                                           double spatial_scale, int64_t PH, int64_t PW, int64_t sampling_ratio) {
  const int64_t C_out = check_forward_args(input, rois_in, spatial_scale, PH, PW);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t K = rois_in.size(0);
  at::Tensor out = at::empty({K, C_out, PH, PW}, input.options());
  at::Tensor mapping = at::empty({K, C_out, PH, PW}, input.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, mapping};
  const at::Tensor rois = rois_in.to(opmath_of(input.scalar_type())).contiguous();
  const PoolArgs pool{K, C_out, PH, PW, sampling_ratio, spatial_scale};
  DETOPS_CUDA_CHECK(forward_cuda(align, to_dtype(input.scalar_type()), input.const_data_ptr(), map_args(input),
                                 rois.const_data_ptr(), pool, out.mutable_data_ptr(),
                                 mapping.mutable_data_ptr<int32_t>(), current_stream(input)));
  return {out, mapping};
}

at::Tensor backward(bool align, const at::Tensor& grad_in, const at::Tensor& rois_in, const at::Tensor& mapping,
                    double spatial_scale, int64_t PH, int64_t PW, int64_t sampling_ratio, int64_t N, int64_t C,
                    int64_t H, int64_t W) {
  const int64_t C_out = check_backward_args(grad_in, rois_in, mapping, spatial_scale, PH, PW, N, C, H, W);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const int64_t K = rois_in.size(0);
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor rois = rois_in.to(opmath_of(grad.scalar_type())).contiguous();
  const at::ScalarType dtype = grad.scalar_type();
  const cudaStream_t stream = current_stream(grad);
  const PoolArgs pool{K, C_out, PH, PW, sampling_ratio, spatial_scale};
  if (at::globalContext().deterministicAlgorithms()) {
    at::Tensor grad_input = at::empty({N, C, H, W}, grad.options());
    if (grad_input.numel() == 0) return grad_input;
    const auto [order, offsets] = rois_by_image(rois, N);
    DETOPS_CUDA_CHECK(backward_gather_cuda(align, to_dtype(dtype), grad.const_data_ptr(), rois.const_data_ptr(),
                                           pool, order.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(),
                                           grad_input.mutable_data_ptr(), map_args(grad_input), stream));
    return grad_input;
  }
  const bool reduced = dtype == at::kHalf || dtype == at::kBFloat16;
  at::Tensor accum = at::zeros({N, C, H, W}, grad.options().dtype(reduced ? at::kFloat : dtype));
  if (K > 0 && accum.numel() > 0) {
    DETOPS_CUDA_CHECK(backward_atomic_cuda(align, to_dtype(dtype), grad.const_data_ptr(), rois.const_data_ptr(), pool,
                                           accum.mutable_data_ptr(), map_args(accum), stream));
  }
  return reduced ? accum.to(dtype) : accum;
}

std::tuple<at::Tensor, at::Tensor> ps_roi_align_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                     double spatial_scale, int64_t PH, int64_t PW,
                                                     int64_t sampling_ratio) {
  return forward(true, input, rois, spatial_scale, PH, PW, sampling_ratio);
}

std::tuple<at::Tensor, at::Tensor> ps_roi_pool_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                    double spatial_scale, int64_t PH, int64_t PW) {
  return forward(false, input, rois, spatial_scale, PH, PW, 0);
}

at::Tensor ps_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& mapping,
                                      double spatial_scale, int64_t PH, int64_t PW, int64_t sampling_ratio, int64_t N,
                                      int64_t C, int64_t H, int64_t W) {
  return backward(true, grad, rois, mapping, spatial_scale, PH, PW, sampling_ratio, N, C, H, W);
}

at::Tensor ps_roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& mapping,
                                     double spatial_scale, int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H,
                                     int64_t W) {
  return backward(false, grad, rois, mapping, spatial_scale, PH, PW, 0, N, C, H, W);
}

}  // namespace
}  // namespace ps_roi
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CUDA, m) {
  using namespace detops::ps_roi;
  m.impl("ps_roi_align", &ps_roi_align_cuda);
  m.impl("ps_roi_align_backward", &ps_roi_align_backward_cuda);
  m.impl("ps_roi_pool", &ps_roi_pool_cuda);
  m.impl("ps_roi_pool_backward", &ps_roi_pool_backward_cuda);
}
