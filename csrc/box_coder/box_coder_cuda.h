// Launchers of the box coding CUDA kernels. Type-erased (raw pointers and a
// DType) so that box_coder_cuda.cu needs no ATen headers. All tensors are
// contiguous and of one dtype; each returns the launch status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "box_coder/box_coder_math.h"
#include "common/dtype.h"

namespace detops {
namespace box_coder {

// rel_codes/out: [N, 4K]; boxes: [N, 4].
cudaError_t decode_forward_cuda(DType dtype, const CoderParams<double>& params, const void* rel_codes,
                                const void* boxes, void* out, int64_t N, int64_t K, cudaStream_t stream);

// grad/grad_rel: [N, 4K]; grad_boxes: [N, 4].
cudaError_t decode_backward_cuda(DType dtype, const CoderParams<double>& params, const void* grad,
                                 const void* rel_codes, const void* boxes, void* grad_rel, void* grad_boxes,
                                 int64_t N, int64_t K, cudaStream_t stream);

// All [N, 4].
cudaError_t encode_forward_cuda(DType dtype, const CoderParams<double>& params, const void* reference,
                                const void* proposals, void* out, int64_t N, cudaStream_t stream);

cudaError_t encode_backward_cuda(DType dtype, const CoderParams<double>& params, const void* grad,
                                 const void* reference, const void* proposals, void* grad_reference,
                                 void* grad_proposals, int64_t N, cudaStream_t stream);

}  // namespace box_coder
}  // namespace detops
