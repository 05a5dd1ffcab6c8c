// The IoU family's entry points, shared by the schema file and the CPU and
// CUDA registrations.
#pragma once

#include <ATen/core/Tensor.h>

#include <string_view>
#include <tuple>

#include "box_iou/box_iou_math.h"
#include "common/checks.h"

namespace detops {
namespace box_iou {

Variant parse_variant(std::string_view name);
BoxFormat parse_format(std::string_view fmt, Variant v);

// Shape/dtype/device checks; the "aligned" and "loss" forms take [K, 4] pairs.
void check_matrix_args(const at::Tensor& boxes1, const at::Tensor& boxes2);
void check_paired_args(const at::Tensor& boxes1, const at::Tensor& boxes2);
void check_grad(const at::Tensor& grad, at::IntArrayRef expected);

}  // namespace box_iou
}  // namespace detops
