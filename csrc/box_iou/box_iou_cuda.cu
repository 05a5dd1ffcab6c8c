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

// Narrow matrices (M < kTiledMinColumns, such as anchors x ground truth): one
// thread per (row, column) pair over the flat output; consecutive threads
// take consecutive columns so the output stores coalesce. I: int32_t when B * N * M (plus one
// grid's stride) fits, so that the two divisions are 32-bit.
template <Variant V, BoxFormat F, typename S, typename I>
__global__ void matrix_forward_kernel(const S* __restrict__ boxes1, const S* __restrict__ boxes2,
                                      opmath_t<S>* __restrict__ out, I N, I M, I total, opmath_t<S> eps) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const I row = p / M;  // b * N + i
    const I j = p - row * M;
    const I b = row / N;
    out[p] = matrix_forward<V>(load_info<V, F, T>(boxes1 + int64_t(row) * 4),
                               load_info<V, F, T>(boxes2 + (int64_t(b) * M + j) * 4), eps);
  }
}

// Wide matrices: a block covers kColTile columns x kRowLanes rows of one
// batch, and takes the batch (blockIdx.z), the row (blockIdx.x, threadIdx.y)
// and the column (blockIdx.y, threadIdx.x) from its indices, so no thread
// divides. Each warp stores 32 consecutive columns. Chosen for M >=
// kTiledMinColumns, where a partial column tile wastes under a fifth of a block.
constexpr int kRowLanes = 8;
constexpr int64_t kTiledMinColumns = 4 * kColTile;

template <Variant V, BoxFormat F, typename S>
__global__ void __launch_bounds__(kColTile * kRowLanes)
    matrix_forward_tiled_kernel(const S* __restrict__ boxes1, const S* __restrict__ boxes2,
                                opmath_t<S>* __restrict__ out, int64_t N, int64_t M, opmath_t<S> eps) {
  using T = opmath_t<S>;
  const int64_t b = blockIdx.z;
  const int64_t i = int64_t(blockIdx.x) * kRowLanes + threadIdx.y;
  const int64_t j = int64_t(blockIdx.y) * kColTile + threadIdx.x;
  if (i >= N || j >= M) return;
  const int64_t row = b * N + i;
  out[row * M + j] = matrix_forward<V>(load_info<V, F, T>(boxes1 + row * 4),
                                       load_info<V, F, T>(boxes2 + (b * M + j) * 4), eps);
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

// Stores a BoxGrad: to the gradient when the sum has one chunk, else as
// chunk `split`'s partial sum (reduce_splits_kernel adds the chunks).
template <typename S, typename T>
__device__ __forceinline__ void store_sum(S* grad, T* partial, int64_t split, int64_t count, int64_t at,
                                          const BoxGrad<T>& g) {
  if (partial == nullptr) {
    store_grad(grad + at * 4, g);
  } else {
    T* p = partial + (split * count + at) * 4;
    p[0] = g.x1; p[1] = g.y1; p[2] = g.x2; p[3] = g.y2;
  }
}

// d/d boxes1: one block per (row, chunk of columns), threads stride over the
// chunk's columns. kRowThreads: 32 when rows are short (a warp per row).
template <Variant V, typename S, int kRowThreads>
__global__ void matrix_backward_rows_kernel(const opmath_t<S>* __restrict__ grad, const S* __restrict__ boxes1,
                                            const S* __restrict__ boxes2, S* __restrict__ grad1,
                                            opmath_t<S>* __restrict__ partial, int64_t N, int64_t M, int64_t chunk,
                                            opmath_t<S> eps) {
  using T = opmath_t<S>;
  const int64_t row = blockIdx.x, split = blockIdx.y;
  const int64_t b = row / N;
  const int64_t j_end = (split + 1) * chunk < M ? (split + 1) * chunk : M;
  const Box<T> a = load_box<T>(boxes1 + row * 4);
  BoxGrad<T> acc;
  for (int64_t j = split * chunk + threadIdx.x; j < j_end; j += kRowThreads) {
    BoxGrad<T> ga, gc;
    matrix_backward<V>(a, load_box<T>(boxes2 + (b * M + j) * 4), eps, grad[row * M + j], ga, gc);
    add_to(acc, ga);
  }
  const BoxGrad<T> sum = block_sum<T, kRowThreads>(acc, threadIdx.x);
  if (threadIdx.x == 0) store_sum(grad1, partial, split, int64_t(gridDim.x), row, sum);
}

// d/d boxes2: a block takes 32 columns of one batch and one chunk of rows
// (blockIdx.z); its 8 thread rows stride over the chunk, so each warp reads
// 32 consecutive grad entries.

template <Variant V, typename S>
__global__ void matrix_backward_cols_kernel(const opmath_t<S>* __restrict__ grad, const S* __restrict__ boxes1,
                                            const S* __restrict__ boxes2, S* __restrict__ grad2,
                                            opmath_t<S>* __restrict__ partial, int64_t B, int64_t N, int64_t M,
                                            int64_t chunk, opmath_t<S> eps) {
  using T = opmath_t<S>;
  __shared__ T sums[4][kRowLanes][kColTile];
  const int64_t b = blockIdx.y, split = blockIdx.z;
  const int64_t j = int64_t(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t i_end = (split + 1) * chunk < N ? (split + 1) * chunk : N;
  BoxGrad<T> acc;
  if (j < M) {
    const Box<T> c = load_box<T>(boxes2 + (b * M + j) * 4);
    for (int64_t i = split * chunk + threadIdx.y; i < i_end; i += kRowLanes) {
      BoxGrad<T> ga, gc;
      matrix_backward<V>(load_box<T>(boxes1 + (b * N + i) * 4), c, eps, grad[(b * N + i) * M + j], ga, gc);
      add_to(acc, gc);
    }
  }
  sums[0][threadIdx.y][threadIdx.x] = acc.x1;
  sums[1][threadIdx.y][threadIdx.x] = acc.y1;
  sums[2][threadIdx.y][threadIdx.x] = acc.x2;
  sums[3][threadIdx.y][threadIdx.x] = acc.y2;
  __syncthreads();
  if (threadIdx.y == 0 && j < M) {
    BoxGrad<T> sum;
    for (int r = 0; r < kRowLanes; ++r) {
      sum.x1 += sums[0][r][threadIdx.x];
      sum.y1 += sums[1][r][threadIdx.x];
      sum.x2 += sums[2][r][threadIdx.x];
      sum.y2 += sums[3][r][threadIdx.x];
    }
    store_sum(grad2, partial, split, B * M, b * M + j, sum);
  }
}

// out[e] = sum over the chunks s (in order) of partial[s][e]: the second
// pass of a split backward sum, one thread per gradient element.
template <typename S>
__global__ void reduce_splits_kernel(const opmath_t<S>* __restrict__ partial, S* __restrict__ out, int64_t elems,
                                     int64_t splits) {
  using T = opmath_t<S>;
  for (int64_t e = grid_first<int64_t>(); e < elems; e += grid_stride<int64_t>()) {
    T sum = T(0);
    for (int64_t s = 0; s < splits; ++s) sum += partial[s * elems + e];
    out[e] = convert<S>(sum);
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
    const int64_t col_tiles = (M + kColTile - 1) / kColTile, row_tiles = (N + kRowLanes - 1) / kRowLanes;
    if (M >= kTiledMinColumns && col_tiles <= 65535 && B <= 65535 && row_tiles <= INT32_MAX) {
      const dim3 grid(static_cast<unsigned int>(row_tiles), static_cast<unsigned int>(col_tiles),
                      static_cast<unsigned int>(B));
      launch<matrix_forward_tiled_kernel<decltype(tag)::value, decltype(ftag)::value, S>>(grid,
          dim3(kColTile, kRowLanes), 0, stream, static_cast<const S*>(boxes1), static_cast<const S*>(boxes2),
          static_cast<T*>(out), N, M, T(eps));
      return;
    }
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<matrix_forward_kernel<decltype(tag)::value, decltype(ftag)::value, S, I>>(blocks, kThreads, 0, stream,
          static_cast<const S*>(boxes1), static_cast<const S*>(boxes2), static_cast<T*>(out), I(N), I(M), I(total),
          T(eps));
    });
  });
}

cudaError_t matrix_backward_cuda(DType dtype, Variant v, const void* grad, const void* boxes1,
                                 const void* boxes2, void* grad1, void* grad2, int64_t B, int64_t N, int64_t M,
                                 double eps, const BackwardSplit& split, void* workspace, cudaStream_t stream) {
  return dispatch(dtype, v, [&](auto tag, auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    constexpr Variant V = decltype(tag)::value;
    T* ws = static_cast<T*>(workspace);
    if (B * N > 0) {
      T* partial = split.row_splits > 1 ? ws : nullptr;
      const int64_t chunk = (M + split.row_splits - 1) / split.row_splits;
      const dim3 grid(static_cast<unsigned int>(B * N), static_cast<unsigned int>(split.row_splits));
      auto rows = [&]<int kRowThreads>() {
        launch<matrix_backward_rows_kernel<V, S, kRowThreads>>(grid, kRowThreads, 0, stream,
            static_cast<const T*>(grad), static_cast<const S*>(boxes1), static_cast<const S*>(boxes2),
            static_cast<S*>(grad1), partial, N, M, chunk, T(eps));
      };
      if (M <= 64) {
        rows.template operator()<32>();  // a warp per row: short rows leave a 256-thread block idle
      } else {
        rows.template operator()<kThreads>();
      }
      if (partial != nullptr) {
        launch<reduce_splits_kernel<S>>(blocks_for(B * N * 4, kThreads), kThreads, 0, stream, partial,
                                        static_cast<S*>(grad1), B * N * 4, split.row_splits);
      }
    }
    if (B * M > 0) {
      T* partial = split.col_splits > 1 ? ws + (split.row_splits > 1 ? 4 * split.row_splits * B * N : 0) : nullptr;
      const int64_t chunk = (N + split.col_splits - 1) / split.col_splits;
      const dim3 grid(static_cast<unsigned int>((M + kColTile - 1) / kColTile), static_cast<unsigned int>(B),
                      static_cast<unsigned int>(split.col_splits));
      launch<matrix_backward_cols_kernel<V, S>>(grid, dim3(kColTile, kRowLanes), 0, stream,
          static_cast<const T*>(grad), static_cast<const S*>(boxes1), static_cast<const S*>(boxes2),
          static_cast<S*>(grad2), partial, B, N, M, chunk, T(eps));
      if (partial != nullptr) {
        launch<reduce_splits_kernel<S>>(blocks_for(B * M * 4, kThreads), kThreads, 0, stream, partial,
                                        static_cast<S*>(grad2), B * M * 4, split.col_splits);
      }
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
