// CUDA kernels of box encoding/decoding: one thread per code (decode) or per
// box pair (encode). Only indexing, loads and stores live here; the arithmetic
// is box_coder_math.h, which the CPU tests exercise.
#include "box_coder/box_coder_cuda.h"
#include "common/cuda_utils.cuh"

namespace detops {
namespace box_coder {
namespace {

constexpr int kThreads = 256;

template <typename T, typename S>
__device__ __forceinline__ Box4<T> load(const S* p) {
  return {{convert<T>(p[0]), convert<T>(p[1]), convert<T>(p[2]), convert<T>(p[3])}};
}

template <typename S, typename T>
__device__ __forceinline__ void store(S* p, const Box4<T>& b) {
  p[0] = convert<S>(b.v[0]);
  p[1] = convert<S>(b.v[1]);
  p[2] = convert<S>(b.v[2]);
  p[3] = convert<S>(b.v[3]);
}

template <typename T>
CoderParams<T> cast(const CoderParams<double>& p) {
  return {T(p.wx), T(p.wy), T(p.ww), T(p.wh), T(p.clip)};
}

// One thread per code: consecutive threads read consecutive 4-value codes.
template <typename S, typename I>
__global__ void decode_forward_kernel(const S* __restrict__ rel, const S* __restrict__ boxes, S* __restrict__ out,
                                      I total, I K, CoderParams<opmath_t<S>> p) {
  using T = opmath_t<S>;
  for (I c = grid_first<I>(); c < total; c += grid_stride<I>()) {
    const Box4<T> box = load<T>(boxes + int64_t(c / K) * 4);
    store(out + int64_t(c) * 4, decode_forward(box, load<T>(rel + int64_t(c) * 4), p));
  }
}

// One thread per box: it walks the box's K codes and sums the box gradient.
template <typename S>
__global__ void decode_backward_kernel(const S* __restrict__ grad, const S* __restrict__ rel,
                                       const S* __restrict__ boxes, S* __restrict__ grad_rel,
                                       S* __restrict__ grad_boxes, int64_t N, int64_t K,
                                       CoderParams<opmath_t<S>> p) {
  using T = opmath_t<S>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
    const Box4<T> box = load<T>(boxes + i * 4);
    Box4<T> gb{{T(0), T(0), T(0), T(0)}};
    for (int64_t k = 0; k < K; ++k) {
      const int64_t off = (i * K + k) * 4;
      Box4<T> gr;
      decode_backward(box, load<T>(rel + off), p, load<T>(grad + off), gr, gb);
      store(grad_rel + off, gr);
    }
    store(grad_boxes + i * 4, gb);
  }
}

template <typename S>
__global__ void encode_forward_kernel(const S* __restrict__ reference, const S* __restrict__ proposals,
                                      S* __restrict__ out, int64_t N, CoderParams<opmath_t<S>> p) {
  using T = opmath_t<S>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
    store(out + i * 4, encode_forward(load<T>(reference + i * 4), load<T>(proposals + i * 4), p));
  }
}

template <typename S>
__global__ void encode_backward_kernel(const S* __restrict__ grad, const S* __restrict__ reference,
                                       const S* __restrict__ proposals, S* __restrict__ grad_reference,
                                       S* __restrict__ grad_proposals, int64_t N, CoderParams<opmath_t<S>> p) {
  using T = opmath_t<S>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
    Box4<T> gr, gp;
    encode_backward(load<T>(reference + i * 4), load<T>(proposals + i * 4), p, load<T>(grad + i * 4), gr, gp);
    store(grad_reference + i * 4, gr);
    store(grad_proposals + i * 4, gp);
  }
}

}  // namespace

cudaError_t decode_forward_cuda(DType dtype, const CoderParams<double>& params, const void* rel_codes,
                                const void* boxes, void* out, int64_t N, int64_t K, cudaStream_t stream) {
  const int64_t total = N * K;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<decode_forward_kernel<S, I>>(blocks, kThreads, 0, stream,
          static_cast<const S*>(rel_codes), static_cast<const S*>(boxes), static_cast<S*>(out), I(total), I(K),
          cast<opmath_t<S>>(params));
    });
  });
  return cudaGetLastError();
}

cudaError_t decode_backward_cuda(DType dtype, const CoderParams<double>& params, const void* grad,
                                 const void* rel_codes, const void* boxes, void* grad_rel, void* grad_boxes,
                                 int64_t N, int64_t K, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    launch<decode_backward_kernel<S>>(blocks_for(N, kThreads), kThreads, 0, stream,
        static_cast<const S*>(grad), static_cast<const S*>(rel_codes), static_cast<const S*>(boxes),
        static_cast<S*>(grad_rel), static_cast<S*>(grad_boxes), N, K, cast<opmath_t<S>>(params));
  });
  return cudaGetLastError();
}

cudaError_t encode_forward_cuda(DType dtype, const CoderParams<double>& params, const void* reference,
                                const void* proposals, void* out, int64_t N, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    launch<encode_forward_kernel<S>>(blocks_for(N, kThreads), kThreads, 0, stream,
        static_cast<const S*>(reference), static_cast<const S*>(proposals), static_cast<S*>(out), N,
        cast<opmath_t<S>>(params));
  });
  return cudaGetLastError();
}

cudaError_t encode_backward_cuda(DType dtype, const CoderParams<double>& params, const void* grad,
                                 const void* reference, const void* proposals, void* grad_reference,
                                 void* grad_proposals, int64_t N, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    launch<encode_backward_kernel<S>>(blocks_for(N, kThreads), kThreads, 0, stream,
        static_cast<const S*>(grad), static_cast<const S*>(reference), static_cast<const S*>(proposals),
        static_cast<S*>(grad_reference), static_cast<S*>(grad_proposals), N, cast<opmath_t<S>>(params));
  });
  return cudaGetLastError();
}

}  // namespace box_coder
}  // namespace detops
