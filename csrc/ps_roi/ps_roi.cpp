// Schemas and argument checks of the position-sensitive RoI ops (see ps_roi.h).
#include "ps_roi/ps_roi.h"

#include <torch/library.h>

#include <cmath>

namespace detops {
namespace ps_roi {
namespace {

int64_t check_pooling(int64_t channels, double spatial_scale, int64_t pooled_h, int64_t pooled_w) {
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0, "output_size must be positive, got (", pooled_h, ", ", pooled_w, ")");
  // Zero and negative scales are torchvision's too (the boxes scale through them).
  TORCH_CHECK(std::isfinite(spatial_scale), "spatial_scale must be finite, got ", spatial_scale);
  TORCH_CHECK(channels % (pooled_h * pooled_w) == 0, "input channels (", channels,
              ") must be a multiple of output_size[0] * output_size[1] = ", pooled_h * pooled_w);
  return channels / (pooled_h * pooled_w);
}

}  // namespace

int64_t check_forward_args(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                           int64_t pooled_w) {
  TORCH_CHECK(input.dim() == 4, "input must have shape [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(is_kernel_float(input.scalar_type()), "input must be float16, bfloat16, float32 or float64, got ",
              input.scalar_type());
  check_rois_shape(rois);
  TORCH_CHECK(rois.device() == input.device(), "rois and input must be on the same device, got ", rois.device(),
              " and ", input.device());
  return check_pooling(input.size(1), spatial_scale, pooled_h, pooled_w);
}

int64_t check_backward_args(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& channel_mapping,
                            double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                            int64_t channels, int64_t height, int64_t width) {
  check_rois_shape(rois);
  TORCH_CHECK(is_kernel_float(grad.scalar_type()), "grad must be float16, bfloat16, float32 or float64, got ",
              grad.scalar_type());
  TORCH_CHECK(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0,
              "batch_size, channels, height and width must be >= 0, got ", batch_size, ", ", channels, ", ", height,
              ", ", width);
  const int64_t c_out = check_pooling(channels, spatial_scale, pooled_h, pooled_w);
  const std::vector<int64_t> shape{rois.size(0), c_out, pooled_h, pooled_w};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(shape) && channel_mapping.sizes() == grad.sizes(),
              "grad and channel_mapping must have shape [K, C / (PH * PW), PH, PW] = ", at::IntArrayRef(shape),
              ", got ", grad.sizes(), " and ", channel_mapping.sizes());
  TORCH_CHECK(channel_mapping.scalar_type() == at::kInt || channel_mapping.scalar_type() == at::kLong,
              "channel_mapping must be int32 or int64, got ", channel_mapping.scalar_type());
  TORCH_CHECK(grad.device() == rois.device() && channel_mapping.device() == rois.device(),
              "grad, rois and channel_mapping must be on the same device, got ", grad.device(), ", ", rois.device(),
              " and ", channel_mapping.device());
  return c_out;
}

}  // namespace ps_roi
}  // namespace detops

TORCH_LIBRARY_FRAGMENT(detops, m) {
  m.def(
      "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio) -> (Tensor, Tensor)");
  m.def(
      "ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
      "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
      "SymInt height, SymInt width) -> Tensor");
  m.def(
      "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
      "-> (Tensor, Tensor)");
  m.def(
      "ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
      "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
      "SymInt width) -> Tensor");
}
