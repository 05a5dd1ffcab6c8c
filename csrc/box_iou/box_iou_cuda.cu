// CUDA kernels of the IoU family. Only indexing, loads and stores live here;
// the arithmetic is box_iou_math.h, which the CPU tests exercise.
#include "box_iou/box_iou_cuda.h"
#include "common/cuda_utils.cuh"

namespace detops {
namespace box_iou {
namespace {

constexpr int kThreads = 256;

template <typename T, typename S>
__device__ __forceinline__ Box<T> load_box(const S* p) {
  return {convert<T>(p[0]), convert<T>(p[1]), convert<T>(p[2]), convert<T>(p[3])};
}

template <typename S, typename T>
__device__ __forceinline__ void store_grad(S* p, const BoxGrad<T>& g) {
  p[0] = convert<S>(g.x1);
  p[1] = convert<S>(g.y1);
  p[2] = convert<S>(g.x2);
  p[3] = convert<S>(g.y2);
}

template <typename T>
__device__ __forceinline__ void add_to(BoxGrad<T>& acc, const BoxGrad<T>& g) {
  acc.x1 += g.x1; acc.y1 += g.y1; acc.x2 += g.x2; acc.y2 += g.y2;
}

template <Variant V, BoxFormat F, typename T, typename S>
__device__ __forceinline__ BoxInfo<T> load_info(const S* p) {
  return make_info_as<V, F>(convert<T>(p[0]), convert<T>(p[1]), convert<T>(p[2]), convert<T>(p[3]));
}

// One thread per (row, column) pair; consecutive threads take consecutive
// columns so the output stores coalesce.
template <Variant V, BoxFormat F, typename S>
__global__ void matrix_forward_kernel(const S* __restrict__ boxes1, const S* __restrict__ boxes2,
                                      opmath_t<S>* __restrict__ out, int64_t N, int64_t M, int64_t total,
                                      opmath_t<S> eps) {
  using T = opmath_t<S>;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < total; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = p / M;  // b * N + i
    const int64_t j = p - row * M;
    const int64_t b = row / N;
    out[p] = matrix_forward<V>(load_info<V, F, T>(boxes1 + row * 4), load_info<V, F, T>(boxes2 + (b * M + j) * 4), eps);
  }
}

// Sums a BoxGrad over the block's threads; the result is valid in thread 0.
template <typename T, int kSize>
__device__ BoxGrad<T> block_sum(BoxGrad<T> g, int tid) {
  __shared__ T shared[4][kSize];
  shared[0][tid] = g.x1; shared[1][tid] = g.y1; shared[2][tid] = g.x2; shared[3][tid] = g.y2;
  __syncthreads();
  for (int stride = kSize / 2; stride > 0; stride /= 2) {
    if (tid < stride) {
      for (int c = 0; c < 4; ++c) shared[c][tid] += shared[c][tid + stride];
    }
    __syncthreads();
  }
  return {shared[0][0], shared[1][0], shared[2][0], shared[3][0]};
}

// d/d boxes1: one block per row, threads stride over the columns.
template <Variant V, typename S>
__global__ void matrix_backward_rows_kernel(const opmath_t<S>* __restrict__ grad, const S* __restrict__ boxes1,
                                            const S* __restrict__ boxes2, S* __restrict__ grad1, int64_t N,
                                            int64_t M, opmath_t<S> eps) {
  using T = opmath_t<S>;
  const int64_t row = blockIdx.x;
  const int64_t b = row / N;
  const Box<T> a = load_box<T>(boxes1 + row * 4);
  BoxGrad<T> acc;
  for (int64_t j = threadIdx.x; j < M; j += kThreads) {
    BoxGrad<T> ga, gc;
    matrix_backward<V>(a, load_box<T>(boxes2 + (b * M + j) * 4), eps, grad[row * M + j], ga, gc);
    add_to(acc, ga);
  }
  const BoxGrad<T> sum = block_sum<T, kThreads>(acc, threadIdx.x);
  if (threadIdx.x == 0) store_grad(grad1 + row * 4, sum);
}

// d/d boxes2: a block takes 32 columns of one batch; its 8 thread rows stride
// over the matrix rows, so each warp reads 32 consecutive grad entries.
constexpr int kColTile = 32;
constexpr int kRowLanes = 8;

template <Variant V, typename S>
__global__ void matrix_backward_cols_kernel(const opmath_t<S>* __restrict__ grad, const S* __restrict__ boxes1,
                                            const S* __restrict__ boxes2, S* __restrict__ grad2, int64_t N,
                                            int64_t M, opmath_t<S> eps) {
  using T = opmath_t<S>;
  __shared__ T partial[4][kRowLanes][kColTile];
  const int64_t b = blockIdx.y;
  const int64_t j = int64_t(blockIdx.x) * kColTile + threadIdx.x;
  BoxGrad<T> acc;
  if (j < M) {
    const Box<T> c = load_box<T>(boxes2 + (b * M + j) * 4);
    for (int64_t i = threadIdx.y; i < N; i += kRowLanes) {
      BoxGrad<T> ga, gc;
      matrix_backward<V>(load_box<T>(boxes1 + (b * N + i) * 4), c, eps, grad[(b * N + i) * M + j], ga, gc);
      add_to(acc, gc);
    }
  }
  partial[0][threadIdx.y][threadIdx.x] = acc.x1;
  partial[1][threadIdx.y][threadIdx.x] = acc.y1;
  partial[2][threadIdx.y][threadIdx.x] = acc.x2;
  partial[3][threadIdx.y][threadIdx.x] = acc.y2;
  __syncthreads();
  if (threadIdx.y == 0 && j < M) {
    BoxGrad<T> sum;
    for (int r = 0; r < kRowLanes; ++r) {
      sum.x1 += partial[0][r][threadIdx.x];
      sum.y1 += partial[1][r][threadIdx.x];
      sum.x2 += partial[2][r][threadIdx.x];
      sum.y2 += partial[3][r][threadIdx.x];
    }
    store_grad(grad2 + (b * M + j) * 4, sum);
  }
}

template <Variant V, BoxFormat F, typename S>
__global__ void aligned_forward_kernel(const S* __restrict__ boxes1, const S* __restrict__ boxes2,
                                       opmath_t<S>* __restrict__ out, int64_t K, opmath_t<S> eps) {
  using T = opmath_t<S>;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < K; k += int64_t(gridDim.x) * blockDim.x) {
    out[k] = matrix_forward<V>(load_info<V, F, T>(boxes1 + 4 * k), load_info<V, F, T>(boxes2 + 4 * k), eps);
  }
}

template <Variant V, typename S>
__global__ void aligned_backward_kernel(const opmath_t<S>* __restrict__ grad, const S* __restrict__ boxes1,
                                        const S* __restrict__ boxes2, S* __restrict__ grad1, S* __restrict__ grad2,
                                        int64_t K, opmath_t<S> eps) {
  using T = opmath_t<S>;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < K; k += int64_t(gridDim.x) * blockDim.x) {
    BoxGrad<T> ga, gb;
    matrix_backward<V>(load_box<T>(boxes1 + 4 * k), load_box<T>(boxes2 + 4 * k), eps, grad[k], ga, gb);
    store_grad(grad1 + 4 * k, ga);
    store_grad(grad2 + 4 * k, gb);
  }
}

// Runs launch(VariantTag, S{}) for the runtime variant and dtype.
template <typename F>
cudaError_t dispatch(DType dtype, Variant v, F&& launch) {
  dispatch_dtype(dtype, [&](auto s) { dispatch_variant(v, [&](auto tag) { launch(tag, s); }); });
  return cudaGetLastError();
}

// Runs launch(VariantTag, FormatTag, S{}) for the runtime variant, format and dtype.
template <typename F>
cudaError_t dispatch_with_format(DType dtype, Variant v, BoxFormat fmt, F&& launch) {
  return dispatch(dtype, v, [&](auto tag, auto s) {
    dispatch_format<decltype(tag)::value>(fmt, [&](auto ftag) { launch(tag, ftag, s); });
  });
}

}  // namespace

cudaError_t matrix_forward_cuda(DType dtype, Variant v, BoxFormat fmt, const void* boxes1, const void* boxes2,
                                void* out, int64_t B, int64_t N, int64_t M, double eps, cudaStream_t stream) {
  const int64_t total = B * N * M;
  if (total == 0) return cudaSuccess;
  return dispatch_with_format(dtype, v, fmt, [&](auto tag, auto ftag, auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    launch<matrix_forward_kernel<decltype(tag)::value, decltype(ftag)::value, S>>(blocks_for(total, kThreads), kThreads, 0, stream,
        static_cast<const S*>(boxes1), static_cast<const S*>(boxes2), static_cast<T*>(out), N, M, total, T(eps));
  });
}

cudaError_t matrix_backward_cuda(DType dtype, Variant v, const void* grad, const void* boxes1,
                                 const void* boxes2, void* grad1, void* grad2, int64_t B, int64_t N, int64_t M,
                                 double eps, cudaStream_t stream) {
  return dispatch(dtype, v, [&](auto tag, auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    constexpr Variant V = decltype(tag)::value;
    if (B * N > 0) {
      launch<matrix_backward_rows_kernel<V, S>>(static_cast<unsigned int>(B * N), kThreads, 0, stream,
          static_cast<const T*>(grad), static_cast<const S*>(boxes1), static_cast<const S*>(boxes2),
          static_cast<S*>(grad1), N, M, T(eps));
    }
    if (B * M > 0) {
      const dim3 grid(static_cast<unsigned int>((M + kColTile - 1) / kColTile), static_cast<unsigned int>(B));
      launch<matrix_backward_cols_kernel<V, S>>(grid, dim3(kColTile, kRowLanes), 0, stream,
          static_cast<const T*>(grad), static_cast<const S*>(boxes1), static_cast<const S*>(boxes2),
          static_cast<S*>(grad2), N, M, T(eps));
    }
  });
}

cudaError_t aligned_forward_cuda(DType dtype, Variant v, BoxFormat fmt, const void* boxes1, const void* boxes2,
                                 void* out, int64_t K, double eps, cudaStream_t stream) {
  if (K == 0) return cudaSuccess;
  return dispatch_with_format(dtype, v, fmt, [&](auto tag, auto ftag, auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    launch<aligned_forward_kernel<decltype(tag)::value, decltype(ftag)::value, S>>(blocks_for(K, kThreads), kThreads, 0, stream,
        static_cast<const S*>(boxes1), static_cast<const S*>(boxes2), static_cast<T*>(out), K, T(eps));
  });
}

cudaError_t aligned_backward_cuda(DType dtype, Variant v, const void* grad, const void* boxes1,
                                  const void* boxes2, void* grad1, void* grad2, int64_t K, double eps,
                                  cudaStream_t stream) {
  if (K == 0) return cudaSuccess;
  return dispatch(dtype, v, [&](auto tag, auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    launch<aligned_backward_kernel<decltype(tag)::value, S>>(blocks_for(K, kThreads), kThreads, 0, stream,
        static_cast<const T*>(grad), static_cast<const S*>(boxes1), static_cast<const S*>(boxes2),
        static_cast<S*>(grad1), static_cast<S*>(grad2), K, T(eps));
  });
}

}  // namespace box_iou
}  // namespace detops
