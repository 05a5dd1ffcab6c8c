// Schemas of the focal-loss family (Lin et al. 2017). Formulas: see
// sigmoid_focal_loss_math.h. `reduction` is "none", "mean" or "sum"; the
// reduced forms return a 0-dim tensor and are computed in the same pass (no
// per-element loss is written). Outputs and gradients have the logits' dtype;
// float16/bfloat16 are computed, and reduced, in float32.
//
//   sigmoid_focal_loss(inputs [*], targets [*]) -> [*] or []
//     torchvision.ops.sigmoid_focal_loss; alpha < 0 disables the alpha weight.
//   sigmoid_focal_loss_backward(grad, inputs, targets, ..., targets_grad)
//     -> (grad_inputs [*], grad_targets [*], or [0] when targets_grad is false)
//   sigmoid_focal_loss_indexed(inputs [N, C], labels [N] int64) -> [N, C] or []
//     the same loss with one-hot targets given as class indices: labels[n] in
//     [0, C) is anchor n's class, `background` means all-zero targets, and
//     `ignore_index` means the row adds nothing (loss 0, gradient 0, and it is
//     left out of the "mean" count). The one-hot tensor is never built.
//   softmax_focal_loss(inputs [N, C], targets [N] int64) -> [N] or []
//     -alpha (1 - p_k)^gamma log p_k with p = softmax(inputs[n]); rows whose
//     target is `ignore_index` give 0 and are left out of the "mean".
//   softmax_focal_loss_with_grad(inputs, targets, ..., reduction "mean"/"sum")
//     -> (loss [], grad_inputs [N, C]): the reduced loss and its gradient for an
//     upstream gradient of 1, from one softmax per row (CPU; training's path).
#include "sigmoid_focal_loss/sigmoid_focal_loss.h"

#include <torch/library.h>

#include <cmath>
#include <cstdint>

namespace detops {
namespace focal {

Reduction parse_reduction(std::string_view name) {
  if (name == "none") return Reduction::kNone;
  if (name == "mean") return Reduction::kMean;
  if (name == "sum") return Reduction::kSum;
  TORCH_CHECK(false, "reduction must be 'none', 'mean' or 'sum', got '", name, "'");
}

void check_coeffs(double alpha, double gamma) {
  TORCH_CHECK_VALUE(!std::isnan(alpha) && alpha <= 1.0, "alpha must be in [0, 1] (or negative to disable it), got ",
                    alpha);
  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma >= 0.0, "gamma must be a finite number >= 0, got ", gamma);
}

void check_dense_args(const at::Tensor& inputs, const at::Tensor& targets) {
  TORCH_CHECK(is_kernel_float(inputs.scalar_type()),
              "inputs must be float16, bfloat16, float32 or float64, got ", inputs.scalar_type());
  check_same_dtype_device(inputs, "inputs", targets, "targets");
  TORCH_CHECK(inputs.sizes() == targets.sizes(), "targets must have the shape of inputs ", inputs.sizes(), ", got ",
              targets.sizes());
}

void check_indexed_args(const at::Tensor& inputs, const at::Tensor& labels, const char* labels_name) {
  TORCH_CHECK(inputs.dim() == 2, "inputs must have shape [N, C], got ", inputs.sizes());
  TORCH_CHECK(is_kernel_float(inputs.scalar_type()),
              "inputs must be float16, bfloat16, float32 or float64, got ", inputs.scalar_type());
  TORCH_CHECK(inputs.size(1) <= INT32_MAX, "inputs may have at most 2^31 - 1 classes, got ", inputs.size(1));
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == inputs.size(0), labels_name, " must have shape [",
              inputs.size(0), "], got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, labels_name, " must be int64, got ", labels.scalar_type());
  TORCH_CHECK(labels.device() == inputs.device(), "inputs and ", labels_name, " must be on the same device, got ",
              inputs.device(), " and ", labels.device());
}

void check_grad(const at::Tensor& grad, at::IntArrayRef none_shape, Reduction reduction) {
  if (reduction == Reduction::kNone) {
    TORCH_CHECK(grad.sizes() == none_shape, "grad must have shape ", none_shape, ", got ", grad.sizes());
  } else {
    TORCH_CHECK(grad.dim() == 0, "grad of a reduced loss must be a scalar, got shape ", grad.sizes());
  }
}

}  // namespace focal
}  // namespace detops

TORCH_LIBRARY_FRAGMENT(detops, m) {
  m.def("sigmoid_focal_loss(Tensor inputs, Tensor targets, float alpha, float gamma, str reduction) -> Tensor");
  m.def(
      "sigmoid_focal_loss_backward(Tensor grad, Tensor inputs, Tensor targets, float alpha, float gamma, "
      "str reduction, bool targets_grad) -> (Tensor, Tensor)");
  m.def(
      "sigmoid_focal_loss_indexed(Tensor inputs, Tensor labels, float alpha, float gamma, str reduction, "
      "int background, int ignore_index) -> Tensor");
  m.def(
      "sigmoid_focal_loss_indexed_backward(Tensor grad, Tensor inputs, Tensor labels, float alpha, float gamma, "
      "str reduction, int background, int ignore_index) -> Tensor");
  m.def(
      "softmax_focal_loss(Tensor inputs, Tensor targets, float alpha, float gamma, str reduction, "
      "int ignore_index) -> Tensor");
  m.def(
      "softmax_focal_loss_backward(Tensor grad, Tensor inputs, Tensor targets, float alpha, float gamma, "
      "str reduction, int ignore_index) -> Tensor");
  m.def(
      "softmax_focal_loss_with_grad(Tensor inputs, Tensor targets, float alpha, float gamma, str reduction, "
      "int ignore_index) -> (Tensor, Tensor)");
}
