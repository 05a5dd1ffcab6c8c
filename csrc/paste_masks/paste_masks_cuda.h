// Launcher of the mask pasting CUDA kernel. Type-erased (raw pointers and a
// DType) so that paste_masks_cuda.cu needs no ATen headers. All tensors are
// contiguous.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"

namespace detops {
namespace paste_masks {

// masks [N, 1, in_h, in_w] (dtype), boxes [N, 4] and image_sizes [N, 2] int64,
// out [N, 1, height, width] (dtype).
cudaError_t paste_masks_cuda(DType dtype, const void* masks, const int64_t* boxes, const int64_t* image_sizes,
                             void* out, int64_t N, int64_t in_h, int64_t in_w, int64_t height, int64_t width,
                             int64_t padding, cudaStream_t stream);

}  // namespace paste_masks
}  // namespace detops
