// CUDA kernels of RoI Align. Only indexing, loads and stores live here; the
// sampling arithmetic is roi_align_math.h, which the CPU tests exercise.
#include "common/cuda_utils.cuh"
#include "roi_align/roi_align_cuda.h"
#include "roi_align/roi_align_math.h"

namespace detops {
namespace roi_align {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct Roi {
  int64_t level, batch;
  RoiGeometry<T> g;
  bool valid;
};

template <typename T>
__device__ __forceinline__ Roi<T> load_roi(const T* rois, const int64_t* levels, int64_t r, const MapsArgs& maps,
                                           const PoolArgs& pool) {
  Roi<T> roi;
  const T* b = rois + 5 * r;
  roi.level = levels ? levels[r] : 0;
  int64_t batch;
  const bool batch_ok =
      load_roi_batch(b, maps.N, batch, "detops.roi_align: rois[:, 0] (the batch index) must be in [0, N)");
  roi.valid = batch_ok && roi.level >= 0 && roi.level < maps.num_levels;
  roi.batch = roi.valid ? batch : 0;
  if (!roi.valid) roi.level = 0;
  roi.g = roi_geometry<T>(b[1], b[2], b[3], b[4], T(maps.maps[roi.level].scale), pool.PH, pool.PW,
                          pool.sampling_ratio, pool.aligned);
  return roi;
}

template <typename S, typename I>
__global__ void forward_kernel(MapsArgs maps, const opmath_t<S>* __restrict__ rois, const int64_t* __restrict__ levels,
                               PoolArgs pool, S* __restrict__ out, int64_t oK, int64_t oC, int64_t oH, int64_t oW,
                               bool channel_fastest, I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const Index4 e = unravel_nchw(p, maps.C, pool.PH, pool.PW, channel_fastest);
    const int64_t r = e.n, c = e.c, ph = e.h, pw = e.w;
    const Roi<T> roi = load_roi(rois, levels, r, maps, pool);
    T acc = T(0);
    if (roi.valid) {
      const MapArgs& m = maps.maps[roi.level];
      const S* plane = static_cast<const S*>(m.data) + roi.batch * m.sN + c * m.sC;
      const RoiGeometry<T>& g = roi.g;
      for (int64_t iy = 0; iy < g.grid_h; ++iy) {
        AxisSample<T> y;
        if (!axis_sample(sample_pos(g.start_h, g.bin_h, ph, iy, g.grid_h), m.H, y)) continue;
        const S* rl = plane + y.low * m.sH;
        const S* rh = plane + y.high * m.sH;
        for (int64_t ix = 0; ix < g.grid_w; ++ix) {
          AxisSample<T> x;
          if (!axis_sample(sample_pos(g.start_w, g.bin_w, pw, ix, g.grid_w), m.W, x)) continue;
          acc += y.w_low * x.w_low * convert<T>(rl[x.low * m.sW]) + y.w_low * x.w_high * convert<T>(rl[x.high * m.sW]) +
                 y.w_high * x.w_low * convert<T>(rh[x.low * m.sW]) + y.w_high * x.w_high * convert<T>(rh[x.high * m.sW]);
        }
      }
      acc /= g.count;
    }
    out[r * oK + c * oC + ph * oH + pw * oW] = convert<S>(acc);
  }
}

template <typename A>
__device__ __forceinline__ void atomic_add(A* p, A v) {
  atomicAdd(p, v);
}

// A: the accumulation type (float for float16/bfloat16 maps).
template <typename S, typename A, typename I>
__global__ void backward_atomic_kernel(MapsArgs accum, const S* __restrict__ grad, int64_t gK, int64_t gC, int64_t gH,
                                       int64_t gW, const opmath_t<S>* __restrict__ rois,
                                       const int64_t* __restrict__ levels, PoolArgs pool, bool channel_fastest,
                                       I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const Index4 e = unravel_nchw(p, accum.C, pool.PH, pool.PW, channel_fastest);
    const int64_t r = e.n, c = e.c, ph = e.h, pw = e.w;
    const Roi<T> roi = load_roi(rois, levels, r, accum, pool);
    if (!roi.valid) continue;
    const T go = convert<T>(grad[r * gK + c * gC + ph * gH + pw * gW]) / roi.g.count;
    if (go == T(0)) continue;
    const MapArgs& m = accum.maps[roi.level];
    A* plane = static_cast<A*>(const_cast<void*>(m.data)) + roi.batch * m.sN + c * m.sC;
    const RoiGeometry<T>& g = roi.g;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      AxisSample<T> y;
      if (!axis_sample(sample_pos(g.start_h, g.bin_h, ph, iy, g.grid_h), m.H, y)) continue;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        AxisSample<T> x;
        if (!axis_sample(sample_pos(g.start_w, g.bin_w, pw, ix, g.grid_w), m.W, x)) continue;
        atomic_add(plane + y.low * m.sH + x.low * m.sW, A(go * y.w_low * x.w_low));
        atomic_add(plane + y.low * m.sH + x.high * m.sW, A(go * y.w_low * x.w_high));
        atomic_add(plane + y.high * m.sH + x.low * m.sW, A(go * y.w_high * x.w_low));
        atomic_add(plane + y.high * m.sH + x.high * m.sW, A(go * y.w_high * x.w_high));
      }
    }
  }
}

// The separable sample weights of every RoI, computed once for the gather
// backward (instead of per grad_input element and RoI): wy[r][ph][y] is the
// total weight bin row ph's samples put on map row y of RoI r's level (0 past
// that map's height), wx[r][pw][x] likewise along x, count[r] the divisor of
// its average (0 for a RoI without samples). One thread per table entry.
template <typename T, typename I>
__global__ void axis_weights_kernel(MapsArgs maps, const T* __restrict__ rois, const int64_t* __restrict__ levels,
                                    PoolArgs pool, int64_t max_h, int64_t max_w, T* __restrict__ wy,
                                    T* __restrict__ wx, T* __restrict__ count, I total) {
  const I per_y = static_cast<I>(pool.PH * max_h), per = per_y + static_cast<I>(pool.PW * max_w);
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const I r = p / per, q = p - r * per;
    const int64_t level = levels ? levels[r] : 0;
    T w = T(0);
    RoiGeometry<T> g{};
    if (level >= 0 && level < maps.num_levels) {
      const MapArgs& m = maps.maps[level];
      const T* b = rois + 5 * int64_t(r);
      g = roi_geometry<T>(b[1], b[2], b[3], b[4], T(m.scale), pool.PH, pool.PW, pool.sampling_ratio, pool.aligned);
      if (q < per_y) {
        const I ph = q / static_cast<I>(max_h), y = q - ph * static_cast<I>(max_h);
        if (y < m.H) w = axis_weight_at(g.start_h, g.bin_h, int64_t(ph), g.grid_h, m.H, int64_t(y));
      } else {
        const I pw = (q - per_y) / static_cast<I>(max_w), x = q - per_y - pw * static_cast<I>(max_w);
        if (x < m.W) w = axis_weight_at(g.start_w, g.bin_w, int64_t(pw), g.grid_w, m.W, int64_t(x));
      }
    }
    if (q < per_y) {
      wy[int64_t(r) * per_y + q] = w;
    } else {
      wx[int64_t(r) * (per - per_y) + (q - per_y)] = w;
    }
    if (q == 0) count[r] = g.grid_h > 0 && g.grid_w > 0 ? g.count : T(0);
  }
}

// One thread per grad_input element of one level; it sums over the RoIs
// listed for its tile (make_tile_lists), in RoI order, so the result is
// bit-reproducible. The per-RoI weights come from axis_weights_kernel; the
// sum is gather_roi_grad's, term for term (a RoI without samples, count 0,
// adds nothing).
template <typename S, typename I>
__global__ void backward_gather_kernel(MapsArgs gis, int level, bool channels_last,
                                       const opmath_t<S>* __restrict__ grad,
                                       int64_t gK, int64_t gC, int64_t gH, int64_t gW,
                                       const int64_t* __restrict__ tile_rois, const int64_t* __restrict__ offsets,
                                       int64_t tiles_y, int64_t tiles_x, PoolArgs pool,
                                       const opmath_t<S>* __restrict__ wy, const opmath_t<S>* __restrict__ wx,
                                       const opmath_t<S>* __restrict__ count, int64_t max_h, int64_t max_w,
                                       I total) {
  using T = opmath_t<S>;
  const MapArgs& m = gis.maps[level];
  const int64_t C = gis.C, H = m.H, W = m.W, PH = pool.PH, PW = pool.PW;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const Index4 e = unravel_nchw(p, C, H, W, channels_last);
    const int64_t n = e.n, c = e.c, y = e.h, x = e.w;
    const int64_t key = ((level * gis.N + n) * tiles_y + y / kTileSide) * tiles_x + x / kTileSide;
    T acc = T(0);
    for (int64_t j = offsets[key]; j < offsets[key + 1]; ++j) {
      const int64_t r = tile_rois[j];
      if (count[r] == T(0)) continue;
      const T* ry = wy + r * PH * max_h + y;
      const T* rx = wx + r * PW * max_w + x;
      const T* gr = grad + r * gK + c * gC;
      T sum = T(0);
      for (int64_t ph = 0; ph < PH; ++ph) {
        const T a = ry[ph * max_h];
        if (a == T(0)) continue;
        for (int64_t pw = 0; pw < PW; ++pw) {
          const T b = rx[pw * max_w];
          if (b == T(0)) continue;
          sum += gr[ph * gH + pw * gW] * a * b;
        }
      }
      acc += sum / count[r];
    }
    S* dst = static_cast<S*>(const_cast<void*>(m.data));
    dst[n * m.sN + c * m.sC + y * m.sH + x * m.sW] = convert<S>(acc);
  }
}

}  // namespace

cudaError_t forward_cuda(DType dtype, const MapsArgs& maps, const void* rois, const int64_t* levels,
                         const PoolArgs& pool, void* out, const int64_t* os, bool channel_fastest,
                         cudaStream_t stream) {
  const int64_t total = pool.K * maps.C * pool.PH * pool.PW;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<forward_kernel<S, I>>(blocks, kThreads, 0, stream,
          maps, static_cast<const opmath_t<S>*>(rois), levels, pool, static_cast<S*>(out), os[0], os[1], os[2], os[3],
          channel_fastest, I(total));
    });
  });
  return cudaGetLastError();
}

cudaError_t backward_atomic_cuda(DType dtype, const MapsArgs& accum, const void* grad, const int64_t* gs,
                                 const void* rois, const int64_t* levels, const PoolArgs& pool, bool channel_fastest,
                                 cudaStream_t stream) {
  const int64_t total = pool.K * accum.C * pool.PH * pool.PW;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<backward_atomic_kernel<S, opmath_t<S>, I>>(blocks, kThreads, 0, stream,
          accum, static_cast<const S*>(grad), gs[0], gs[1], gs[2], gs[3], static_cast<const opmath_t<S>*>(rois),
          levels, pool, channel_fastest, I(total));
    });
  });
  return cudaGetLastError();
}

cudaError_t backward_gather_cuda(DType dtype, const MapsArgs& gis, const bool* channels_last, const void* grad,
                                 const int64_t* gs, const void* rois, const int64_t* levels, const int64_t* tile_rois,
                                 const int64_t* offsets, int64_t tiles_y, int64_t tiles_x, const PoolArgs& pool,
                                 int64_t max_h, int64_t max_w, void* weights, cudaStream_t stream) {
  const int64_t table = pool.K * (pool.PH * max_h + pool.PW * max_w);
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    T* wy = static_cast<T*>(weights);
    T* wx = wy + pool.K * pool.PH * max_h;
    T* count = wy + table;
    if (table > 0) {
      dispatch_grid(table, kThreads, [&](auto index, unsigned int blocks) {
        using I = decltype(index);
        launch<axis_weights_kernel<T, I>>(blocks, kThreads, 0, stream, gis, static_cast<const T*>(rois), levels, pool,
                                          max_h, max_w, wy, wx, count, I(table));
      });
    }
    for (int l = 0; l < gis.num_levels; ++l) {
      const int64_t total = gis.N * gis.C * gis.maps[l].H * gis.maps[l].W;
      if (total == 0) continue;
      dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
        using I = decltype(index);
        launch<backward_gather_kernel<S, I>>(blocks, kThreads, 0, stream,
            gis, l, channels_last[l], static_cast<const T*>(grad), gs[0], gs[1], gs[2], gs[3], tile_rois, offsets,
            tiles_y, tiles_x, pool, wy, wx, count, max_h, max_w, I(total));
      });
    }
  });
  return cudaGetLastError();
}

}  // namespace roi_align
}  // namespace detops
