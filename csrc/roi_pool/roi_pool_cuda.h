// Launchers of RoI Pool's CUDA kernels (type-erased, no ATen in the .cu).
// rois are [K, 5] in the compute type (float, or double for float64 maps).
// A batch index outside [0, N) (or NaN) is a device-side assertion: it ends
// the CUDA context, so the process must restart (the CPU path raises).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"

namespace detops {
namespace roi_pool {

struct MapArgs {
  int64_t N, C, H, W;
  int64_t sN, sC, sH, sW;  // element strides
};

struct OutArgs {
  int64_t K, PH, PW;
  int64_t sK, sC, sH, sW;  // element strides of output / argmax / grad (same layout)
};

cudaError_t forward_cuda(DType dtype, const void* input, const MapArgs& map, const void* rois, double spatial_scale,
                         void* out, int64_t* argmax, const OutArgs& o, bool channel_fastest, cudaStream_t stream);

// atomicAdd of grad at argmax into accum (float for float16/bfloat16, zeroed);
// channel_fastest: threads walk channels innermost (channels-last layouts).
cudaError_t backward_atomic_cuda(DType dtype, const void* grad, const int64_t* argmax, const OutArgs& o,
                                 const void* rois, void* accum, const MapArgs& map, bool channel_fastest,
                                 cudaStream_t stream);

// Gather form (deterministic): one thread per grad_input element, summing the
// grads of the bins whose argmax is that element, over the RoIs listed for its
// kTileSide x kTileSide tile in RoI order (make_tile_lists, common/roi_batch.h,
// one level, aligned = false): tile_rois, offsets [N * tiles_y * tiles_x + 1].
constexpr int64_t kTileSide = 16;

cudaError_t backward_gather_cuda(DType dtype, const void* grad, const int64_t* argmax, const OutArgs& o,
                                 const void* rois, double spatial_scale, const int64_t* tile_rois,
                                 const int64_t* offsets, int64_t tiles_y, int64_t tiles_x, void* grad_input,
                                 const MapArgs& map, bool channels_last, cudaStream_t stream);

}  // namespace roi_pool
}  // namespace detops
