// CUDA kernels of the NMS family. Only indexing, loads and stores live here;
// the arithmetic is nms_math.h, which the CPU tests exercise.
//
// Exact greedy NMS (nms, batched_nms) builds torchvision's suppression
// bitmask (bit j of row i: sorted box i suppresses sorted box j), but one
// chunk of kMaskChunkRows rows at a time, so the buffer is
// kMaskChunkRows * n / 8 bytes instead of n^2 / 8 (about 100 MB at 200k
// boxes). Per chunk, in stream order and without any host synchronisation:
//   1. mask_kernel: the chunk's rows against every later column block; rows
//      already removed by earlier chunks, and (batched) row/column blocks with
//      no class in common, are skipped (written as zero);
//   2. reduce_chunk_kernel: the sequential greedy pass over the chunk's rows
//      (one warp, reading 64-row tiles of the mask staged in shared memory),
//      using only the chunk's own columns;
//   3. propagate_kernel: ORs the rows kept in this chunk into the "removed"
//      words of all later columns, in parallel.
#include "common/cuda_utils.cuh"
#include "nms/nms_cuda.h"

namespace detops {
namespace nms {
namespace {

constexpr int kBits = 64;

template <typename T>
__global__ void mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ cls, int64_t n, int64_t words,
                            int64_t row0, float threshold, const uint64_t* __restrict__ removed,
                            uint64_t* __restrict__ mask) {
  const int64_t row_block = row0 / kBits + blockIdx.y;
  const int64_t col_block = row_block + blockIdx.x;
  const int64_t row_first = row_block * kBits, col_first = col_block * kBits;
  if (col_block >= words || row_first >= n) return;
  const int row_size = static_cast<int>(min(n - row_first, int64_t(kBits)));
  const int col_size = static_cast<int>(min(n - col_first, int64_t(kBits)));
  __shared__ T col_boxes[kBits * 4];
  __shared__ int64_t col_cls[kBits];
  const int t = threadIdx.x;
  if (t < col_size) {
    for (int c = 0; c < 4; ++c) col_boxes[t * 4 + c] = boxes[(col_first + t) * 4 + c];
    col_cls[t] = cls != nullptr ? cls[col_first + t] : 0;
  }
  __syncthreads();
  if (t >= row_size) return;
  const int64_t i = row_first + t;
  uint64_t bits = 0;
  bool skip = (removed[i / kBits] >> (i % kBits)) & 1ULL;
  // Classes ascend along the sorted order: no common class, no overlap test.
  if (cls != nullptr && col_cls[0] > cls[row_first + row_size - 1]) skip = true;
  if (!skip) {
    const T ax1 = boxes[i * 4 + 0], ay1 = boxes[i * 4 + 1], ax2 = boxes[i * 4 + 2], ay2 = boxes[i * 4 + 3];
    const int64_t row_cls = cls != nullptr ? cls[i] : 0;
    const int start = col_block == row_block ? t + 1 : 0;
    for (int k = start; k < col_size; ++k) {
      if (col_cls[k] != row_cls) continue;
      const T* b = col_boxes + k * 4;
      if (suppresses_cuda(ax1, ay1, ax2, ay2, b[0], b[1], b[2], b[3], threshold)) bits |= 1ULL << k;
    }
  }
  mask[(i - row0) * words + col_block] = bits;
}

constexpr int kChunkWords = static_cast<int>(kMaskChunkRows / kBits);
constexpr int kReduceThreads = 256;

// First position in sorted cls[lo, hi) holding a class > value.
__device__ __forceinline__ int64_t class_end(const int64_t* __restrict__ cls, int64_t lo, int64_t hi, int64_t value) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (cls[mid] <= value) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The greedy pass over the chunk's rows. Rows are taken 64 at a time: all
// threads first copy the 64 rows' in-chunk mask words to shared memory, then
// warp 0 walks the rows in order reading only shared memory. With classes,
// only the words up to the end of the last row's class can be non-zero.
__global__ void reduce_chunk_kernel(const uint64_t* __restrict__ mask, const int64_t* __restrict__ cls, int64_t n,
                                    int64_t words, int64_t row0, int64_t rows, const uint64_t* __restrict__ removed,
                                    uint8_t* __restrict__ keep) {
  __shared__ uint64_t local[kChunkWords];
  __shared__ uint64_t tile[kBits][kChunkWords];
  __shared__ int tile_span;
  const int t = threadIdx.x, lane = t % 32;
  const int64_t w0 = row0 / kBits;
  const int chunk_words = static_cast<int>((rows + kBits - 1) / kBits);
  for (int w = t; w < chunk_words; w += blockDim.x) local[w] = removed[w0 + w];
  for (int rb = 0; rb < chunk_words; ++rb) {
    const int block_rows = static_cast<int>(min(int64_t(kBits), rows - int64_t(rb) * kBits));
    if (t == 0) {
      int span = chunk_words - rb;  // words rb .. chunk_words - 1
      if (cls != nullptr) {
        const int64_t last = row0 + int64_t(rb) * kBits + block_rows - 1;
        const int64_t end = class_end(cls, last, min(n, row0 + rows), cls[last]);
        span = static_cast<int>(min(int64_t(span), (end - row0 + kBits - 1) / kBits - rb));
      }
      tile_span = span;
    }
    __syncthreads();
    const int span = tile_span;
    for (int idx = t; idx < block_rows * span; idx += blockDim.x) {
      const int q = idx / span, w = idx % span;
      tile[q][w] = mask[(int64_t(rb) * kBits + q) * words + w0 + rb + w];
    }
    __syncthreads();
    if (t < 32) {
      for (int q = 0; q < block_rows; ++q) {
        const bool is_removed = (local[rb] >> q) & 1ULL;
        __syncwarp();
        if (is_removed) continue;
        if (lane == 0) keep[row0 + int64_t(rb) * kBits + q] = 1;
        for (int w = lane; w < span; w += 32) local[rb + w] |= tile[q][w];
        __syncwarp();
      }
    }
    __syncthreads();
  }
}

// removed[w] |= OR of the kept chunk rows' mask words, for the words after
// the chunk: 32 words x 8 row lanes per block, rows split over grid.y.
constexpr int kPropagateRows = 512;

__global__ void propagate_kernel(const uint64_t* __restrict__ mask, const int64_t* __restrict__ cls,
                                 int64_t words, int64_t row0, int64_t rows,
                                 int64_t first_word, const uint8_t* __restrict__ keep,
                                 unsigned long long* __restrict__ removed) {
  const int64_t w = first_word + int64_t(blockIdx.x) * 32 + threadIdx.x;
  if (w >= words) return;
  // Columns of a later class than every chunk row: nothing to propagate.
  if (cls != nullptr && cls[w * kBits] > cls[row0 + rows - 1]) return;
  const int64_t r_end = min(rows, int64_t(blockIdx.y + 1) * kPropagateRows);
  unsigned long long acc = 0;
  for (int64_t r = int64_t(blockIdx.y) * kPropagateRows + threadIdx.y; r < r_end; r += blockDim.y) {
    if (keep[row0 + r]) acc |= mask[r * words + w];
  }
  if (acc != 0) atomicOr(removed + w, acc);
}

template <typename T>
cudaError_t greedy_nms_typed(const T* boxes, const int64_t* cls, int64_t n, double iou_threshold,
                             uint64_t* removed, uint64_t* mask, uint8_t* keep, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(keep, 0, static_cast<size_t>(n), stream);
  if (err != cudaSuccess || n == 0) return err;
  const int64_t words = mask_words(n), chunk = mask_chunk_rows(n);
  // torchvision's CUDA kernel compares with the threshold as a float.
  const float threshold = static_cast<float>(iou_threshold);
  for (int64_t row0 = 0; row0 < n; row0 += chunk) {
    const int64_t rows = min(chunk, n - row0);
    const dim3 grid(static_cast<unsigned int>(words - row0 / kBits), static_cast<unsigned int>((rows + kBits - 1) / kBits));
    launch<mask_kernel<T>>(grid, kBits, 0, stream, boxes, cls, n, words, row0, threshold, removed, mask);
    launch<reduce_chunk_kernel>(1, kReduceThreads, 0, stream, mask, cls, n, words, row0, rows, removed, keep);
    const int64_t first_word = (row0 + rows + kBits - 1) / kBits;
    if (first_word < words) {
      const dim3 pgrid(static_cast<unsigned int>((words - first_word + 31) / 32),
                       static_cast<unsigned int>((rows + kPropagateRows - 1) / kPropagateRows));
      launch<propagate_kernel>(pgrid, dim3(32, 8), 0, stream, mask, cls, words, row0, rows, first_word, keep,
                                                         reinterpret_cast<unsigned long long*>(removed));
    }
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// ------------------------------------------------------------------ multiclass

template <typename T, typename S>
__device__ __forceinline__ void load_box(const S* p, T& x1, T& y1, T& x2, T& y2) {
  x1 = convert<T>(p[0]); y1 = convert<T>(p[1]); x2 = convert<T>(p[2]); y2 = convert<T>(p[3]);
}

// One block per (image, class): candidates in score order, each tested
// against the boxes kept so far by all threads; stops at max_per_class.
template <typename S>
__global__ void multiclass_kernel(const S* __restrict__ boxes, bool per_class_boxes,
                                  const opmath_t<S>* __restrict__ sorted_scores, const int64_t* __restrict__ order,
                                  int64_t N, int64_t C, int64_t max_per_class, float threshold,
                                  opmath_t<S>* __restrict__ kept_scores, int64_t* __restrict__ kept_box) {
  using T = opmath_t<S>;
  const int64_t task = blockIdx.x, img = task / C, cls = task % C;
  const T* scores = sorted_scores + task * N;
  const int64_t* ord = order + task * N;
  T* ks = kept_scores + task * max_per_class;
  int64_t* kb = kept_box + task * max_per_class;
  auto box_of = [&](int64_t i) { return per_class_boxes ? boxes + ((img * N + i) * C + cls) * 4 : boxes + (img * N + i) * 4; };
  for (int64_t p = threadIdx.x; p < max_per_class; p += blockDim.x) {
    ks[p] = T(-INFINITY);
    kb[p] = 0;
  }
  __shared__ int64_t kept_count;
  if (threadIdx.x == 0) kept_count = 0;
  __syncthreads();
  for (int64_t p = 0; p < N; ++p) {
    const T s = scores[p];
    const int64_t kept = kept_count;
    if (!(s > T(-INFINITY)) || kept >= max_per_class) break;  // the rest are not candidates
    const int64_t bi = ord[p];
    T bx1, by1, bx2, by2;
    load_box(box_of(bi), bx1, by1, bx2, by2);
    int suppressed = 0;
    for (int64_t k = threadIdx.x; k < kept && !suppressed; k += blockDim.x) {
      T ax1, ay1, ax2, ay2;
      load_box(box_of(kb[k]), ax1, ay1, ax2, ay2);
      suppressed = suppresses_cuda(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2, threshold);
    }
    suppressed = __syncthreads_or(suppressed);
    if (!suppressed && threadIdx.x == 0) {
      ks[kept] = s;
      kb[kept] = bi;
      kept_count = kept + 1;
    }
    __syncthreads();
  }
}

// ------------------------------------------------------------------ soft-NMS

constexpr int kSoftThreads = 1024;

template <typename T>
__device__ __forceinline__ void better(T& v, int64_t& i, T ov, int64_t oi) {
  // Larger score wins, equal scores the lower index; i < 0 is "none".
  if (oi >= 0 && (i < 0 || ov > v || (ov == v && oi < i))) {
    v = ov;
    i = oi;
  }
}

template <typename S>
__global__ void __launch_bounds__(kSoftThreads, 1) soft_nms_kernel(const S* __restrict__ boxes, const S* __restrict__ scores, int64_t n,
                                opmath_t<S> iou_threshold, opmath_t<S> sigma, opmath_t<S> min_score,
                                DecayMethod method, opmath_t<S>* __restrict__ work, int64_t* __restrict__ keep,
                                opmath_t<S>* __restrict__ kept_scores, int64_t* __restrict__ count) {
  using T = opmath_t<S>;
  __shared__ T warp_v[kSoftThreads / 32];
  __shared__ int64_t warp_i[kSoftThreads / 32];
  __shared__ int64_t selected;
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  // A box is alive while work >= min_score (NaN scores never are).
  for (int64_t j = t; j < n; j += blockDim.x) work[j] = convert<T>(scores[j]);
  __syncthreads();
  int64_t k = 0;
  while (true) {
    T bv = T(0);
    int64_t bi = -1;
    for (int64_t j = t; j < n; j += blockDim.x) {
      const T v = work[j];
      if (v >= min_score) better(bv, bi, v, j);
    }
    for (int off = 16; off > 0; off /= 2) {
      const T ov = __shfl_down_sync(0xffffffffu, bv, off);
      const int64_t oi = __shfl_down_sync(0xffffffffu, bi, off);
      better(bv, bi, ov, oi);
    }
    if (lane == 0) {
      warp_v[warp] = bv;
      warp_i[warp] = bi;
    }
    __syncthreads();
    if (t == 0) {
      T v = warp_v[0];
      int64_t i = warp_i[0];
      for (int w = 1; w < int(blockDim.x / 32); ++w) better(v, i, warp_v[w], warp_i[w]);
      selected = i;
      if (i >= 0) {
        keep[k] = i;
        kept_scores[k] = v;
      }
    }
    __syncthreads();
    const int64_t i = selected;
    if (i < 0) break;
    T ax1, ay1, ax2, ay2;
    load_box(boxes + i * 4, ax1, ay1, ax2, ay2);
    for (int64_t j = t; j < n; j += blockDim.x) {
      if (j == i) continue;
      T v = work[j];
      if (!(v >= min_score)) continue;
      T bx1, by1, bx2, by2;
      load_box(boxes + j * 4, bx1, by1, bx2, by2);
      const T iou = iou_or_zero(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2);
      v *= soft_nms_weight(method, iou, iou_threshold, sigma);
      work[j] = v;
    }
    if (t == 0) work[i] = T(NAN);
    ++k;
    __syncthreads();
  }
  if (t == 0) *count = k;
}

// ------------------------------------------------------------------ Matrix NMS

template <typename T>
__device__ __forceinline__ T sorted_iou(const T* b, int64_t i, int64_t j) {
  return iou_or_zero(b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3], b[j * 4], b[j * 4 + 1], b[j * 4 + 2],
                     b[j * 4 + 3]);
}

template <typename T>
__global__ void matrix_comp_kernel(const T* __restrict__ boxes, const T* __restrict__ scores,
                                   const int64_t* __restrict__ cls, int64_t n, T* __restrict__ comp) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
    T m = T(0);
    if (!isnan(scores[j])) {
      for (int64_t i = 0; i < j; ++i) {
        if (isnan(scores[i]) || (cls != nullptr && cls[i] != cls[j])) continue;
        m = max2(m, sorted_iou(boxes, i, j));
      }
    }
    comp[j] = m;
  }
}

template <typename T>
__global__ void matrix_decay_kernel(const T* __restrict__ boxes, const T* __restrict__ scores,
                                    const int64_t* __restrict__ cls, int64_t n, DecayMethod method, T sigma,
                                    const T* __restrict__ comp, T* __restrict__ decayed) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
    T decay = T(1), lowest = T(0);
    if (!isnan(scores[j])) {
      for (int64_t i = 0; i < j; ++i) {
        if (isnan(scores[i]) || (cls != nullptr && cls[i] != cls[j])) continue;
        const T v = sorted_iou(boxes, i, j);
        if (method == DecayMethod::kLinear) {
          decay = min2(decay, matrix_nms_decay(method, v, comp[i], sigma));
        } else {
          // exp is monotone: the smallest factor is exp of the smallest exponent.
          lowest = min2(lowest, matrix_nms_gaussian_exponent(v, comp[i], sigma));
        }
      }
    }
    if (method == DecayMethod::kGaussian) decay = exp(lowest);
    decayed[j] = scores[j] * decay;
  }
}

}  // namespace

cudaError_t greedy_nms_cuda(DType dtype, const void* sorted_boxes, const int64_t* cls, int64_t n,
                            double iou_threshold, uint64_t* removed, uint64_t* mask, uint8_t* keep,
                            cudaStream_t stream) {
  // Only the compute types are instantiated: the glue converts the boxes.
  if (dtype != DType::kFloat && dtype != DType::kDouble) return cudaErrorInvalidValue;
  if (dtype == DType::kDouble) {
    return greedy_nms_typed(static_cast<const double*>(sorted_boxes), cls, n, iou_threshold, removed, mask, keep,
                            stream);
  }
  return greedy_nms_typed(static_cast<const float*>(sorted_boxes), cls, n, iou_threshold, removed, mask, keep,
                          stream);
}

cudaError_t multiclass_nms_cuda(DType dtype, const void* boxes, bool per_class_boxes, const void* sorted_scores,
                                const int64_t* order, int64_t B, int64_t N, int64_t C, int64_t max_per_class,
                                double iou_threshold, void* kept_scores, int64_t* kept_box, cudaStream_t stream) {
  if (B * C == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    launch<multiclass_kernel<S>>(static_cast<unsigned int>(B * C), 128, 0, stream,
        static_cast<const S*>(boxes), per_class_boxes, static_cast<const T*>(sorted_scores), order, N, C,
        max_per_class, static_cast<float>(iou_threshold), static_cast<T*>(kept_scores), kept_box);
  });
  return cudaGetLastError();
}

cudaError_t soft_nms_cuda(DType dtype, const void* boxes, const void* scores, int64_t n, double iou_threshold,
                          double sigma, double score_threshold, DecayMethod method, void* work, int64_t* keep,
                          void* kept_scores, int64_t* count, cudaStream_t stream) {
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    launch<soft_nms_kernel<S>>(1, kSoftThreads, 0, stream, static_cast<const S*>(boxes), static_cast<const S*>(scores),
                                                       n, T(iou_threshold), T(sigma), T(score_threshold), method,
                                                       static_cast<T*>(work), keep, static_cast<T*>(kept_scores),
                                                       count);
  });
  return cudaGetLastError();
}

cudaError_t matrix_nms_cuda(DType dtype, const void* sorted_boxes, const void* sorted_scores, const int64_t* cls,
                            int64_t n, DecayMethod method, double sigma, void* comp, void* decayed,
                            cudaStream_t stream) {
  if (dtype != DType::kFloat && dtype != DType::kDouble) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const T* b = static_cast<const T*>(sorted_boxes);
    const T* s = static_cast<const T*>(sorted_scores);
    launch<matrix_comp_kernel<T>>(blocks_for(n, 128), 128, 0, stream, b, s, cls, n, static_cast<T*>(comp));
    launch<matrix_decay_kernel<T>>(blocks_for(n, 128), 128, 0, stream, b, s, cls, n, method, T(sigma),
                                                                    static_cast<const T*>(comp),
                                                                    static_cast<T*>(decayed));
  };
  if (dtype == DType::kDouble) {
    run(double{});
  } else {
    run(float{});
  }
  return cudaGetLastError();
}

}  // namespace nms
}  // namespace detops
