// Launchers of the IoU family's CUDA kernels. Type-erased (raw pointers and a
// DType) so that box_iou_cuda.cu needs no ATen headers. Outputs and grad are in
// the compute type (float for float16/bfloat16 boxes); box gradients are in
// the boxes' type. Each returns the launch status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "box_iou/box_iou_math.h"
#include "common/dtype.h"

namespace detops {
namespace box_iou {

cudaError_t matrix_forward_cuda(DType dtype, Variant v, BoxFormat fmt, const void* boxes1, const void* boxes2, void* out,
                                int64_t B, int64_t N, int64_t M, double eps, cudaStream_t stream);

// The matrix backward's sums are split so that few rows or few columns still
// fill the GPU: d/d boxes1 sums over M columns per row (B * N blocks), d/d
// boxes2 over N rows per 32-column tile (ceil(M / 32) * B blocks): 200k
// anchors x 20 boxes x batch 2 would be 2 column blocks. Each sum is cut into
// up to `splits` chunks of at least kMin*Chunk elements, so that the launch
// has about kTargetBlocks blocks; each block writes its chunk's partial sum to
// a workspace and a second kernel adds the chunks in chunk order. The split
// depends only on the shapes, so the result is deterministic.
constexpr int64_t kTargetBlocks = 1024;  // ~8 per multiprocessor on a 132-SM H100/H200
constexpr int64_t kMinColumnChunk = 1024;  // columns per chunk of a row's sum (4 per thread)
constexpr int64_t kMinRowChunk = 256;  // rows per chunk of a column's sum (32 per row lane)
constexpr int kColTile = 32;  // columns per block of the d/d boxes2 kernel

// Chunks for a sum over `extent` elements computed by `blocks` blocks.
inline int64_t split_count(int64_t blocks, int64_t extent, int64_t min_chunk) {
  if (blocks <= 0 || extent <= min_chunk) return 1;
  int64_t s = (kTargetBlocks + blocks - 1) / blocks;
  const int64_t most = (extent + min_chunk - 1) / min_chunk;
  s = s < most ? s : most;
  s = s < 65535 ? s : 65535;
  if (s <= 1) return 1;
  const int64_t chunk = (extent + s - 1) / s;
  return (extent + chunk - 1) / chunk;  // no empty chunk
}

struct BackwardSplit {
  int64_t row_splits = 1;  // chunks of M in each row's sum (d/d boxes1)
  int64_t col_splits = 1;  // chunks of N in each column's sum (d/d boxes2)
  // Workspace of the partial sums, in elements of the compute type.
  int64_t workspace(int64_t B, int64_t N, int64_t M) const {
    return 4 * ((row_splits > 1 ? row_splits * B * N : 0) + (col_splits > 1 ? col_splits * B * M : 0));
  }
};

inline BackwardSplit backward_split(int64_t B, int64_t N, int64_t M) {
  BackwardSplit s;
  s.row_splits = split_count(B * N, M, kMinColumnChunk);
  s.col_splits = split_count((M + kColTile - 1) / kColTile * B, N, kMinRowChunk);
  return s;
}

// workspace: split.workspace(B, N, M) elements of the compute type (null when 0).
cudaError_t matrix_backward_cuda(DType dtype, Variant v, const void* grad, const void* boxes1,
                                 const void* boxes2, void* grad1, void* grad2, int64_t B, int64_t N, int64_t M,
                                 double eps, const BackwardSplit& split, void* workspace, cudaStream_t stream);

cudaError_t aligned_forward_cuda(DType dtype, Variant v, BoxFormat fmt, const void* boxes1, const void* boxes2, void* out,
                                 int64_t K, double eps, cudaStream_t stream);

cudaError_t aligned_backward_cuda(DType dtype, Variant v, const void* grad, const void* boxes1,
                                  const void* boxes2, void* grad1, void* grad2, int64_t K, double eps,
                                  cudaStream_t stream);

}  // namespace box_iou
}  // namespace detops
