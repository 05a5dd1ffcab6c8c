// CUDA registrations of RoI Pool: checks, allocation, the launch. The backward
// uses atomics by default and the gather form (bit-reproducible) under
// torch.use_deterministic_algorithms(True).
#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "roi_pool/roi_pool.h"
#include "roi_pool/roi_pool_cuda.h"

namespace detops {
namespace roi_pool {

static_assert(kTile == kTileSide, "the tile lists and the gather kernel must agree on the tile size");

namespace {

at::ScalarType opmath_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

MapArgs map_args(const at::Tensor& t) {
  return {t.size(0), t.size(1), t.size(2), t.size(3), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

OutArgs out_args(const at::Tensor& t) {
  return {t.size(0), t.size(2), t.size(3), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cuda(const at::Tensor& input, const at::Tensor& rois_in,
                                                 double spatial_scale, int64_t PH, int64_t PW) {
  check_forward_args(input, rois_in, spatial_scale, PH, PW);
  const c10::cuda::CUDAGuard guard(input.device());
  const bool cl = is_channels_last(input);
  const int64_t K = rois_in.size(0), C = input.size(1);
  at::Tensor out = at::empty({K, C, PH, PW}, input.options(), format_of(cl));
  at::Tensor argmax = at::empty({K, C, PH, PW}, input.options().dtype(at::kLong), format_of(cl));
  if (out.numel() == 0) return {out, argmax};
  const at::Tensor rois = rois_in.to(opmath_of(input.scalar_type())).contiguous();
  DETOPS_CUDA_CHECK(forward_cuda(to_dtype(input.scalar_type()), input.const_data_ptr(), map_args(input),
                                 rois.const_data_ptr(), spatial_scale, out.mutable_data_ptr(),
                                 argmax.mutable_data_ptr<int64_t>(), out_args(out), cl, current_stream(input)));
  return {out, argmax};
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad_in, const at::Tensor& rois_in, const at::Tensor& argmax_in,
                                  double spatial_scale, int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H,
                                  int64_t W, bool channels_last) {
  check_backward_args(grad_in, rois_in, argmax_in, PH, PW);
  TORCH_CHECK(grad_in.size(1) == C, "grad must have ", C, " channels, got ", grad_in.size(1));
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const bool cl = channels_last && C > 1;
  const int64_t K = rois_in.size(0);
  // grad and argmax in one layout so the kernels share one set of strides.
  const at::Tensor grad = grad_in.contiguous(format_of(cl));
  const at::Tensor argmax = argmax_in.contiguous(format_of(cl));
  const at::Tensor rois = rois_in.to(opmath_of(grad.scalar_type())).contiguous();
  const at::ScalarType dtype = grad.scalar_type();
  const cudaStream_t stream = current_stream(grad);
  if (at::globalContext().deterministicAlgorithms()) {
    at::Tensor grad_input = at::empty({N, C, H, W}, grad.options(), format_of(cl));
    if (grad_input.numel() == 0) return grad_input;
    // Each element visits the RoIs listed for its tile, not all of its image's.
    const TileLists tl = make_tile_lists(rois, at::Tensor(), {spatial_scale}, N, H, W, /*aligned=*/false);
    DETOPS_CUDA_CHECK(backward_gather_cuda(to_dtype(dtype), grad.const_data_ptr(), argmax.const_data_ptr<int64_t>(),
                                           out_args(grad), rois.const_data_ptr(), spatial_scale,
                                           tl.rois.const_data_ptr<int64_t>(), tl.offsets.const_data_ptr<int64_t>(),
                                           tl.tiles_y, tl.tiles_x, grad_input.mutable_data_ptr(),
                                           map_args(grad_input), cl, stream));
    return grad_input;
  }
  const bool reduced = dtype == at::kHalf || dtype == at::kBFloat16;
  // at::zeros has no memory format: allocate in the layout, then zero.
  at::Tensor accum = at::empty({N, C, H, W}, grad.options().dtype(reduced ? at::kFloat : dtype), format_of(cl)).zero_();
  if (K > 0) {
    DETOPS_CUDA_CHECK(backward_atomic_cuda(to_dtype(dtype), grad.const_data_ptr(), argmax.const_data_ptr<int64_t>(),
                                           out_args(grad), rois.const_data_ptr(), accum.mutable_data_ptr(),
                                           map_args(accum), cl, stream));
  }
  return reduced ? accum.to(dtype) : accum;
}

}  // namespace
}  // namespace roi_pool
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CUDA, m) {
  using namespace detops::roi_pool;
  m.impl("roi_pool", &roi_pool_cuda);
  m.impl("roi_pool_backward", &roi_pool_backward_cuda);
}
