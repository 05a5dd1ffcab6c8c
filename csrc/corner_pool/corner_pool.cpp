// Schemas of corner pooling (CornerNet's top / left / bottom / right pools).
//   corner_pool:          input [N,C,H,W], direction -> output [N,C,H,W]
//   corner_pool_backward: grad, input, output, direction -> grad_input [N,C,H,W]
// The backward reads which points the forward took from (input, output), so
// no index tensor is stored.
#include "corner_pool/corner_pool.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace detops {
namespace corner_pool {

Direction parse_direction(std::string_view direction) {
  if (direction == "top") return kTop;
  if (direction == "left") return kLeft;
  if (direction == "bottom") return kBottom;
  if (direction == "right") return kRight;
  TORCH_CHECK_VALUE(false, "direction must be 'top', 'left', 'bottom' or 'right', got '", direction, "'");
}

void check_forward_args(const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() == 4, "input must have shape [N, C, H, W], got ", input.sizes());
  TORCH_CHECK_VALUE(input.numel() > 0, "input must not be empty (a corner needs a map to pool), got ", input.sizes());
  TORCH_CHECK_TYPE(is_kernel_float(input.scalar_type()), "input must be float16, bfloat16, float32 or float64, got ",
                   input.scalar_type());
}

void check_backward_args(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& output) {
  check_forward_args(input);
  TORCH_CHECK_VALUE(grad.sizes() == input.sizes() && output.sizes() == input.sizes(),
                    "grad and output must have the input's shape ", input.sizes(), ", got ", grad.sizes(), " and ",
                    output.sizes());
  check_same_dtype_device(grad, "grad", input, "input");
  check_same_dtype_device(output, "output", input, "input");
}

namespace {

Operands make_operands(const at::Tensor& input, const at::Tensor* output, const at::Tensor* grad, Direction dir) {
  const bool cl = is_channels_last(input);
  Operands op;
  op.input = input.contiguous(format_of(cl));
  if (output) op.output = output->contiguous(format_of(cl));
  if (grad) op.grad = grad->contiguous(format_of(cl));
  op.result = at::empty(input.sizes(), input.options(), format_of(cl));
  op.geometry = scan_geometry(input.size(0), input.size(1), input.size(2), input.size(3), cl, dir);
  return op;
}

}  // namespace

Operands forward_operands(const at::Tensor& input, std::string_view direction) {
  const Direction dir = parse_direction(direction);
  check_forward_args(input);
  return make_operands(input, nullptr, nullptr, dir);
}

Operands backward_operands(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& output,
                           std::string_view direction) {
  const Direction dir = parse_direction(direction);
  check_backward_args(grad, input, output);
  return make_operands(input, &output, &grad, dir);
}

}  // namespace corner_pool
}  // namespace detops

TORCH_LIBRARY_FRAGMENT(detops, m) {
  m.def("corner_pool(Tensor input, str direction) -> Tensor");
  m.def("corner_pool_backward(Tensor grad, Tensor input, Tensor output, str direction) -> Tensor");
}
