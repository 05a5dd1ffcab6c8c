// CUDA kernels of RoI Pool: indexing, loads and stores; the bin arithmetic is
// roi_pool_math.h, shared with (and tested through) the CPU kernel.
#include "common/cuda_utils.cuh"
#include "roi_pool/roi_pool_cuda.h"
#include "roi_pool/roi_pool_math.h"

namespace detops {
namespace roi_pool {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ bool load_batch(const T* roi, int64_t N, int64_t& n) {
  return load_roi_batch(roi, N, n, "detops.roi_pool: rois[:, 0] (the batch index) must be in [0, N)");
}

template <typename S, typename I>
__global__ void forward_kernel(const S* __restrict__ input, MapArgs m, const opmath_t<S>* __restrict__ rois,
                               opmath_t<S> scale, S* __restrict__ out, int64_t* __restrict__ argmax, OutArgs o,
                               bool channel_fastest, I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const Index4 e = unravel_nchw(p, m.C, o.PH, o.PW, channel_fastest);
    const int64_t r = e.n, c = e.c, ph = e.h, pw = e.w;
    int64_t n;
    const T* b = rois + 5 * r;
    T best = T(0);
    int64_t best_idx = -1;
    if (load_batch(b, m.N, n)) {
      const PoolRoi<T> roi = pool_roi<T>(b[1], b[2], b[3], b[4], scale, o.PH, o.PW);
      const PoolBin bin = pool_bin(roi, ph, pw, m.H, m.W);
      best = pool_init<T>(bin);
      const S* plane = input + n * m.sN + c * m.sC;
      for (int64_t h = bin.hstart; h < bin.hend; ++h) {
        for (int64_t w = bin.wstart; w < bin.wend; ++w) {
          const T v = convert<T>(plane[h * m.sH + w * m.sW]);
          if (v > best) {
            best = v;
            best_idx = h * m.W + w;
          }
        }
      }
    }
    const int64_t off = r * o.sK + c * o.sC + ph * o.sH + pw * o.sW;
    out[off] = convert<S>(best);
    argmax[off] = best_idx;
  }
}

template <typename S, typename A, typename I>
__global__ void backward_atomic_kernel(const S* __restrict__ grad, const int64_t* __restrict__ argmax, OutArgs o,
                                       const opmath_t<S>* __restrict__ rois, A* __restrict__ accum, MapArgs m,
                                       bool channel_fastest, I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const Index4 e = unravel_nchw(p, m.C, o.PH, o.PW, channel_fastest);
    const int64_t r = e.n, c = e.c, ph = e.h, pw = e.w;
    int64_t n;
    const int64_t off = r * o.sK + c * o.sC + ph * o.sH + pw * o.sW;
    const int64_t idx = argmax[off];
    if (idx < 0 || idx >= m.H * m.W || !load_batch(rois + 5 * r, m.N, n)) continue;
    // In I: the launcher's reach covers the map too, so H * W fits.
    const I W = static_cast<I>(m.W);
    const int64_t h = static_cast<I>(idx) / W, w = static_cast<I>(idx) % W;
    atomicAdd(accum + n * m.sN + c * m.sC + h * m.sH + w * m.sW, A(convert<T>(grad[off])));
  }
}

template <typename S, typename I>
__global__ void backward_gather_kernel(const S* __restrict__ grad, const int64_t* __restrict__ argmax, OutArgs o,
                                       const opmath_t<S>* __restrict__ rois, opmath_t<S> scale,
                                       const int64_t* __restrict__ tile_rois, const int64_t* __restrict__ offsets,
                                       int64_t tiles_y, int64_t tiles_x, S* __restrict__ grad_input, MapArgs m,
                                       bool channels_last, I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const Index4 e = unravel_nchw(p, m.C, m.H, m.W, channels_last);
    const int64_t n = e.n, c = e.c, y = e.h, x = e.w;
    const int64_t idx = y * m.W + x;
    const int64_t key = (n * tiles_y + y / kTileSide) * tiles_x + x / kTileSide;
    T acc = T(0);
    for (int64_t j = offsets[key]; j < offsets[key + 1]; ++j) {
      const int64_t r = tile_rois[j];
      const T* b = rois + 5 * r;
      const PoolRoi<T> roi = pool_roi<T>(b[1], b[2], b[3], b[4], scale, o.PH, o.PW);
      // Only the few bins whose span can hold (y, x) are tested, not all PH x PW.
      int64_t ph_lo, ph_hi, pw_lo, pw_hi;
      bins_holding(y - roi.start_h, roi.bin_h, o.PH, ph_lo, ph_hi);
      bins_holding(x - roi.start_w, roi.bin_w, o.PW, pw_lo, pw_hi);
      for (int64_t ph = ph_lo; ph < ph_hi; ++ph) {
        const PoolBin rows = pool_bin(roi, ph, 0, m.H, m.W);
        if (y < rows.hstart || y >= rows.hend) continue;
        for (int64_t pw = pw_lo; pw < pw_hi; ++pw) {
          const PoolBin bin = pool_bin(roi, ph, pw, m.H, m.W);
          if (x < bin.wstart || x >= bin.wend) continue;
          const int64_t off = r * o.sK + c * o.sC + ph * o.sH + pw * o.sW;
          if (argmax[off] == idx) acc += convert<T>(grad[off]);
        }
      }
    }
    grad_input[n * m.sN + c * m.sC + y * m.sH + x * m.sW] = convert<S>(acc);
  }
}

}  // namespace

cudaError_t forward_cuda(DType dtype, const void* input, const MapArgs& map, const void* rois, double spatial_scale,
                         void* out, int64_t* argmax, const OutArgs& o, bool channel_fastest, cudaStream_t stream) {
  const int64_t total = o.K * map.C * o.PH * o.PW;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<forward_kernel<S, I>>(blocks, kThreads, 0, stream,
          static_cast<const S*>(input), map, static_cast<const T*>(rois), T(spatial_scale), static_cast<S*>(out),
          argmax, o, channel_fastest, I(total));
    });
  });
  return cudaGetLastError();
}

cudaError_t backward_atomic_cuda(DType dtype, const void* grad, const int64_t* argmax, const OutArgs& o,
                                 const void* rois, void* accum, const MapArgs& map, bool channel_fastest,
                                 cudaStream_t stream) {
  const int64_t total = o.K * map.C * o.PH * o.PW;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    using A = opmath_t<S>;
    const int64_t map_size = map.N * map.C * map.H * map.W;  // the argmax decode's reach
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<backward_atomic_kernel<S, A, I>>(blocks, kThreads, 0, stream,
          static_cast<const S*>(grad), argmax, o, static_cast<const opmath_t<S>*>(rois), static_cast<A*>(accum), map,
          channel_fastest, I(total));
    }, map_size);
  });
  return cudaGetLastError();
}

cudaError_t backward_gather_cuda(DType dtype, const void* grad, const int64_t* argmax, const OutArgs& o,
                                 const void* rois, double spatial_scale, const int64_t* tile_rois,
                                 const int64_t* offsets, int64_t tiles_y, int64_t tiles_x, void* grad_input,
                                 const MapArgs& map, bool channels_last, cudaStream_t stream) {
  const int64_t total = map.N * map.C * map.H * map.W;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<backward_gather_kernel<S, I>>(blocks, kThreads, 0, stream,
          static_cast<const S*>(grad), argmax, o, static_cast<const T*>(rois), T(spatial_scale), tile_rois, offsets,
          tiles_y, tiles_x, static_cast<S*>(grad_input), map, channels_last, I(total));
    });
  });
  return cudaGetLastError();
}

}  // namespace roi_pool
}  // namespace detops
