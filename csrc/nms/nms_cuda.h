// Launchers of the NMS family's CUDA kernels. Type-erased (raw pointers and a
// DType) so that nms_cuda.cu needs no ATen headers. "Compute" arrays are in
// float for float16/bfloat16 inputs; the glue (nms_cuda.cpp) sorts, converts
// and allocates with ATen. Each returns the launch status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"
#include "nms/nms_math.h"

namespace detops {
namespace nms {

// Rows of the suppression mask computed per chunk: the mask buffer holds
// kMaskChunkRows x ceil(n / 64) words, not n x ceil(n / 64).
constexpr int64_t kMaskChunkRows = 4096;

inline int64_t mask_words(int64_t n) { return (n + 63) / 64; }
inline int64_t mask_chunk_rows(int64_t n) { return n < kMaskChunkRows ? ((n + 63) / 64) * 64 : kMaskChunkRows; }

// Greedy NMS over n boxes [n, 4] (compute type: kFloat or kDouble) sorted by
// decreasing score and, when cls is given, grouped by ascending class (boxes
// of different classes never suppress each other). removed: mask_words(n)
// zeroed words; mask: mask_chunk_rows(n) * mask_words(n) words of scratch;
// keep: n bytes, set to 1 for kept positions (zeroed by the launcher).
// Any other dtype returns cudaErrorInvalidValue.
cudaError_t greedy_nms_cuda(DType dtype, const void* sorted_boxes, const int64_t* cls, int64_t n,
                            double iou_threshold, uint64_t* removed, uint64_t* mask, uint8_t* keep,
                            cudaStream_t stream);

// Per (image, class) exact greedy NMS for multiclass_nms. boxes: [B, N, 4] or
// [B, N, C, 4] in their storage dtype; sorted_scores / order: [B, C, N]
// candidates per (image, class) by decreasing score, -inf marking
// non-candidates (compute type). Writes kept_scores [B*C, max_per_class]
// (-inf padding, compute type) and kept_box [B*C, max_per_class] (box index).
cudaError_t multiclass_nms_cuda(DType dtype, const void* boxes, bool per_class_boxes, const void* sorted_scores,
                                const int64_t* order, int64_t B, int64_t N, int64_t C, int64_t max_per_class,
                                double iou_threshold, void* kept_scores, int64_t* kept_box, cudaStream_t stream);

// Soft-NMS in one block. boxes / scores: [n] storage dtype. work: n compute-type
// scratch; keep [n], kept_scores [n] (compute type); count: one int64.
cudaError_t soft_nms_cuda(DType dtype, const void* boxes, const void* scores, int64_t n, double iou_threshold,
                          double sigma, double score_threshold, DecayMethod method, void* work, int64_t* keep,
                          void* kept_scores, int64_t* count, cudaStream_t stream);

// Matrix NMS decay over boxes sorted by decreasing score (compute type, kFloat
// or kDouble); NaN scores take no part. cls: sorted classes or nullptr.
// comp: n scratch; decayed: n outputs (score * decay). Any other dtype returns
// cudaErrorInvalidValue.
cudaError_t matrix_nms_cuda(DType dtype, const void* sorted_boxes, const void* sorted_scores, const int64_t* cls,
                            int64_t n, DecayMethod method, double sigma, void* comp, void* decayed,
                            cudaStream_t stream);

}  // namespace nms
}  // namespace detops
