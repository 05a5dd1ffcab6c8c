// CUDA kernels of corner pooling: one thread per lane, scanning it (forward)
// or scanning it backward (gradient). Neighbouring threads take neighbouring
// lanes, which are neighbouring in memory for every pool on channels-last maps
// and for vertical pools on NCHW maps.
#include "common/cuda_utils.cuh"
#include "corner_pool/corner_pool_cuda.h"

namespace detops {
namespace corner_pool {
namespace {

constexpr int kThreads = 256;

// The first element of lane t; the division in I (32-bit when the lanes fit).
template <typename I>
__device__ __forceinline__ int64_t lane_start(const ScanGeometry& g, I t) {
  const I inner = static_cast<I>(g.inner);
  return int64_t(t / inner) * g.s_outer + g.start + int64_t(t % inner) * g.s_inner;
}

template <typename S, typename I>
__global__ void forward_kernel(const S* __restrict__ input, S* __restrict__ output, ScanGeometry g, I lanes) {
  using T = opmath_t<S>;
  for (I t = grid_first<I>(); t < lanes; t += grid_stride<I>()) {
    const int64_t p0 = lane_start(g, t);
    T best = convert<T>(input[p0]);
    output[p0] = input[p0];
    for (int64_t l = 1; l < g.L; ++l) {
      const int64_t p = p0 + l * g.step;
      const T x = convert<T>(input[p]);
      best = takes(x, best) ? x : best;
      output[p] = convert<S>(best);
    }
  }
}

template <typename S, typename I>
__global__ void backward_kernel(const S* __restrict__ grad, const S* __restrict__ input, const S* __restrict__ output,
                                S* __restrict__ grad_input, ScanGeometry g, I lanes) {
  using T = opmath_t<S>;
  for (I t = grid_first<I>(); t < lanes; t += grid_stride<I>()) {
    const int64_t p0 = lane_start(g, t);
    T acc = T(0);
    for (int64_t l = g.L - 1; l >= 0; --l) {
      const int64_t p = p0 + l * g.step;
      const T a = acc + convert<T>(grad[p]);
      const bool take = took(convert<T>(input[p]), convert<T>(output[p]));
      grad_input[p] = convert<S>(take ? a : T(0));
      acc = take ? T(0) : a;
    }
  }
}

}  // namespace

cudaError_t forward_cuda(DType dtype, const void* input, void* output, const ScanGeometry& g, cudaStream_t stream) {
  const int64_t lanes = g.outer * g.inner;
  if (lanes == 0 || g.L == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    dispatch_grid(lanes, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<forward_kernel<S, I>>(blocks, kThreads, 0, stream, static_cast<const S*>(input),
                                   static_cast<S*>(output), g, I(lanes));
    });
  });
  return cudaGetLastError();
}

cudaError_t backward_cuda(DType dtype, const void* grad, const void* input, const void* output, void* grad_input,
                          const ScanGeometry& g, cudaStream_t stream) {
  const int64_t lanes = g.outer * g.inner;
  if (lanes == 0 || g.L == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    dispatch_grid(lanes, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<backward_kernel<S, I>>(blocks, kThreads, 0, stream, static_cast<const S*>(grad),
                                    static_cast<const S*>(input), static_cast<const S*>(output),
                                    static_cast<S*>(grad_input), g, I(lanes));
    });
  });
  return cudaGetLastError();
}

}  // namespace corner_pool
}  // namespace detops
