// CUDA kernels of the transposed convolution. Only indexing, loads and stores
// live here; the tap arithmetic is conv_transpose2d_math.h, which the CPU tests
// exercise. No atomics: every output element (and every gradient element) is
// owned by one thread, one warp or one block.
#include "common/cuda_utils.cuh"
#include "conv_transpose2d/conv_transpose2d_cuda.h"

namespace detops {
namespace conv_transpose2d {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x == kThreads); valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T partial[kThreads / kWarp];
  v = warp_sum(v);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  T total = T(0);
  if (warp == 0) {
    total = lane < kThreads / kWarp ? partial[lane] : T(0);
    total = warp_sum(total);
  }
  return total;
}

// One thread per output element; consecutive threads take consecutive columns.
// I: the index type of the element decode (32-bit when every index fits).
template <typename S, typename I>
__global__ void gather_forward_kernel(Geometry g, const S* __restrict__ in, const S* __restrict__ w,
                                      const S* __restrict__ bias, const S* __restrict__ skip, S* __restrict__ out,
                                      Activation act, I total) {
  using T = opmath_t<S>;
  const int64_t cin_g = g.cin_g(), cout_g = g.cout_g();
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const Index4 e = unravel_nchw(p, g.Cout, g.OH, g.OW, false);
    const int64_t ox = e.w, oy = e.h, oc = e.c, n = e.n;
    const int64_t grp = I(oc) / I(cout_g), ocl = I(oc) % I(cout_g);
    const TapRange ty = gather_taps(oy, g.offH, g.sH, g.kH, g.H);
    const TapRange tx = gather_taps(ox, g.offW, g.sW, g.kW, g.W);
    T acc = bias ? convert<T>(bias[oc]) : T(0);
    for (int64_t icl = 0; icl < cin_g; ++icl) {
      const int64_t ic = grp * cin_g + icl;
      const S* in_c = in + (n * g.Cin + ic) * g.H * g.W;
      const S* w_c = w + (ic * cout_g + ocl) * g.kH * g.kW;
      for (int64_t jy = 0; jy < ty.count; ++jy) {
        const int64_t ky = ty.first_tap + jy * g.sH, iy = ty.first_input - jy;
        for (int64_t jx = 0; jx < tx.count; ++jx) {
          const int64_t kx = tx.first_tap + jx * g.sW, ix = tx.first_input - jx;
          acc += convert<T>(in_c[iy * g.W + ix]) * convert<T>(w_c[ky * g.kW + kx]);
        }
      }
    }
    if (skip) acc += convert<T>(skip[((n * g.Cout + oc) * g.skipH + oy + g.skip_offH) * g.skipW + ox + g.skip_offW]);
    out[p] = convert<S>(activate(act, acc));
  }
}

// The gradient of one input element: the taps its outputs reach, times the weight.
// The tap decode is in I (the launcher's reach covers cout_g * kH * kW).
template <typename S, typename T, typename I>
__device__ __forceinline__ T input_grad_term(const Geometry& g, const S* grad, const S* w, int64_t n, int64_t ic,
                                             int64_t iy, int64_t ix, I tap_index, const Span& sy, const Span& sx) {
  const I wy = static_cast<I>(sy.hi - sy.lo), wx = static_cast<I>(sx.hi - sx.lo);
  const int64_t ocl = tap_index / (wy * wx);
  const int64_t ky = sy.lo + (tap_index / wx) % wy;
  const int64_t kx = sx.lo + tap_index % wx;
  const int64_t oc = (ic / g.cin_g()) * g.cout_g() + ocl;
  const int64_t oy = iy * g.sH - g.offH + ky, ox = ix * g.sW - g.offW + kx;
  return convert<T>(grad[((n * g.Cout + oc) * g.OH + oy) * g.OW + ox]) *
         convert<T>(w[((ic * g.cout_g() + ocl) * g.kH + ky) * g.kW + kx]);
}

// Small windows: one thread per input element.
template <typename S, typename I>
__global__ void backward_input_thread_kernel(Geometry g, const S* __restrict__ grad, const S* __restrict__ w,
                                             S* __restrict__ grad_in, I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const Index4 e = unravel_nchw(p, g.Cin, g.H, g.W, false);
    const int64_t ix = e.w, iy = e.h, ic = e.c, n = e.n;
    const Span sy = scatter_taps(iy, g.offH, g.sH, g.kH, g.OH);
    const Span sx = scatter_taps(ix, g.offW, g.sW, g.kW, g.OW);
    const I taps = static_cast<I>(g.cout_g() * (sy.hi - sy.lo) * (sx.hi - sx.lo));
    T acc = T(0);
    for (I t = 0; t < taps; ++t) acc += input_grad_term<S, T>(g, grad, w, n, ic, iy, ix, t, sy, sx);
    grad_in[p] = convert<S>(acc);
  }
}

// Large windows (FCN's 64x64 kernels): one warp per input element, lanes split the window.
template <typename S, typename I>
__global__ void backward_input_warp_kernel(Geometry g, const S* __restrict__ grad, const S* __restrict__ w,
                                           S* __restrict__ grad_in, I total) {
  using T = opmath_t<S>;
  const int lane = threadIdx.x % kWarp;
  const I warps_per_grid = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x / kWarp);
  for (I p = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x / kWarp) + static_cast<I>(threadIdx.x / kWarp);
       p < total; p += warps_per_grid) {
    const Index4 e = unravel_nchw(p, g.Cin, g.H, g.W, false);
    const int64_t ix = e.w, iy = e.h, ic = e.c, n = e.n;
    const Span sy = scatter_taps(iy, g.offH, g.sH, g.kH, g.OH);
    const Span sx = scatter_taps(ix, g.offW, g.sW, g.kW, g.OW);
    const I taps = static_cast<I>(g.cout_g() * (sy.hi - sy.lo) * (sx.hi - sx.lo));
    T acc = T(0);
    for (I t = lane; t < taps; t += kWarp) acc += input_grad_term<S, T>(g, grad, w, n, ic, iy, ix, t, sy, sx);
    acc = warp_sum(acc);
    if (lane == 0) grad_in[p] = convert<S>(acc);
  }
}

// One block per weight element (ic, ocl, ky, kx): sums input * grad over
// images and inputs. I: the inner decode's type (the reach covers N * H * W).
template <typename S, typename I>
__global__ void backward_weight_kernel(Geometry g, const S* __restrict__ grad, const S* __restrict__ in,
                                       S* __restrict__ grad_w, int64_t total) {
  using T = opmath_t<S>;
  for (int64_t e = blockIdx.x; e < total; e += gridDim.x) {
    const int64_t kx = e % g.kW, ky = (e / g.kW) % g.kH;
    const int64_t ocl = (e / (g.kW * g.kH)) % g.cout_g(), ic = e / (g.kW * g.kH * g.cout_g());
    const int64_t oc = (ic / g.cin_g()) * g.cout_g() + ocl;
    const Span iys = inputs_of_tap(ky, g.offH, g.sH, g.H, g.OH);
    const Span ixs = inputs_of_tap(kx, g.offW, g.sW, g.W, g.OW);
    const I ny = static_cast<I>(iys.hi - iys.lo), nx = static_cast<I>(ixs.hi - ixs.lo);
    const I count = static_cast<I>(g.N) * ny * nx;
    T acc = T(0);
    for (I q = threadIdx.x; q < count; q += static_cast<I>(blockDim.x)) {
      const int64_t ix = ixs.lo + q % nx, iy = iys.lo + (q / nx) % ny, n = q / (nx * ny);
      const int64_t oy = iy * g.sH - g.offH + ky, ox = ix * g.sW - g.offW + kx;
      acc += convert<T>(in[((n * g.Cin + ic) * g.H + iy) * g.W + ix]) *
             convert<T>(grad[((n * g.Cout + oc) * g.OH + oy) * g.OW + ox]);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) grad_w[e] = convert<S>(acc);
    __syncthreads();  // partial[] is reused by the next element
  }
}

template <typename S, typename I>
__global__ void dense_shuffle_kernel(Geometry g, const S* __restrict__ y, DenseStrides st, int64_t n0,
                                     const S* __restrict__ bias, const S* __restrict__ skip, Strides4 skip_st,
                                     S* __restrict__ out, Strides4 out_st, bool channels_last, Activation act,
                                     I total) {
  using T = opmath_t<S>;
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    // Threads walk the output in its memory order so that stores coalesce.
    const Index4 e = unravel_nchw(p, g.Cout, g.OH, g.OW, channels_last);
    const int64_t oc = e.c, oy = e.h, ox = e.w, nl = e.n;
    const int64_t n = n0 + nl;
    const SingleTap ty = single_tap(oy, g.offH, g.sH, g.H);
    const SingleTap tx = single_tap(ox, g.offW, g.sW, g.W);
    T v = bias ? convert<T>(bias[oc]) : T(0);
    if (ty.input >= 0 && tx.input >= 0) {
      const int64_t r = (oc * g.kH + ty.tap) * g.kW + tx.tap;
      v += convert<T>(y[r * st.rs + nl * st.ns + (ty.input * g.W + tx.input) * st.ps]);
    }
    if (skip) v += convert<T>(skip[skip_st.at(n, oc, oy + g.skip_offH, ox + g.skip_offW)]);
    out[out_st.at(n, oc, oy, ox)] = convert<S>(activate(act, v));
  }
}

// One thread per column-buffer element, in (row r, image, pixel) order.
template <typename S, typename I>
__global__ void dense_unshuffle_kernel(Geometry g, const S* __restrict__ grad, Strides4 gs, int64_t n0, int64_t nb,
                                       S* __restrict__ cols, DenseStrides st, I total) {
  const I W = static_cast<I>(g.W), HW = static_cast<I>(g.H) * W, NB = static_cast<I>(nb);
  const I kW = static_cast<I>(g.kW), kH = static_cast<I>(g.kH);
  for (I p = grid_first<I>(); p < total; p += grid_stride<I>()) {
    const I pix = p % HW;
    const int64_t nl = (p / HW) % NB;
    const I r = p / (HW * NB);
    const int64_t kx = r % kW, ky = (r / kW) % kH, oc = r / (kW * kH);
    const int64_t iy = pix / W, ix = pix % W;
    const int64_t oy = iy * g.sH + ky - g.offH, ox = ix * g.sW + kx - g.offW;
    const bool inside = oy >= 0 && oy < g.OH && ox >= 0 && ox < g.OW;
    cols[r * st.rs + nl * st.ns + pix * st.ps] =
        inside ? grad[gs.at(n0 + nl, oc, oy, ox)] : convert<S>(opmath_t<S>(0));
  }
}

}  // namespace

cudaError_t gather_forward_cuda(DType dtype, const Geometry& g, const void* input, const void* weight,
                                const void* bias, const void* skip, void* out, Activation act, cudaStream_t stream) {
  const int64_t total = g.N * g.Cout * g.OH * g.OW;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<gather_forward_kernel<S, I>>(blocks, kThreads, 0, stream,
          g, static_cast<const S*>(input), static_cast<const S*>(weight), static_cast<const S*>(bias),
          static_cast<const S*>(skip), static_cast<S*>(out), act, I(total));
    });
  });
  return cudaGetLastError();
}

cudaError_t gather_backward_input_cuda(DType dtype, const Geometry& g, const void* grad, const void* weight,
                                       void* grad_input, cudaStream_t stream) {
  const int64_t total = g.N * g.Cin * g.H * g.W;
  if (total == 0) return cudaSuccess;
  const int64_t window = g.cout_g() * (g.kH < g.OH ? g.kH : g.OH) * (g.kW < g.OW ? g.kW : g.OW);
  dispatch_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    const int64_t taps = g.cout_g() * g.kH * g.kW;  // the tap decode's reach
    if (window >= 2 * kWarp) {
      dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
        using I = decltype(index);
        launch<backward_input_warp_kernel<S, I>>(blocks, kThreads, 0, stream,
            g, static_cast<const S*>(grad), static_cast<const S*>(weight), static_cast<S*>(grad_input), I(total));
      }, taps, kWarp);
    } else {
      dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
        using I = decltype(index);
        launch<backward_input_thread_kernel<S, I>>(blocks, kThreads, 0, stream,
            g, static_cast<const S*>(grad), static_cast<const S*>(weight), static_cast<S*>(grad_input), I(total));
      }, taps);
    }
  });
  return cudaGetLastError();
}

cudaError_t gather_backward_weight_cuda(DType dtype, const Geometry& g, const void* grad, const void* input,
                                        void* grad_weight, cudaStream_t stream) {
  const int64_t total = g.Cin * g.cout_g() * g.kH * g.kW;
  if (total == 0) return cudaSuccess;
  const unsigned int blocks = static_cast<unsigned int>(total < 65535LL * 16 ? total : 65535LL * 16);
  dispatch_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    // Each block's inner loop indexes the N * H * W inputs of its tap.
    dispatch_index(g.N * g.H * g.W + kThreads, [&](auto index) {
      using I = decltype(index);
      launch<backward_weight_kernel<S, I>>(blocks, kThreads, 0, stream,
          g, static_cast<const S*>(grad), static_cast<const S*>(input), static_cast<S*>(grad_weight), total);
    });
  });
  return cudaGetLastError();
}

cudaError_t dense_shuffle_cuda(DType dtype, const Geometry& g, const void* y, DenseStrides st, int64_t n0,
                               int64_t nb, const void* bias, const void* skip, Strides4 skip_st, void* out,
                               Strides4 out_st, bool channels_last, Activation act, cudaStream_t stream) {
  const int64_t total = nb * g.Cout * g.OH * g.OW;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<dense_shuffle_kernel<S, I>>(blocks, kThreads, 0, stream,
          g, static_cast<const S*>(y), st, n0, static_cast<const S*>(bias), static_cast<const S*>(skip), skip_st,
          static_cast<S*>(out), out_st, channels_last, act, I(total));
    });
  });
  return cudaGetLastError();
}

cudaError_t dense_unshuffle_cuda(DType dtype, const Geometry& g, const void* grad, Strides4 gs, int64_t n0, int64_t nb,
                                 void* cols, DenseStrides st, cudaStream_t stream) {
  const int64_t total = g.Cout * g.kH * g.kW * nb * g.H * g.W;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<dense_unshuffle_kernel<S, I>>(blocks, kThreads, 0, stream,
          g, static_cast<const S*>(grad), gs, n0, nb, static_cast<S*>(cols), st, I(total));
    });
  });
  return cudaGetLastError();
}

}  // namespace conv_transpose2d
}  // namespace detops
