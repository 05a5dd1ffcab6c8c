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
  const T bi = b[0];
  const bool batch_ok = bi > T(-1) && bi < T(maps.N);
  DETOPS_KERNEL_CHECK(batch_ok, "detops.roi_align: rois[:, 0] (the batch index) must be in [0, N)");
  roi.valid = batch_ok && roi.level >= 0 && roi.level < maps.num_levels;
  roi.batch = roi.valid ? static_cast<int64_t>(bi) : 0;
  if (!roi.valid) roi.level = 0;
  roi.g = roi_geometry<T>(b[1], b[2], b[3], b[4], T(maps.maps[roi.level].scale), pool.PH, pool.PW,
                          pool.sampling_ratio, pool.aligned);
  return roi;
}

template <typename S>
__global__ void forward_kernel(MapsArgs maps, const opmath_t<S>* __restrict__ rois, const int64_t* __restrict__ levels,
                               PoolArgs pool, S* __restrict__ out, int64_t oK, int64_t oC, int64_t oH, int64_t oW,
                               bool channel_fastest, int64_t total) {
  using T = opmath_t<S>;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < total; p += int64_t(gridDim.x) * blockDim.x) {
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
template <typename S, typename A>
__global__ void backward_atomic_kernel(MapsArgs accum, const S* __restrict__ grad, int64_t gK, int64_t gC, int64_t gH,
                                       int64_t gW, const opmath_t<S>* __restrict__ rois,
                                       const int64_t* __restrict__ levels, PoolArgs pool, bool channel_fastest,
                                       int64_t total) {
  using T = opmath_t<S>;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < total; p += int64_t(gridDim.x) * blockDim.x) {
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

// One thread per grad_input element of one level; it sums over the RoIs
// listed for its tile (make_tile_lists), in RoI order, so the result is
// bit-reproducible.
template <typename S>
__global__ void backward_gather_kernel(MapsArgs gis, int level, bool channels_last,
                                       const opmath_t<S>* __restrict__ grad,
                                       int64_t gK, int64_t gC, int64_t gH, int64_t gW,
                                       const opmath_t<S>* __restrict__ rois, const int64_t* __restrict__ tile_rois,
                                       const int64_t* __restrict__ offsets, int64_t tiles_y, int64_t tiles_x,
                                       PoolArgs pool, int64_t total) {
  using T = opmath_t<S>;
  const MapArgs& m = gis.maps[level];
  const int64_t C = gis.C, H = m.H, W = m.W;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < total; p += int64_t(gridDim.x) * blockDim.x) {
    const Index4 e = unravel_nchw(p, C, H, W, channels_last);
    const int64_t n = e.n, c = e.c, y = e.h, x = e.w;
    const int64_t key = ((level * gis.N + n) * tiles_y + y / kTileSide) * tiles_x + x / kTileSide;
    T acc = T(0);
    for (int64_t j = offsets[key]; j < offsets[key + 1]; ++j) {
      const int64_t r = tile_rois[j];
      const T* b = rois + 5 * r;
      const RoiGeometry<T> g = roi_geometry<T>(b[1], b[2], b[3], b[4], T(m.scale), pool.PH, pool.PW,
                                               pool.sampling_ratio, pool.aligned);
      acc += gather_roi_grad(g, pool.PH, pool.PW, H, W, y, x, grad + r * gK + c * gC, gH, gW);
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
    launch<forward_kernel<S>>(blocks_for(total, kThreads), kThreads, 0, stream,
        maps, static_cast<const opmath_t<S>*>(rois), levels, pool, static_cast<S*>(out), os[0], os[1], os[2], os[3],
        channel_fastest, total);
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
    launch<backward_atomic_kernel<S, opmath_t<S>>>(blocks_for(total, kThreads), kThreads, 0, stream,
        accum, static_cast<const S*>(grad), gs[0], gs[1], gs[2], gs[3], static_cast<const opmath_t<S>*>(rois),
        levels, pool, channel_fastest, total);
  });
  return cudaGetLastError();
}

cudaError_t backward_gather_cuda(DType dtype, const MapsArgs& gis, const bool* channels_last, const void* grad,
                                 const int64_t* gs, const void* rois, const int64_t* tile_rois, const int64_t* offsets,
                                 int64_t tiles_y, int64_t tiles_x, const PoolArgs& pool, cudaStream_t stream) {
  for (int l = 0; l < gis.num_levels; ++l) {
    const int64_t total = gis.N * gis.C * gis.maps[l].H * gis.maps[l].W;
    if (total == 0) continue;
    dispatch_dtype(dtype, [&](auto s) {
      using S = decltype(s);
      launch<backward_gather_kernel<S>>(blocks_for(total, kThreads), kThreads, 0, stream,
          gis, l, channels_last[l], static_cast<const opmath_t<S>*>(grad), gs[0], gs[1], gs[2], gs[3],
          static_cast<const opmath_t<S>*>(rois), tile_rois, offsets, tiles_y, tiles_x, pool, total);
    });
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace roi_align
}  // namespace detops
