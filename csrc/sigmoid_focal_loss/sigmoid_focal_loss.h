// The focal-loss family's entry points, shared by the schema file and the CPU
// registration. See sigmoid_focal_loss.cpp for the operators.
#pragma once

#include <ATen/core/Tensor.h>

#include <string_view>

#include "common/checks.h"
#include "sigmoid_focal_loss/sigmoid_focal_loss_math.h"

namespace detops {
namespace focal {

enum class Reduction : int { kNone = 0, kMean = 1, kSum = 2 };

Reduction parse_reduction(std::string_view name);

// gamma >= 0 and finite, alpha <= 1 (alpha < 0 disables the weight).
void check_coeffs(double alpha, double gamma);

// inputs: any shape, floating; targets: same shape, dtype and device.
void check_dense_args(const at::Tensor& inputs, const at::Tensor& targets);

// inputs: [N, C] floating; labels: [N] int64 on the same device.
void check_indexed_args(const at::Tensor& inputs, const at::Tensor& labels, const char* labels_name);

// grad: inputs' shape for reduction "none" (`none_shape`), a scalar otherwise.
void check_grad(const at::Tensor& grad, at::IntArrayRef none_shape, Reduction reduction);

}  // namespace focal
}  // namespace detops
