// Host-side helpers for the *_cuda.cpp registration files: the current stream,
// the device guard and a launch-status check, without ATen's CUDA headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace detops {

inline cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

}  // namespace detops

#define DETOPS_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
