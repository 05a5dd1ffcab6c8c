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

TileLists make_tile_lists(const at::Tensor& rois_in, const at::Tensor& levels_in, at::ArrayRef<double> scales,
                          int64_t N, int64_t max_height, int64_t max_width, bool aligned) {
  const int64_t K = rois_in.size(0), L = static_cast<int64_t>(scales.size());
  TileLists t;
  t.tiles_y = std::max<int64_t>(1, (max_height + kTile - 1) / kTile);
  t.tiles_x = std::max<int64_t>(1, (max_width + kTile - 1) / kTile);
  const int64_t tiles = t.tiles_y * t.tiles_x, num_keys = L * N * tiles;
  const at::Tensor rois = rois_in.to(at::kDouble);
  const at::TensorOptions long_opts = rois.options().dtype(at::kLong);
  const at::Tensor lv = levels_in.defined() ? levels_in : at::zeros({K}, long_opts);
  const at::Tensor batch = rois.select(1, 0);
  const at::Tensor valid = batch.gt(-1).logical_and(batch.lt(N)).logical_and(lv.ge(0)).logical_and(lv.lt(L));
  at::Tensor scale = at::zeros({K}, rois.options());
  for (int64_t l = 0; l < L; ++l) scale = at::where(lv.eq(l), at::full({}, scales[l], rois.options()), scale);
  // Extent of the samples along one axis (roi_geometry's corners, in double,
  // with a margin of 3 elements for the taps and any rounding), as tile indices.
  const double offset = aligned ? 0.5 : 0.0;
  const auto tile_range = [&](int64_t lo_col, int64_t hi_col, int64_t tiles) {
    const at::Tensor start = rois.select(1, lo_col).mul(scale).sub(offset);
    at::Tensor end = rois.select(1, hi_col).mul(scale).sub(offset);
    if (!aligned) end = start.add(end.sub(start).clamp_min(1.0));
    const double last = static_cast<double>(tiles * kTile - 1);
    const at::Tensor lo = start.minimum(end).sub(3.0).clamp(0.0, last).div(double(kTile)).floor().to(at::kLong);
    const at::Tensor hi = start.maximum(end).add(3.0).clamp(0.0, last).div(double(kTile)).floor().to(at::kLong);
    return std::make_pair(lo, hi);
  };
  const auto [y0, y1] = tile_range(2, 4, t.tiles_y);
  const auto [x0, x1] = tile_range(1, 3, t.tiles_x);
  const at::Tensor ty = at::arange(t.tiles_y, long_opts).view({1, -1, 1});
  const at::Tensor tx = at::arange(t.tiles_x, long_opts).view({1, 1, -1});
  const at::Tensor hit = ty.ge(y0.view({-1, 1, 1}))
                             .logical_and(ty.le(y1.view({-1, 1, 1})))
                             .logical_and(tx.ge(x0.view({-1, 1, 1})))
                             .logical_and(tx.le(x1.view({-1, 1, 1})))
                             .logical_and(valid.view({-1, 1, 1}));
  const at::Tensor base = lv.mul(N).add(batch.clamp(0.0, double(std::max<int64_t>(N - 1, 0))).to(at::kLong));
  const at::Tensor keys = base.view({-1, 1, 1}).mul(t.tiles_y).add(ty).mul(t.tiles_x).add(tx);
  const at::Tensor flat = at::where(hit, keys, at::full({}, num_keys, long_opts)).reshape({-1});
  // Stable sort of the (RoI, tile) pairs, flattened RoI-major: RoI order is kept within each key.
  auto [sorted, order] = at::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  t.rois = order.div(tiles, "floor").contiguous();
  t.offsets = at::searchsorted(sorted, at::arange(num_keys + 1, long_opts)).contiguous();
  return t;
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
