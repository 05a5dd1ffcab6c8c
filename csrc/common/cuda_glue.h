// Host-side helpers for the *_cuda.cpp registration files: the current stream,
// the device guard and a launch-status check, without ATen's CUDA headers.
#pragma once

#include <ATen/core/Tensor.h>

#if defined(DETOPS_CUDA_EMULATED)
// The emulated test build (tests/cuda_emulated): the same glue runs the CUDA
// kernels through cuda_emulator.h on CPU tensors, registered as CPU kernels
// of the test library (detops_emu), so no CUDA runtime is involved.
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "common/cuda_emulator.h"

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda

namespace detops {
inline cudaStream_t current_stream(const at::Tensor&) { return nullptr; }
}  // namespace detops

#define DETOPS_CUDA_CHECK(expr)                                                       \
  do {                                                                                \
    const cudaError_t detops_err_ = (expr);                                           \
    TORCH_CHECK(detops_err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(detops_err_)); \
  } while (0)
#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, k, m) _TORCH_LIBRARY_IMPL(ns, CPU, m, C10_UID)
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace detops {

inline cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

}  // namespace detops

#define DETOPS_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
#endif

namespace detops {

// Backward ops are public operators: a direct call may pass grad on another
// device than the tensors it belongs to, and the kernel would read a foreign
// pointer. (The dispatcher picks the CUDA kernel if any argument is on CUDA.)
inline void check_grad_device(const at::Tensor& grad, const at::Tensor& owner, const char* owner_name) {
  TORCH_CHECK(grad.device() == owner.device(), "grad must be on the device of ", owner_name, " (", owner.device(),
              "), got ", grad.device());
}

}  // namespace detops
