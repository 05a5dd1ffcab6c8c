// Launchers of RoI Align's CUDA kernels. Type-erased (raw pointers, strides
// and a DType) so that roi_align_cuda.cu needs no ATen headers. rois are
// [K, 5] in the compute type (float for float16/bfloat16/float32 maps, double
// for float64); levels is [K] int64 or null (every RoI on map 0). A batch
// index outside [0, N) (or NaN) is a device-side assertion, as in torch's own
// index kernels: it ends the CUDA context, so the process must restart (the
// CPU path raises a RuntimeError instead). A level out of range pools zeros
// and gets no gradient (the Python wrappers compute levels in range).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"

namespace detops {
namespace roi_align {

constexpr int kMaxLevels = 8;

// One feature map (or its gradient): data pointer, sizes, element strides.
struct MapArgs {
  const void* data;
  int64_t H, W;
  int64_t sN, sC, sH, sW;
  double scale;
};

struct MapsArgs {
  int num_levels;
  int64_t N, C;
  MapArgs maps[kMaxLevels];
};

struct PoolArgs {
  int64_t K, PH, PW, sampling_ratio;
  bool aligned;
};

// out[K, C, PH, PW] with element strides out_strides; channel_fastest picks
// the thread order (channels innermost for a channels-last output).
cudaError_t forward_cuda(DType dtype, const MapsArgs& maps, const void* rois, const int64_t* levels,
                         const PoolArgs& pool, void* out, const int64_t* out_strides, bool channel_fastest,
                         cudaStream_t stream);

// Scatter form: one thread per grad element, atomicAdd into accum (one per
// level, given in maps[l].data with its strides; float for float16/bfloat16
// maps, else the map's type). accum must be zeroed. channel_fastest: threads
// walk channels innermost (channels-last maps: coalesced reads and atomics).
cudaError_t backward_atomic_cuda(DType dtype, const MapsArgs& accum, const void* grad, const int64_t* grad_strides,
                                 const void* rois, const int64_t* levels, const PoolArgs& pool, bool channel_fastest,
                                 cudaStream_t stream);

// Gather form (deterministic): axis_weights_kernel computes each RoI's
// separable sample weights once (weights: a workspace of gather_weights(...)
// elements of the compute type), then one thread per element of grad_inputs
// (given in maps[l].data, the map's type) sums gather_roi_grad's terms over
// the RoIs listed for its tile, in RoI order. grad is in the compute type
// (float or double). tile_rois / offsets: make_tile_lists (common/roi_batch.h)
// with kTileSide tiles; max_h / max_w: the largest map's height and width.
constexpr int64_t kTileSide = 16;
inline int64_t gather_weights(int64_t K, int64_t PH, int64_t PW, int64_t max_h, int64_t max_w) {
  return K * (PH * max_h + PW * max_w + 1);
}
cudaError_t backward_gather_cuda(DType dtype, const MapsArgs& grad_inputs, const bool* channels_last,
                                 const void* grad, const int64_t* grad_strides, const void* rois,
                                 const int64_t* levels, const int64_t* tile_rois, const int64_t* offsets,
                                 int64_t tiles_y, int64_t tiles_x, const PoolArgs& pool, int64_t max_h,
                                 int64_t max_w, void* weights, cudaStream_t stream);

}  // namespace roi_align
}  // namespace detops
