// CUDA registrations of RoI Align: checks, allocation, the launch. The
// backward scatters with atomics by default and switches to the gather form
// (bit-reproducible) when torch.use_deterministic_algorithms(True) is on.
#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/cuda_glue.h"
#include "roi_align/roi_align.h"
#include "roi_align/roi_align_cuda.h"

namespace detops {
namespace roi_align {
namespace {

static_assert(kTile == kTileSide, "the tile lists and the gather kernel must agree on the tile size");

at::ScalarType opmath_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

MapArgs map_args(const at::Tensor& t, double scale) {
  return {t.const_data_ptr(), t.size(2), t.size(3), t.stride(0), t.stride(1), t.stride(2), t.stride(3), scale};
}

MapsArgs maps_args(const std::vector<at::Tensor>& maps, const std::vector<double>& scales) {
  TORCH_CHECK(static_cast<int>(maps.size()) <= kMaxLevels, "at most ", kMaxLevels, " feature maps are supported, got ",
              maps.size());
  MapsArgs a{};
  a.num_levels = static_cast<int>(maps.size());
  a.N = maps[0].size(0);
  a.C = maps[0].size(1);
  for (size_t l = 0; l < maps.size(); ++l) a.maps[l] = map_args(maps[l], scales[l]);
  return a;
}

at::Tensor forward_impl(const std::vector<at::Tensor>& maps, const at::Tensor& rois_in, const at::Tensor& levels_in,
                        const std::vector<double>& scales, int64_t PH, int64_t PW, int64_t sampling_ratio,
                        bool aligned) {
  const at::Tensor& first = maps[0];
  const c10::cuda::CUDAGuard guard(first.device());
  const bool cl = is_channels_last(first);
  const int64_t K = rois_in.size(0), C = first.size(1);
  at::Tensor out = at::empty({K, C, PH, PW}, first.options(), format_of(cl));
  if (out.numel() == 0) return out;
  const at::Tensor rois = rois_in.to(opmath_of(first.scalar_type())).contiguous();
  const at::Tensor levels = levels_in.defined() ? levels_in.contiguous() : levels_in;
  const PoolArgs pool{K, PH, PW, sampling_ratio, aligned};
  const int64_t os[4] = {out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  DETOPS_CUDA_CHECK(forward_cuda(to_dtype(first.scalar_type()), maps_args(maps, scales), rois.const_data_ptr(),
                                 levels.defined() ? levels.const_data_ptr<int64_t>() : nullptr, pool,
                                 out.mutable_data_ptr(), os, cl, current_stream(first)));
  return out;
}

struct GradMeta {
  int64_t N, C, H, W;
  bool channels_last;
  double scale;
};

std::vector<at::Tensor> backward_impl(const at::Tensor& grad_in, const std::vector<GradMeta>& metas,
                                      const at::TensorOptions& options, const at::Tensor& rois_in,
                                      const at::Tensor& levels_in, int64_t PH, int64_t PW, int64_t sampling_ratio,
                                      bool aligned) {
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const int64_t K = rois_in.size(0), N = metas[0].N, C = metas[0].C;
  const int64_t L = static_cast<int64_t>(metas.size());
  TORCH_CHECK(L <= kMaxLevels, "at most ", kMaxLevels, " feature maps are supported");
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == K && grad_in.size(1) == C && grad_in.size(2) == PH &&
                  grad_in.size(3) == PW,
              "grad must have shape [", K, ", ", C, ", ", PH, ", ", PW, "], got ", grad_in.sizes());
  const at::ScalarType dtype = options.dtype().toScalarType();
  // Channels-last maps take a channels-last grad, so threads that walk
  // channels innermost read it contiguously.
  const at::Tensor grad = grad_in.to(dtype).contiguous(format_of(metas[0].channels_last));
  const at::Tensor rois = rois_in.to(opmath_of(dtype)).contiguous();
  const at::Tensor levels = levels_in.defined() ? levels_in.contiguous() : levels_in;
  const PoolArgs pool{K, PH, PW, sampling_ratio, aligned};
  const int64_t gs[4] = {grad.stride(0), grad.stride(1), grad.stride(2), grad.stride(3)};
  std::vector<double> scales;
  for (const GradMeta& m : metas) scales.push_back(m.scale);
  const cudaStream_t stream = current_stream(grad);

  if (at::globalContext().deterministicAlgorithms()) {
    // Gather form: each element visits the RoIs of its tile in RoI order.
    std::vector<at::Tensor> grads;
    for (const GradMeta& m : metas)
      grads.push_back(at::empty({m.N, m.C, m.H, m.W}, options, format_of(m.channels_last)));
    if (grads[0].numel() == 0 && L == 1) return grads;
    int64_t max_h = 0, max_w = 0;
    for (const GradMeta& m : metas) {
      max_h = std::max(max_h, m.H);
      max_w = std::max(max_w, m.W);
    }
    const TileLists tl = make_tile_lists(rois, levels, scales, N, max_h, max_w, aligned);
    const at::Tensor grad_t = grad.to(opmath_of(dtype));
    const int64_t gts[4] = {grad_t.stride(0), grad_t.stride(1), grad_t.stride(2), grad_t.stride(3)};
    std::vector<at::Tensor> views(grads.begin(), grads.end());
    bool cl[kMaxLevels] = {};
    for (int64_t l = 0; l < L; ++l) cl[l] = metas[l].channels_last;
    // Each RoI's separable sample weights, computed once (not per element).
    const at::Tensor weights = at::empty({gather_weights(K, PH, PW, max_h, max_w)}, grad_t.options());
    DETOPS_CUDA_CHECK(backward_gather_cuda(to_dtype(dtype), maps_args(views, scales), cl, grad_t.const_data_ptr(), gts,
                                           rois.const_data_ptr(),
                                           levels.defined() ? levels.const_data_ptr<int64_t>() : nullptr,
                                           tl.rois.const_data_ptr<int64_t>(), tl.offsets.const_data_ptr<int64_t>(),
                                           tl.tiles_y, tl.tiles_x, pool, max_h, max_w, weights.mutable_data_ptr(),
                                           stream));
    return grads;
  }

  // Scatter form: atomics into zeroed accumulators (float for float16/bfloat16).
  const bool reduced = dtype == at::kHalf || dtype == at::kBFloat16;
  std::vector<at::Tensor> accum;
  for (const GradMeta& m : metas)
    // at::zeros has no memory format: allocate in the layout, then zero.
    accum.push_back(at::empty({m.N, m.C, m.H, m.W}, options.dtype(reduced ? at::kFloat : dtype),
                              format_of(m.channels_last)).zero_());
  DETOPS_CUDA_CHECK(backward_atomic_cuda(to_dtype(dtype), maps_args(accum, scales), grad.const_data_ptr(), gs,
                                         rois.const_data_ptr(),
                                         levels.defined() ? levels.const_data_ptr<int64_t>() : nullptr, pool,
                                         metas[0].channels_last, stream));
  if (reduced) {
    for (size_t l = 0; l < accum.size(); ++l) accum[l] = accum[l].to(dtype);
  }
  return accum;
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t PH,
                          int64_t PW, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.dim() == 4, "input must have shape [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(is_kernel_float(input.scalar_type()), "input must be float16, bfloat16, float32 or float64, got ",
              input.scalar_type());
  check_rois_shape(rois);
  TORCH_CHECK(rois.device() == input.device(), "rois and input must be on the same device, got ", rois.device(),
              " and ", input.device());
  check_pool_args(PH, PW, spatial_scale);
  return forward_impl({input}, rois, at::Tensor(), {spatial_scale}, PH, PW, sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t PH,
                                   int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sampling_ratio,
                                   bool aligned, bool channels_last) {
  check_rois_shape(rois);
  check_pool_args(PH, PW, spatial_scale);
  TORCH_CHECK(is_kernel_float(grad.scalar_type()), "grad must be a floating tensor, got ", grad.scalar_type());
  TORCH_CHECK(rois.device() == grad.device(), "rois and grad must be on the same device");
  const GradMeta meta{N, C, H, W, channels_last && C > 1, spatial_scale};
  return backward_impl(grad, {meta}, grad.options(), rois, at::Tensor(), PH, PW, sampling_ratio, aligned)[0];
}

at::Tensor multi_scale_cuda(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                            at::ArrayRef<double> scales, int64_t PH, int64_t PW, int64_t sampling_ratio, bool aligned) {
  check_multi_args(features, rois, levels, scales, PH, PW);
  return forward_impl(features.vec(), rois, levels, scales.vec(), PH, PW, sampling_ratio, aligned);
}

std::vector<at::Tensor> multi_scale_backward_cuda(const at::Tensor& grad, at::TensorList features,
                                                  const at::Tensor& rois, const at::Tensor& levels,
                                                  at::ArrayRef<double> scales, int64_t PH, int64_t PW,
                                                  int64_t sampling_ratio, bool aligned) {
  check_multi_args(features, rois, levels, scales, PH, PW);
  check_grad_device(grad, features[0], "features");
  std::vector<GradMeta> metas;
  for (size_t l = 0; l < features.size(); ++l) {
    const at::Tensor& f = features[l];
    metas.push_back({f.size(0), f.size(1), f.size(2), f.size(3), is_channels_last(f), scales[l]});
  }
  return backward_impl(grad, metas, features[0].options(), rois, levels, PH, PW, sampling_ratio, aligned);
}

}  // namespace
}  // namespace roi_align
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CUDA, m) {
  using namespace detops::roi_align;
  m.impl("roi_align", &roi_align_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
  m.impl("multi_scale_roi_align", &multi_scale_cuda);
  m.impl("multi_scale_roi_align_backward", &multi_scale_backward_cuda);
}
