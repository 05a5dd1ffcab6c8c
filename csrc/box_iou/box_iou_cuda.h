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

cudaError_t matrix_backward_cuda(DType dtype, Variant v, const void* grad, const void* boxes1,
                                 const void* boxes2, void* grad1, void* grad2, int64_t B, int64_t N, int64_t M,
                                 double eps, cudaStream_t stream);

cudaError_t aligned_forward_cuda(DType dtype, Variant v, BoxFormat fmt, const void* boxes1, const void* boxes2, void* out,
                                 int64_t K, double eps, cudaStream_t stream);

cudaError_t aligned_backward_cuda(DType dtype, Variant v, const void* grad, const void* boxes1,
                                  const void* boxes2, void* grad1, void* grad2, int64_t K, double eps,
                                  cudaStream_t stream);

}  // namespace box_iou
}  // namespace detops
