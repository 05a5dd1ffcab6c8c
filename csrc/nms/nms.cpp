// Schemas of the NMS family. Boxes are (x1, y1, x2, y2); scores are [N].
//   nms:            [N,4], [N] -> keep [K] int64, decreasing score, ties by lower index
//   batched_nms:    [N,4], [N], idxs [N] int64 -> keep [K] (exact per-class NMS), same order
//   multiclass_nms: [B,N,4] or [B,N,C,4], [B,N,C] -> boxes [B,D,4], scores [B,D],
//                   labels [B,D] int64 (-1 padding), num_detections [B] int64
//   soft_nms:       [N,4], [N] -> keep [K] (selection order), decayed scores [K]
//   matrix_nms:     [N,4], [N], idxs [N]? -> keep [K] (decreasing decayed score), decayed scores [K]
// method is "linear" or "gaussian". Scores come back in float32 for
// float16/bfloat16 inputs.
#include "nms/nms.h"

#include <torch/library.h>

namespace detops {
namespace nms {

DecayMethod parse_method(std::string_view name) {
  if (name == "linear") return DecayMethod::kLinear;
  if (name == "gaussian") return DecayMethod::kGaussian;
  TORCH_CHECK(false, "method must be 'linear' or 'gaussian', got '", name, "'");
}

namespace {

void check_threshold(double value, const char* name) {
  TORCH_CHECK(value >= 0.0 && value <= 1.0, name, " must be in [0, 1], got ", value);
}

void check_boxes_scores(const at::Tensor& boxes, const at::Tensor& scores) {
  check_boxes(boxes, "boxes", 2);
  TORCH_CHECK(scores.dim() == 1, "scores must have shape [N], got ", scores.sizes());
  check_same_dtype_device(boxes, "boxes", scores, "scores");
  TORCH_CHECK(boxes.size(0) == scores.size(0), "boxes and scores must have the same length, got ",
              boxes.size(0), " and ", scores.size(0));
}

void check_idxs(const at::Tensor& idxs, const at::Tensor& boxes) {
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "idxs must have shape [", boxes.size(0),
              "], got ", idxs.sizes());
  TORCH_CHECK(idxs.scalar_type() == at::kLong, "idxs must be int64, got ", idxs.scalar_type());
  TORCH_CHECK(idxs.device() == boxes.device(), "idxs must be on ", boxes.device(), ", got ", idxs.device());
}

}  // namespace

void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes_scores(boxes, scores);
  check_threshold(iou_threshold, "iou_threshold");
}

void check_batched_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                        double iou_threshold) {
  check_nms_args(boxes, scores, iou_threshold);
  check_idxs(idxs, boxes);
}

void check_multiclass_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                           int64_t max_per_class, int64_t max_detections) {
  TORCH_CHECK(scores.dim() == 3, "scores must have shape [B, N, C], got ", scores.sizes());
  const bool shared = boxes.dim() == 3 && boxes.size(2) == 4 && boxes.size(0) == scores.size(0) &&
                      boxes.size(1) == scores.size(1);
  const bool per_class = boxes.dim() == 4 && boxes.size(3) == 4 && boxes.size(0) == scores.size(0) &&
                         boxes.size(1) == scores.size(1) && boxes.size(2) == scores.size(2);
  TORCH_CHECK(shared || per_class, "boxes must have shape [B, N, 4] or [B, N, C, 4] matching scores ",
              scores.sizes(), ", got ", boxes.sizes());
  TORCH_CHECK(is_kernel_float(boxes.scalar_type()), "boxes must be float16, bfloat16, float32 or float64, got ",
              boxes.scalar_type());
  check_same_dtype_device(boxes, "boxes", scores, "scores");
  check_threshold(iou_threshold, "iou_threshold");
  TORCH_CHECK(max_per_class >= 1, "max_per_class must be >= 1, got ", max_per_class);
  TORCH_CHECK(max_detections >= 1, "max_detections must be >= 1, got ", max_detections);
}

void check_soft_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double sigma) {
  check_nms_args(boxes, scores, iou_threshold);
  TORCH_CHECK(sigma > 0.0, "sigma must be > 0, got ", sigma);
}

void check_matrix_args(const at::Tensor& boxes, const at::Tensor& scores, const c10::optional<at::Tensor>& idxs,
                       double sigma) {
  check_boxes_scores(boxes, scores);
  if (idxs.has_value()) check_idxs(*idxs, boxes);
  TORCH_CHECK(sigma > 0.0, "sigma must be > 0, got ", sigma);
}

}  // namespace nms
}  // namespace detops

TORCH_LIBRARY_FRAGMENT(detops, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def(
      "multiclass_nms(Tensor boxes, Tensor scores, float score_threshold, float iou_threshold, "
      "int max_per_class, int max_detections) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "soft_nms(Tensor boxes, Tensor scores, float iou_threshold, float sigma, float score_threshold, "
      "str method) -> (Tensor, Tensor)");
  m.def(
      "matrix_nms(Tensor boxes, Tensor scores, Tensor? idxs, str method, float sigma, "
      "float score_threshold) -> (Tensor, Tensor)");
}
