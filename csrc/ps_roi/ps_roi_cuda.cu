// CUDA kernels of the position-sensitive RoI ops: indexing, loads and stores;
// the geometry is ps_roi_math.h, shared with (and tested through) the CPU
// kernels.
#include "common/cuda_utils.cuh"
#include "ps_roi/ps_roi_cuda.h"
#include "ps_roi/ps_roi_math.h"

namespace detops {
namespace ps_roi {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ bool load_batch(const T* roi, int64_t N, int64_t& n) {
  return load_roi_batch(roi, N, n, "detops.ps_roi: rois[:, 0] (the batch index) must be in [0, N)");
}

// Output element p of [K, C_out, PH, PW] (contiguous), decoded in I.
struct OutIndex {
  int64_t r, c, ph, pw, c_in;
};

template <typename I>
__device__ __forceinline__ OutIndex out_index(I p, const PoolArgs& a) {
  const Index4 e = unravel_nchw(p, a.C_out, a.PH, a.PW, false);
  OutIndex i;
  i.pw = e.w;
  i.ph = e.h;
  i.c = e.c;
  i.r = e.n;
  i.c_in = input_channel(i.c, i.ph, i.pw, a.PH, a.PW);
  return i;
}

// Calls f(y, x, w) for every valid sample of bin (ph, pw), in torchvision's order.
template <typename T, typename F>
__device__ __forceinline__ void for_samples(const RoiGeometry<T>& g, int64_t ph, int64_t pw, int64_t H, int64_t W,
                                            F&& f) {
  for (int64_t iy = 0; iy < g.grid_h; ++iy) {
    AxisSample<T> y;
    if (!roi_align::axis_sample(roi_align::sample_pos(g.start_h, g.bin_h, ph, iy, g.grid_h), H, y)) continue;
    for (int64_t ix = 0; ix < g.grid_w; ++ix) {
      AxisSample<T> x;
      if (!roi_align::axis_sample(roi_align::sample_pos(g.start_w, g.bin_w, pw, ix, g.grid_w), W, x)) continue;
      f(y, x, roi_align::sample_weights(y, x));
    }
  }
}

template <typename S, typename I>
__global__ void align_forward_kernel(const S* __restrict__ input, MapArgs m, const opmath_t<S>* __restrict__ rois,
                                     PoolArgs a, S* __restrict__ out, int32_t* __restrict__ mapping, I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const OutIndex e = out_index(p, a);
    const T* b = rois + 5 * e.r;
    int64_t n;
    T value = T(0);
    if (load_batch(b, m.N, n)) {
      const RoiGeometry<T> g = align_geometry<T>(b[1], b[2], b[3], b[4], T(a.spatial_scale), a.PH, a.PW,
                                                 a.sampling_ratio);
      const S* plane = input + n * m.sN + e.c_in * m.sC;
      T acc = T(0);
      for_samples(g, e.ph, e.pw, m.H, m.W, [&](const AxisSample<T>& y, const AxisSample<T>& x,
                                               const roi_align::SampleWeights<T>& w) {
        const S* rl = plane + y.low * m.sH;
        const S* rh = plane + y.high * m.sH;
        acc += w.w1 * convert<T>(rl[x.low * m.sW]) + w.w2 * convert<T>(rl[x.high * m.sW]) +
               w.w3 * convert<T>(rh[x.low * m.sW]) + w.w4 * convert<T>(rh[x.high * m.sW]);
      });
      value = acc / g.count;
    }
    out[p] = convert<S>(value);
    mapping[p] = static_cast<int32_t>(e.c_in);
  }
}

template <typename S, typename I>
__global__ void pool_forward_kernel(const S* __restrict__ input, MapArgs m, const opmath_t<S>* __restrict__ rois,
                                    PoolArgs a, S* __restrict__ out, int32_t* __restrict__ mapping, I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const OutIndex e = out_index(p, a);
    const T* b = rois + 5 * e.r;
    int64_t n;
    T value = T(0);
    if (load_batch(b, m.N, n)) {
      const PoolRoi<T> g = pool_geometry<T>(b[1], b[2], b[3], b[4], T(a.spatial_scale), a.PH, a.PW);
      const PoolBin bin = ps_pool_bin(g, e.ph, e.pw, m.H, m.W);
      if (!bin.empty()) {
        const S* plane = input + n * m.sN + e.c_in * m.sC;
        T acc = T(0);
        for (int64_t h = bin.hstart; h < bin.hend; ++h)
          for (int64_t w = bin.wstart; w < bin.wend; ++w) acc += convert<T>(plane[h * m.sH + w * m.sW]);
        value = acc / bin_area<T>(bin);
      }
    }
    out[p] = convert<S>(value);
    mapping[p] = static_cast<int32_t>(e.c_in);
  }
}

template <typename S, typename A, typename I>
__global__ void align_backward_atomic_kernel(const S* __restrict__ grad, const opmath_t<S>* __restrict__ rois,
                                             PoolArgs a, A* __restrict__ accum, MapArgs m, I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const OutIndex e = out_index(p, a);
    const T* b = rois + 5 * e.r;
    int64_t n;
    const T go = convert<T>(grad[p]);
    if (go == T(0) || !load_batch(b, m.N, n)) continue;
    const RoiGeometry<T> g = align_geometry<T>(b[1], b[2], b[3], b[4], T(a.spatial_scale), a.PH, a.PW,
                                               a.sampling_ratio);
    A* plane = accum + n * m.sN + e.c_in * m.sC;
    for_samples(g, e.ph, e.pw, m.H, m.W, [&](const AxisSample<T>& y, const AxisSample<T>& x,
                                             const roi_align::SampleWeights<T>& w) {
      atomicAdd(plane + y.low * m.sH + x.low * m.sW, A(go * w.w1 / g.count));
      atomicAdd(plane + y.low * m.sH + x.high * m.sW, A(go * w.w2 / g.count));
      atomicAdd(plane + y.high * m.sH + x.low * m.sW, A(go * w.w3 / g.count));
      atomicAdd(plane + y.high * m.sH + x.high * m.sW, A(go * w.w4 / g.count));
    });
  }
}

template <typename S, typename A, typename I>
__global__ void pool_backward_atomic_kernel(const S* __restrict__ grad, const opmath_t<S>* __restrict__ rois,
                                            PoolArgs a, A* __restrict__ accum, MapArgs m, I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const OutIndex e = out_index(p, a);
    const T* b = rois + 5 * e.r;
    int64_t n;
    const T go = convert<T>(grad[p]);
    if (go == T(0) || !load_batch(b, m.N, n)) continue;
    const PoolRoi<T> g = pool_geometry<T>(b[1], b[2], b[3], b[4], T(a.spatial_scale), a.PH, a.PW);
    const PoolBin bin = ps_pool_bin(g, e.ph, e.pw, m.H, m.W);
    if (bin.empty()) continue;
    const A diff = A(go / bin_area<T>(bin));
    A* plane = accum + n * m.sN + e.c_in * m.sC;
    for (int64_t h = bin.hstart; h < bin.hend; ++h)
      for (int64_t w = bin.wstart; w < bin.wend; ++w) atomicAdd(plane + h * m.sH + w * m.sW, diff);
  }
}

// Element p of grad_input [N, C, H, W] (contiguous) and the bin its channel belongs to.
struct InIndex {
  int64_t n, c_in, y, x, c, ph, pw;
};

template <typename I>
__device__ __forceinline__ InIndex in_index(I p, const MapArgs& m, const PoolArgs& a) {
  const Index4 e = unravel_nchw(p, m.C, m.H, m.W, false);
  const I c_in = static_cast<I>(e.c), PH = static_cast<I>(a.PH), PW = static_cast<I>(a.PW);
  InIndex i;
  i.x = e.w;
  i.y = e.h;
  i.c_in = c_in;
  i.n = e.n;
  i.c = c_in / (PH * PW);
  i.ph = (c_in / PW) % PH;
  i.pw = c_in % PW;
  return i;
}

template <typename S, typename I>
__global__ void align_backward_gather_kernel(const S* __restrict__ grad, const opmath_t<S>* __restrict__ rois,
                                             PoolArgs a, const int64_t* __restrict__ order,
                                             const int64_t* __restrict__ offsets, S* __restrict__ grad_input,
                                             MapArgs m, I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const InIndex e = in_index(p, m, a);
    T acc = T(0);
    for (int64_t j = offsets[e.n]; j < offsets[e.n + 1]; ++j) {
      const int64_t r = order[j];
      const T* b = rois + 5 * r;
      const T go = convert<T>(grad[((r * a.C_out + e.c) * a.PH + e.ph) * a.PW + e.pw]);
      if (go == T(0)) continue;
      const RoiGeometry<T> g = align_geometry<T>(b[1], b[2], b[3], b[4], T(a.spatial_scale), a.PH, a.PW,
                                                 a.sampling_ratio);
      const T wy = roi_align::axis_weight_at(g.start_h, g.bin_h, e.ph, g.grid_h, m.H, e.y);
      if (wy == T(0)) continue;
      const T wx = roi_align::axis_weight_at(g.start_w, g.bin_w, e.pw, g.grid_w, m.W, e.x);
      if (wx == T(0)) continue;
      acc += go * wy * wx / g.count;
    }
    grad_input[p] = convert<S>(acc);
  }
}

template <typename S, typename I>
__global__ void pool_backward_gather_kernel(const S* __restrict__ grad, const opmath_t<S>* __restrict__ rois,
                                            PoolArgs a, const int64_t* __restrict__ order,
                                            const int64_t* __restrict__ offsets, S* __restrict__ grad_input,
                                            MapArgs m, I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const InIndex e = in_index(p, m, a);
    T acc = T(0);
    for (int64_t j = offsets[e.n]; j < offsets[e.n + 1]; ++j) {
      const int64_t r = order[j];
      const T* b = rois + 5 * r;
      const PoolRoi<T> g = pool_geometry<T>(b[1], b[2], b[3], b[4], T(a.spatial_scale), a.PH, a.PW);
      const PoolBin bin = ps_pool_bin(g, e.ph, e.pw, m.H, m.W);
      if (e.y < bin.hstart || e.y >= bin.hend || e.x < bin.wstart || e.x >= bin.wend) continue;
      acc += convert<T>(grad[((r * a.C_out + e.c) * a.PH + e.ph) * a.PW + e.pw]) / bin_area<T>(bin);
    }
    grad_input[p] = convert<S>(acc);
  }
}

}  // namespace

cudaError_t forward_cuda(bool align, DType dtype, const void* input, const MapArgs& map, const void* rois,
                         const PoolArgs& pool, void* out, int32_t* channel_mapping, cudaStream_t stream) {
  const int64_t total = pool.K * pool.C_out * pool.PH * pool.PW;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    const auto* in = static_cast<const S*>(input);
    const auto* r = static_cast<const T*>(rois);
    auto* o = static_cast<S*>(out);
    if (align) {
      dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
        using I = decltype(index);
        launch<align_forward_kernel<S, I>>(blocks, kThreads, 0, stream, in, map, r, pool, o, channel_mapping, I(total));
      });
    } else {
      dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
        using I = decltype(index);
        launch<pool_forward_kernel<S, I>>(blocks, kThreads, 0, stream, in, map, r, pool, o, channel_mapping, I(total));
      });
    }
  });
  return cudaGetLastError();
}

cudaError_t backward_atomic_cuda(bool align, DType dtype, const void* grad, const void* rois, const PoolArgs& pool,
                                 void* accum, const MapArgs& map, cudaStream_t stream) {
  const int64_t total = pool.K * pool.C_out * pool.PH * pool.PW;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    using A = opmath_t<S>;
    const auto* g = static_cast<const S*>(grad);
    const auto* r = static_cast<const A*>(rois);
    auto* acc = static_cast<A*>(accum);
    if (align) {
      dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
        using I = decltype(index);
        launch<align_backward_atomic_kernel<S, A, I>>(blocks, kThreads, 0, stream, g, r, pool, acc, map, I(total));
      });
    } else {
      dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
        using I = decltype(index);
        launch<pool_backward_atomic_kernel<S, A, I>>(blocks, kThreads, 0, stream, g, r, pool, acc, map, I(total));
      });
    }
  });
  return cudaGetLastError();
}

cudaError_t backward_gather_cuda(bool align, DType dtype, const void* grad, const void* rois, const PoolArgs& pool,
                                 const int64_t* order, const int64_t* offsets, void* grad_input, const MapArgs& map,
                                 cudaStream_t stream) {
  const int64_t total = map.N * map.C * map.H * map.W;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    using T = opmath_t<S>;
    const auto* g = static_cast<const S*>(grad);
    const auto* r = static_cast<const T*>(rois);
    auto* gi = static_cast<S*>(grad_input);
    if (align) {
      dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
        using I = decltype(index);
        launch<align_backward_gather_kernel<S, I>>(blocks, kThreads, 0, stream, g, r, pool, order, offsets, gi, map, I(total));
      });
    } else {
      dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
        using I = decltype(index);
        launch<pool_backward_gather_kernel<S, I>>(blocks, kThreads, 0, stream, g, r, pool, order, offsets, gi, map, I(total));
      });
    }
  });
  return cudaGetLastError();
}

}  // namespace ps_roi
}  // namespace detops
