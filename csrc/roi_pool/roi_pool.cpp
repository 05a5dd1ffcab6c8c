// Schemas of RoI Pool.
//   roi_pool:          input [N,C,H,W], rois [K,5] -> (output [K,C,PH,PW], argmax [K,C,PH,PW] int64)
//   roi_pool_backward: grad [K,C,PH,PW], argmax -> grad_input [N,C,H,W] (channels-last when asked)
#include "roi_pool/roi_pool.h"

#include <torch/library.h>

namespace detops {
namespace roi_pool {

void check_forward_args(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                        int64_t pooled_width) {
  TORCH_CHECK(input.dim() == 4, "input must have shape [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(is_kernel_float(input.scalar_type()), "input must be float16, bfloat16, float32 or float64, got ",
              input.scalar_type());
  check_rois_shape(rois);
  TORCH_CHECK(rois.device() == input.device(), "rois and input must be on the same device, got ", rois.device(),
              " and ", input.device());
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, "output_size must be positive, got (", pooled_height, ", ",
              pooled_width, ")");
  TORCH_CHECK(spatial_scale > 0, "spatial_scale must be positive, got ", spatial_scale);
}

void check_backward_args(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                         int64_t pooled_height, int64_t pooled_width) {
  check_rois_shape(rois);
  TORCH_CHECK(is_kernel_float(grad.scalar_type()), "grad must be a floating tensor, got ", grad.scalar_type());
  TORCH_CHECK(argmax.scalar_type() == at::kLong, "argmax must be int64, got ", argmax.scalar_type());
  const std::vector<int64_t> shape{rois.size(0), grad.dim() == 4 ? grad.size(1) : -1, pooled_height, pooled_width};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(shape) && argmax.sizes() == grad.sizes(),
              "grad and argmax must have shape [K, C, PH, PW] = ", at::IntArrayRef(shape), ", got ", grad.sizes(),
              " and ", argmax.sizes());
  TORCH_CHECK(grad.device() == rois.device() && argmax.device() == rois.device(),
              "grad, rois and argmax must be on the same device");
}

}  // namespace roi_pool
}  // namespace detops

TORCH_LIBRARY_FRAGMENT(detops, m) {
  m.def(
      "roi_pool(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width) "
      "-> (Tensor, Tensor)");
  m.def(
      "roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, int pooled_height, "
      "int pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, bool channels_last) "
      "-> Tensor");
}
