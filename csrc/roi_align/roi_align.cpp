// Schemas of RoI Align (single map and fused multi-level FPN form).
//   roi_align:          input [N,C,H,W], rois [K,5] -> [K,C,PH,PW]
//   roi_align_backward: grad [K,C,PH,PW] -> grad_input [N,C,H,W] (channels-last when asked)
//   multi_scale_roi_align: features (one map per level), rois [K,5], levels [K] (int64,
//       index into features), scales (one per level) -> [K,C,PH,PW]
//   multi_scale_roi_align_backward: -> one gradient per feature map
//   _roi_align_backward_gather: CPU reference of the gather-form gradient (tests only)
// sampling_ratio <= 0 means adaptive (ceil(roi_size / pooled_size) samples per bin).
#include "roi_align/roi_align.h"

#include <algorithm>
#include <utility>

#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

namespace detops {
namespace roi_align {

void check_pool_args(int64_t pooled_height, int64_t pooled_width, double spatial_scale) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, "output_size must be positive, got (", pooled_height, ", ",
              pooled_width, ")");
  TORCH_CHECK(spatial_scale > 0, "spatial_scale must be positive, got ", spatial_scale);
}

void check_multi_args(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                      at::ArrayRef<double> scales, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(!features.empty(), "features must hold at least one feature map");
  TORCH_CHECK(scales.size() == features.size(), "scales must have one entry per feature map, got ", scales.size(),
              " scales for ", features.size(), " maps");
  const at::Tensor& first = features[0];
  for (size_t l = 0; l < features.size(); ++l) {
    const at::Tensor& f = features[l];
    TORCH_CHECK(f.dim() == 4, "features[", l, "] must have shape [N, C, H, W], got ", f.sizes());
    TORCH_CHECK(is_kernel_float(f.scalar_type()), "features[", l,
                "] must be float16, bfloat16, float32 or float64, got ", f.scalar_type());
    TORCH_CHECK(f.scalar_type() == first.scalar_type() && f.device() == first.device(),
                "all feature maps must have the same dtype and device");
    TORCH_CHECK(f.size(0) == first.size(0) && f.size(1) == first.size(1),
                "all feature maps must have the same batch size and channels, got ", first.sizes(), " and ",
                f.sizes());
    check_pool_args(pooled_height, pooled_width, scales[l]);
  }
  check_rois_shape(rois);
  TORCH_CHECK(rois.device() == first.device(), "rois and input must be on the same device, got ", rois.device(),
              " and ", first.device());
  TORCH_CHECK(levels.dim() == 1 && levels.size(0) == rois.size(0) && levels.scalar_type() == at::kLong,
              "levels must be an int64 tensor of shape [K] = [", rois.size(0), "], got ", levels.scalar_type(), " ",
              levels.sizes());
  TORCH_CHECK(levels.device() == first.device(), "levels and features must be on the same device");
}

}  // namespace roi_align
}  // namespace detops

TORCH_LIBRARY_FRAGMENT(detops, m) {
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned, "
      "bool channels_last) -> Tensor");
  m.def(
      "multi_scale_roi_align(Tensor[] features, Tensor rois, Tensor levels, float[] scales, int pooled_height, "
      "int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "multi_scale_roi_align_backward(Tensor grad, Tensor[] features, Tensor rois, Tensor levels, float[] scales, "
      "int pooled_height, int pooled_width, int sampling_ratio, bool aligned) -> Tensor[]");
  // CPU reference of the gather-form gradient (roi_align_math.h's
  // gather_roi_grad, which the deterministic CUDA backward runs), for tests.
  m.def(
      "_roi_align_backward_gather(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, int batch_size, int channels, int height, int width, int sampling_ratio, bool aligned) "
      "-> Tensor");
}
