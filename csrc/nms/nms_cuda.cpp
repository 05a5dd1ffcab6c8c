// CUDA registrations of the NMS family: checks, sorting and gathers (ATen),
// allocation and the launches (nms_cuda.cu).
//
// Host synchronisation: nms, batched_nms, soft_nms and matrix_nms read the
// number of kept boxes back once, at the end, to size their output (the
// masked_select / nonzero / item below); nothing else waits for the device.
// multiclass_nms never synchronises (fixed-size outputs).
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>

#include "common/cuda_glue.h"
#include "nms/nms.h"
#include "nms/nms_cuda.h"

namespace detops {
namespace nms {
namespace {

at::Tensor stable_descending_order(const at::Tensor& scores) {
  return std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
}

// keep flags (uint8) of greedy NMS over sorted boxes in the compute type.
at::Tensor run_greedy(const at::Tensor& sorted_boxes, const at::Tensor& cls, double iou_threshold) {
  const int64_t n = sorted_boxes.size(0);
  const auto opts = sorted_boxes.options();
  at::Tensor removed = at::zeros({mask_words(n)}, opts.dtype(at::kLong));
  at::Tensor mask = at::empty({mask_chunk_rows(n) * mask_words(n)}, opts.dtype(at::kLong));
  at::Tensor keep = at::empty({n}, opts.dtype(at::kByte));
  DETOPS_CUDA_CHECK(greedy_nms_cuda(to_dtype(sorted_boxes.scalar_type()), sorted_boxes.const_data_ptr(),
                                    cls.defined() ? cls.const_data_ptr<int64_t>() : nullptr, n, iou_threshold,
                                    static_cast<uint64_t*>(removed.mutable_data_ptr()),
                                    static_cast<uint64_t*>(mask.mutable_data_ptr()),
                                    static_cast<uint8_t*>(keep.mutable_data_ptr()), current_stream(sorted_boxes)));
  return keep;
}

at::Tensor sorted_compute_boxes(const at::Tensor& boxes, const at::Tensor& order) {
  return boxes.index_select(0, order).to(compute_dtype(boxes.scalar_type())).contiguous();
}

at::Tensor nms_op(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_args(boxes, scores, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order = stable_descending_order(scores);
  const at::Tensor keep = run_greedy(sorted_compute_boxes(boxes, order), at::Tensor(), iou_threshold);
  return order.masked_select(keep.to(at::kBool));
}

at::Tensor batched_nms_op(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                          double iou_threshold) {
  check_batched_args(boxes, scores, idxs, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  // Score order, then grouped by class (stable: score order kept inside a class).
  const at::Tensor order = stable_descending_order(scores);
  const auto [cls_grouped, by_class] = idxs.index_select(0, order).sort(/*stable=*/true, 0, /*descending=*/false);
  const at::Tensor grouped = order.index_select(0, by_class);
  const at::Tensor keep_grouped = run_greedy(sorted_compute_boxes(boxes, grouped), cls_grouped.contiguous(), iou_threshold);
  const at::Tensor keep_by_index = at::zeros({n}, keep_grouped.options()).index_copy_(0, grouped, keep_grouped);
  return order.masked_select(keep_by_index.index_select(0, order).to(at::kBool));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_op(
    const at::Tensor& boxes_in, const at::Tensor& scores_in, double score_threshold, double iou_threshold,
    int64_t max_per_class, int64_t max_detections) {
  check_multiclass_args(boxes_in, scores_in, iou_threshold, max_per_class, max_detections);
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const int64_t B = scores.size(0), N = scores.size(1), C = scores.size(2), D = max_detections;
  const bool per_class_boxes = boxes.dim() == 4;
  at::Tensor out_boxes = at::zeros({B, D, 4}, boxes.options());
  at::Tensor out_scores = at::zeros({B, D}, scores.options());
  at::Tensor out_labels = at::full({B, D}, -1, scores.options().dtype(at::kLong));
  at::Tensor out_count = at::zeros({B}, scores.options().dtype(at::kLong));
  if (B == 0 || N == 0 || C == 0) return {out_boxes, out_scores, out_labels, out_count};

  // Candidates per (image, class) in score order; -inf marks the rest (NaN too).
  const at::ScalarType ct = compute_dtype(scores.scalar_type());
  const at::Tensor per_task = scores.to(ct).permute({0, 2, 1}).contiguous();  // [B, C, N]
  const at::Tensor masked = per_task.masked_fill(per_task.gt(score_threshold).logical_not(), -INFINITY);
  const auto [sorted_scores, order] = masked.sort(/*stable=*/true, -1, /*descending=*/true);
  const int64_t slots = std::min(max_per_class, N);
  at::Tensor kept_scores = at::empty({B, C * slots}, per_task.options());
  at::Tensor kept_box = at::empty({B, C * slots}, per_task.options().dtype(at::kLong));
  DETOPS_CUDA_CHECK(multiclass_nms_cuda(to_dtype(boxes.scalar_type()), boxes.const_data_ptr(), per_class_boxes,
                                        sorted_scores.contiguous().const_data_ptr(), order.contiguous().const_data_ptr<int64_t>(),
                                        B, N, C, slots, iou_threshold, kept_scores.mutable_data_ptr(),
                                        kept_box.mutable_data_ptr<int64_t>(), current_stream(boxes)));

  // Top max_detections per image by score, ties by box * C + class; all on
  // the device (two stable sorts), so no synchronisation.
  const at::Tensor valid_slot = kept_scores.gt(-INFINITY);
  const at::Tensor slot_class = at::arange(C * slots, kept_box.options()).floor_divide(slots);
  const at::Tensor flat = kept_box.mul(C).add(slot_class).masked_fill(valid_slot.logical_not(), N * C);
  const at::Tensor by_flat = std::get<1>(flat.sort(/*stable=*/true, 1, /*descending=*/false));
  const at::Tensor by_score = std::get<1>(kept_scores.gather(1, by_flat).sort(/*stable=*/true, 1, /*descending=*/true));
  const int64_t k = std::min(D, C * slots);
  const at::Tensor pick = by_flat.gather(1, by_score).narrow(1, 0, k);
  const at::Tensor valid = valid_slot.gather(1, pick);
  const at::Tensor invalid = valid.logical_not();
  const at::Tensor key = flat.gather(1, pick).masked_fill(invalid, 0);
  const at::Tensor box_index = key.floor_divide(C);
  out_labels.narrow(1, 0, k).copy_(key.remainder(C).masked_fill(invalid, -1));
  out_scores.narrow(1, 0, k).copy_(scores.view({B, N * C}).gather(1, key).masked_fill(invalid, 0));
  const at::Tensor box_rows = per_class_boxes ? key : box_index;
  const at::Tensor flat_boxes = per_class_boxes ? boxes.view({B, N * C, 4}) : boxes;
  out_boxes.narrow(1, 0, k).copy_(
      flat_boxes.gather(1, box_rows.unsqueeze(-1).expand({B, k, 4})).masked_fill(invalid.unsqueeze(-1), 0));
  out_count.copy_(valid.sum(1));
  return {out_boxes, out_scores, out_labels, out_count};
}

std::tuple<at::Tensor, at::Tensor> soft_nms_op(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                                               double iou_threshold, double sigma, double score_threshold,
                                               c10::string_view method) {
  check_soft_args(boxes_in, scores_in, iou_threshold, sigma);
  const DecayMethod m = parse_method(method);
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const int64_t n = boxes.size(0);
  const at::ScalarType ct = compute_dtype(boxes.scalar_type());
  at::Tensor work = at::empty({n}, boxes.options().dtype(ct));
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kLong));
  at::Tensor kept_scores = at::empty({n}, boxes.options().dtype(ct));
  at::Tensor count = at::zeros({1}, boxes.options().dtype(at::kLong));
  if (n > 0) {
    DETOPS_CUDA_CHECK(soft_nms_cuda(to_dtype(boxes.scalar_type()), boxes.const_data_ptr(), scores.const_data_ptr(), n,
                                    iou_threshold, sigma, score_threshold, m, work.mutable_data_ptr(),
                                    keep.mutable_data_ptr<int64_t>(), kept_scores.mutable_data_ptr(),
                                    count.mutable_data_ptr<int64_t>(), current_stream(boxes)));
  }
  const int64_t kept = count.item<int64_t>();  // the output size: one synchronisation
  return {keep.narrow(0, 0, kept).clone(), kept_scores.narrow(0, 0, kept).clone()};
}

std::tuple<at::Tensor, at::Tensor> matrix_nms_op(const at::Tensor& boxes, const at::Tensor& scores,
                                                 const c10::optional<at::Tensor>& idxs, c10::string_view method,
                                                 double sigma, double score_threshold) {
  check_matrix_args(boxes, scores, idxs, sigma);
  const DecayMethod m = parse_method(method);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  const at::ScalarType ct = compute_dtype(boxes.scalar_type());
  const at::Tensor order = stable_descending_order(scores);
  const at::Tensor sorted_boxes = sorted_compute_boxes(boxes, order);
  const at::Tensor sorted_scores = scores.index_select(0, order).to(ct).contiguous();
  at::Tensor cls;
  if (idxs.has_value()) cls = idxs->index_select(0, order).contiguous();
  at::Tensor comp = at::empty({n}, sorted_scores.options());
  at::Tensor decayed = at::empty({n}, sorted_scores.options());
  DETOPS_CUDA_CHECK(matrix_nms_cuda(to_dtype(ct), sorted_boxes.const_data_ptr(), sorted_scores.const_data_ptr(),
                                    cls.defined() ? cls.const_data_ptr<int64_t>() : nullptr, n, m, sigma,
                                    comp.mutable_data_ptr(), decayed.mutable_data_ptr(), current_stream(boxes)));
  const at::Tensor pos = decayed.ge(score_threshold).nonzero().squeeze(1);  // synchronises (output size)
  const at::Tensor selected = decayed.index_select(0, pos);
  const at::Tensor by_decay = std::get<1>(selected.sort(/*stable=*/true, 0, /*descending=*/true));
  return {order.index_select(0, pos.index_select(0, by_decay)), selected.index_select(0, by_decay)};
}

}  // namespace
}  // namespace nms
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CUDA, m) {
  using namespace detops::nms;
  m.impl("nms", &nms_op);
  m.impl("batched_nms", &batched_nms_op);
  m.impl("multiclass_nms", &multiclass_nms_op);
  m.impl("soft_nms", &soft_nms_op);
  m.impl("matrix_nms", &matrix_nms_op);
}
