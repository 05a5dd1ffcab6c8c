// Launchers of the transposed convolution's CUDA kernels. Type-erased (raw
// pointers and a DType) so that conv_transpose2d_cuda.cu needs no ATen headers.
// Every tensor is NCHW contiguous in the input's dtype (float16/bfloat16 are
// computed in float32). Each returns the launch status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"
#include "conv_transpose2d/conv_transpose2d_math.h"

namespace detops {
namespace conv_transpose2d {

// out = act(window of the transposed convolution + bias + skip window); bias/skip may be null.
cudaError_t gather_forward_cuda(DType dtype, const Geometry& g, const void* input, const void* weight,
                                const void* bias, const void* skip, void* out, Activation act, cudaStream_t stream);

cudaError_t gather_backward_input_cuda(DType dtype, const Geometry& g, const void* grad, const void* weight,
                                       void* grad_input, cudaStream_t stream);

cudaError_t gather_backward_weight_cuda(DType dtype, const Geometry& g, const void* grad, const void* input,
                                        void* grad_weight, cudaStream_t stream);

// Dense (kernel == stride): out[n0 : n0 + nb] = act(shuffle(y) + bias + skip), out and
// skip at the given strides; channels_last orders the threads along out's memory.
cudaError_t dense_shuffle_cuda(DType dtype, const Geometry& g, const void* y, DenseStrides st, int64_t n0,
                               int64_t nb, const void* bias, const void* skip, Strides4 skip_st, void* out,
                               Strides4 out_st, bool channels_last, Activation act, cudaStream_t stream);

// cols = the inverse shuffle of grad[n0 : n0 + nb] (zeros where a tap falls outside the window).
cudaError_t dense_unshuffle_cuda(DType dtype, const Geometry& g, const void* grad, Strides4 gs, int64_t n0, int64_t nb,
                                 void* cols, DenseStrides st, cudaStream_t stream);

}  // namespace conv_transpose2d
}  // namespace detops
