// Corner pooling's entry points, shared by the schema file and the CPU and
// CUDA registrations.
//   corner_pool(input [N,C,H,W], direction) -> output [N,C,H,W]
//   corner_pool_backward(grad, input, output, direction) -> grad_input [N,C,H,W]
// direction: "top", "left", "bottom" or "right". Results have the input's
// memory format (channels-last in, channels-last out).
#pragma once

#include <ATen/core/Tensor.h>

#include <string_view>

#include "common/checks.h"
#include "common/memory_format.h"
#include "corner_pool/corner_pool_math.h"

namespace detops {
namespace corner_pool {

Direction parse_direction(std::string_view direction);
void check_forward_args(const at::Tensor& input);
void check_backward_args(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& output);

// Checked operands of one call, contiguous in the input's layout (NCHW or
// channels-last), the result allocated in that layout, and the scan geometry.
struct Operands {
  at::Tensor input, output, grad;  // output and grad: backward only
  at::Tensor result;
  ScanGeometry geometry;
};
Operands forward_operands(const at::Tensor& input, std::string_view direction);
Operands backward_operands(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& output,
                           std::string_view direction);

}  // namespace corner_pool
}  // namespace detops
