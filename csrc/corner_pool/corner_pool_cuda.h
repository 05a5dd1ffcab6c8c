// Launchers of corner pooling's CUDA kernels (type-erased, no ATen in the .cu).
// Tensors are contiguous in the layout the geometry describes
// (corner_pool_math.h: scan_geometry); one thread scans one lane.
#pragma once

#include <cuda_runtime_api.h>

#include "common/dtype.h"
#include "corner_pool/corner_pool_math.h"

namespace detops {
namespace corner_pool {

cudaError_t forward_cuda(DType dtype, const void* input, void* output, const ScanGeometry& g, cudaStream_t stream);

cudaError_t backward_cuda(DType dtype, const void* grad, const void* input, const void* output, void* grad_input,
                          const ScanGeometry& g, cudaStream_t stream);

}  // namespace corner_pool
}  // namespace detops
