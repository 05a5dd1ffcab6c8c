// Helpers for .cu files: dtype conversion and dtype dispatch without ATen.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cassert>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <utility>

#include "common/dtype.h"

namespace detops {

// The arithmetic type of each storage type: reduced precision computes in float.
template <typename T> struct OpMath { using type = T; };
template <> struct OpMath<__half> { using type = float; };
template <> struct OpMath<__nv_bfloat16> { using type = float; };
template <typename T> using opmath_t = typename OpMath<T>::type;

template <typename To, typename From>
__device__ __forceinline__ To convert(From x) { return static_cast<To>(x); }
template <> __device__ __forceinline__ float convert<float, __half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float convert<float, __nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ __half convert<__half, float>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 convert<__nv_bfloat16, float>(float x) { return __float2bfloat16(x); }

// Calls f(T{}) with T the storage type named by dtype.
template <typename F>
inline void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat: f(float{}); break;
    case DType::kDouble: f(double{}); break;
    case DType::kHalf: f(__half{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
  }
}

// A bad argument found inside a kernel (a RoI's batch index outside [0, N)):
// the device-side assertion torch's own index kernels raise, without a host
// sync. The device prints "Assertion `msg` failed" with the kernel's file and
// line, and the next synchronising call raises "device-side assert triggered".
// Unlike assert(), NDEBUG does not remove it; callers still clamp the index, so
// no load goes out of bounds even before the trap lands.
#define DETOPS_KERNEL_CHECK(cond, msg)                               \
  do {                                                             \
    if (!(cond)) __assert_fail(msg, __FILE__, __LINE__, __func__); \
  } while (0)

// A RoI's batch index rois[r, 0] into n, truncated toward zero as torchvision
// does. Outside (-1, N) it is a device-side assertion (`message` says which
// op) and n is 0: the caller skips the RoI on a false return, so that no load
// goes out of bounds before the trap lands. Shared by the RoI kernels.
template <typename T>
__device__ __forceinline__ bool load_roi_batch(const T* roi, int64_t N, int64_t& n, const char* message) {
  const bool ok = roi[0] > T(-1) && roi[0] < T(N);
  DETOPS_KERNEL_CHECK(ok, message);
  n = ok ? static_cast<int64_t>(roi[0]) : 0;
  return ok;
}

// Element p of a [N, C, H, W] walk in memory order: NCHW (w fastest) or
// channels-last (c fastest), so that neighbouring threads touch neighbouring
// memory in either layout.
struct Index4 {
  int64_t n, c, h, w;
};

// I: the index type of the launch (index_width below), int32_t when every
// index fits, so that the divisions and remainders are 32-bit.
template <typename I>
__device__ __forceinline__ Index4 unravel_nchw(I p, int64_t C_, int64_t H_, int64_t W_, bool channels_last) {
  const I C = static_cast<I>(C_), H = static_cast<I>(H_), W = static_cast<I>(W_);
  Index4 i;
  if (channels_last) {
    i.c = p % C;
    p /= C;
    i.w = p % W;
    p /= W;
    i.h = p % H;
    i.n = p / H;
  } else {
    i.w = p % W;
    p /= W;
    i.h = p % H;
    p /= H;
    i.c = p % C;
    i.n = p / C;
  }
  return i;
}

// The first index and the stride of a grid-stride loop, in the index type I.
template <typename I>
__device__ __forceinline__ I grid_first() {
  return static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + static_cast<I>(threadIdx.x);
}
template <typename I>
__device__ __forceinline__ I grid_stride() {
  return static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
}

// 32-bit index arithmetic when it cannot overflow: a 64-bit division or
// remainder is a ~20-instruction sequence on the GPU, a 32-bit one far less.
// A grid-stride loop over `total` elements with `blocks` x `threads` reaches
// indices below total + blocks * threads. The emulated test build lowers the
// limit through DETOPS_EMU_INDEX32_LIMIT, so that small cases run the 64-bit
// kernels too.
inline int64_t index32_limit() {
#if defined(DETOPS_CUDA_EMULATED)
  if (const char* s = std::getenv("DETOPS_EMU_INDEX32_LIMIT")) return std::strtoll(s, nullptr, 10);
#endif
  return INT32_MAX;
}

// Calls f(I{}) with I = int32_t when every index below `reach` fits, else int64_t.
template <typename F>
inline void dispatch_index(int64_t reach, F&& f) {
  if (reach <= index32_limit()) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

// Every kernel launch goes through here: launch<kernel>(grid, block,
// shared_bytes, stream, args...). Under nvcc it is a plain <<<>>> launch and
// the caller checks cudaGetLastError() as before. In the emulated test build
// (tests/cuda_emulated, DETOPS_CUDA_EMULATED) cuda_emulator.h supplies the
// CUDA headers and this runs the kernel on the CPU under sm_90's launch limits,
// so nvcc and the emulator share every launch site.
template <auto Kernel, typename... Args>
inline void launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, Args&&... args) {
#if defined(DETOPS_CUDA_EMULATED)
  ::cuda_emu::launch_kernel<Kernel>(grid, block, shared_bytes, stream, std::forward<Args>(args)...);
#else
  Kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
#endif
}

inline unsigned int blocks_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 16) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > max_blocks) blocks = max_blocks;
  return static_cast<unsigned int>(blocks < 1 ? 1 : blocks);
}

// A grid-stride launch over `total` elements: calls f(I{}, blocks) with the
// block count and the index type every index fits (see dispatch_index).
// `extra_reach` covers other indices the kernel computes in I (a map the
// kernel decodes into), `lanes_per_element` a warp per element.
template <typename F>
inline void dispatch_grid(int64_t total, int threads, F&& f, int64_t extra_reach = 0, int lanes_per_element = 1) {
  const unsigned int blocks = blocks_for(total * lanes_per_element, threads);
  const int64_t reach = (total > extra_reach ? total : extra_reach) + int64_t(blocks) * threads;
  dispatch_index(reach, [&](auto index) { f(index, blocks); });
}

}  // namespace detops
