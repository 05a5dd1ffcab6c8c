// The NMS family's entry points, shared by the schema file and the CPU and
// CUDA registrations.
#pragma once

#include <ATen/core/Tensor.h>

#include <string_view>

#include "common/checks.h"
#include "nms/nms_math.h"

namespace detops {
namespace nms {

DecayMethod parse_method(std::string_view name);

// Shape/dtype/device checks of direct calls to torch.ops.detops.*.
void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
void check_batched_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                        double iou_threshold);
void check_multiclass_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                           int64_t max_per_class, int64_t max_detections);
void check_soft_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double sigma);
void check_matrix_args(const at::Tensor& boxes, const at::Tensor& scores, const c10::optional<at::Tensor>& idxs,
                       double sigma);

}  // namespace nms
}  // namespace detops
