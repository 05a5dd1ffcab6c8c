// Launchers of the position-sensitive RoI ops' CUDA kernels (type-erased, no
// ATen in the .cu). rois are [K, 5] in the compute type (float, or double for
// float64 maps); output, channel_mapping, grad and grad_input are contiguous.
// A batch index outside [0, N) (or NaN) is a device-side assertion.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"

namespace detops {
namespace ps_roi {

struct MapArgs {
  int64_t N, C, H, W;
  int64_t sN, sC, sH, sW;  // element strides of the input map
};

struct PoolArgs {
  int64_t K, C_out, PH, PW;
  int64_t sampling_ratio;  // ps_roi_align only
  double spatial_scale;
};

// align: ps_roi_align (else ps_roi_pool).
cudaError_t forward_cuda(bool align, DType dtype, const void* input, const MapArgs& map, const void* rois,
                         const PoolArgs& pool, void* out, int32_t* channel_mapping, cudaStream_t stream);

// atomicAdd of each output element's gradient shares into accum ([N, C, H, W],
// zeroed; float for float16/bfloat16).
cudaError_t backward_atomic_cuda(bool align, DType dtype, const void* grad, const void* rois, const PoolArgs& pool,
                                 void* accum, const MapArgs& map, cudaStream_t stream);

// Gather form (deterministic): one thread per grad_input element, summing the
// shares of the RoIs of its image in RoI order. order: RoIs stably sorted by
// batch index; offsets [N + 1].
cudaError_t backward_gather_cuda(bool align, DType dtype, const void* grad, const void* rois, const PoolArgs& pool,
                                 const int64_t* order, const int64_t* offsets, void* grad_input, const MapArgs& map,
                                 cudaStream_t stream);

}  // namespace ps_roi
}  // namespace detops
