// CPU kernels of the transposed convolution.
//
// Gather algorithm: each task owns whole rows of its output (forward: output
// rows; input gradient: input rows; weight gradient: weight rows), so there
// are no atomics and the result does not depend on the thread count. Along a
// row the innermost loop runs over the kernel's columns, contiguous in both
// the weight and the row, so that it vectorises; along the columns of a
// depthwise large-kernel layer each output reads only the ceil(k / s) taps
// that reach it.
//
// Dense algorithm (kernel == stride): the matrix product is ATen's (see
// conv_transpose2d.cpp); this file does the pixel shuffle with bias, skip and
// activation, its inverse for the gradients, the cache-blocked NCHW <->
// channels-last copies around oneDNN's 1x1 convolutions, and the choice
// between that column form and oneDNN's own deconvolution.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/huge_pages.h"
#include "conv_transpose2d/conv_transpose2d.h"

namespace detops {
namespace conv_transpose2d {
namespace {

// Multiply-adds per parallel task.
constexpr int64_t kWorkPerTask = 1 << 15;

int64_t grain_for(int64_t work_per_row) {
  return std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(1, work_per_row));
}

namespace generic {
#include "conv_transpose2d/conv_transpose2d_cpu_kernels.inc"
}  // namespace generic

// The same kernels compiled for AVX2 + FMA (8 floats a vector instead of
// SSE2's 4), used when the CPU has them: the build's baseline is plain x86-64.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DETOPS_CT_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "conv_transpose2d/conv_transpose2d_cpu_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options
#endif

bool use_avx2() {
#ifdef DETOPS_CT_AVX2
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
#else
  return false;
#endif
}

#ifdef DETOPS_CT_AVX2
#define DETOPS_CT_CALL(fn, ...) (use_avx2() ? avx2::fn(__VA_ARGS__) : generic::fn(__VA_ARGS__))
#else
#define DETOPS_CT_CALL(fn, ...) generic::fn(__VA_ARGS__)
#endif

// ------------------------------------------------------------------ layout copies

// Copies one image's [C, HW] plane into [HW, C] (to_channels_last) or back.
// A task takes a block of pixels: for each channel it reads (or writes) the
// block's pixels contiguously and touches one cache line per pixel on the
// other side, so the block's lines stay in L1 across the channel loop.
constexpr int64_t kRelayoutPixels = 16;

template <typename E>
void relayout_planes(const E* __restrict__ src, E* __restrict__ dst, int64_t N, int64_t C, int64_t HW,
                     bool to_channels_last) {
  const int64_t blocks = ceil_div(HW, kRelayoutPixels);
  at::parallel_for(0, N * blocks, grain_for(kRelayoutPixels * C), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, p0 = (task % blocks) * kRelayoutPixels;
      const int64_t np = std::min(kRelayoutPixels, HW - p0);
      const E* __restrict__ s = src + n * C * HW;
      E* __restrict__ d = dst + n * C * HW;
      for (int64_t c = 0; c < C; ++c) {
        if (to_channels_last) {
          for (int64_t p = 0; p < np; ++p) d[(p0 + p) * C + c] = s[c * HW + p0 + p];
        } else {
          for (int64_t p = 0; p < np; ++p) d[c * HW + p0 + p] = s[(p0 + p) * C + c];
        }
      }
    }
  });
}

void relayout_cpu(const at::Tensor& src, const at::Tensor& dst) {
  const bool src_cl = !src.is_contiguous() && src.is_contiguous(at::MemoryFormat::ChannelsLast);
  const bool dst_cl = !dst.is_contiguous() && dst.is_contiguous(at::MemoryFormat::ChannelsLast);
  const bool planes = src.dim() == 4 && src.sizes() == dst.sizes() && src.scalar_type() == dst.scalar_type() &&
                      src_cl != dst_cl && (src_cl || src.is_contiguous()) && (dst_cl || dst.is_contiguous());
  if (!planes) {
    dst.copy_(src);
    return;
  }
  const int64_t N = src.size(0), C = src.size(1), HW = src.size(2) * src.size(3);
  const auto run = [&](auto tag) {
    using E = decltype(tag);
    relayout_planes(static_cast<const E*>(src.const_data_ptr()), static_cast<E*>(dst.mutable_data_ptr()), N, C, HW,
                    dst_cl);
  };
  switch (src.element_size()) {
    case 2: run(uint16_t{}); break;
    case 4: run(uint32_t{}); break;
    case 8: run(uint64_t{}); break;
    default: dst.copy_(src);
  }
}

// ------------------------------------------------------------------ dense shuffle

// Channels-last output: an output pixel's Cout values come from one pixel of y
// (stride kH * kW apart) and are written contiguously.
template <typename scalar_t>
void shuffle_to_channels_last(const scalar_t* yp, DenseStrides st, int64_t n0, int64_t nb, const scalar_t* bp,
                              const scalar_t* sp, scalar_t* op, Strides4 os, const Geometry& g, Activation act) {
  using T = at::opmath_type<scalar_t>;
  const int64_t kk = g.kH * g.kW;
  at::parallel_for(0, nb * g.OH, grain_for(g.OW * g.Cout), [&](int64_t begin, int64_t end) {
    std::vector<T> pixel_buf(g.Cout);
    T* __restrict__ v = pixel_buf.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t oy = row % g.OH, nl = row / g.OH, n = n0 + nl;
      const SingleTap ty = single_tap(oy, g.offH, g.sH, g.H);
      for (int64_t ox = 0; ox < g.OW; ++ox) {
        const SingleTap tx = single_tap(ox, g.offW, g.sW, g.W);
        for (int64_t oc = 0; oc < g.Cout; ++oc) v[oc] = bp ? T(bp[oc]) : T(0);
        if (ty.input >= 0 && tx.input >= 0) {
          const scalar_t* __restrict__ src =
              yp + nl * st.ns + (ty.input * g.W + tx.input) * st.ps + (ty.tap * g.kW + tx.tap) * st.rs;
          const int64_t step = kk * st.rs;
          for (int64_t oc = 0; oc < g.Cout; ++oc) v[oc] += T(src[oc * step]);
        }
        if (sp) {
          const scalar_t* __restrict__ sk =
              sp + ((n * g.skipH + oy + g.skip_offH) * g.skipW + ox + g.skip_offW) * g.Cout;
          for (int64_t oc = 0; oc < g.Cout; ++oc) v[oc] += T(sk[oc]);
        }
        generic::store_row(v, op + os.at(n, 0, oy, ox), g.Cout, act);
      }
    }
  });
}

// Pixel-major y (a pixel's R = Cout * kH * kW values contiguous, oneDNN's
// layout) into NCHW rows. Reading y straight would stride R elements per
// output pixel, a cache miss each; instead a task takes one input row and a
// block of channels, transposes that slab of y once into a tile that stays in
// L1, and writes the block's kH output rows per channel from the tile.
constexpr int64_t kShuffleTileElements = 4096;

// tile[(j * span) + ix * kW + kx] = y[ix pixel][j * kW + kx] for the slab's
// j = (channel, ky) rows; kFixedW > 0 fixes kW at compile time (the common
// kernel 2), so that a pixel's kW values move as one load and one store.
template <int kFixedW, typename scalar_t, typename T>
void fill_shuffle_tile(const scalar_t* __restrict__ src, int64_t pixel_stride, int64_t W, int64_t rows,
                       int64_t kW_runtime, int64_t span, T* __restrict__ tile) {
  const int64_t kW = kFixedW > 0 ? kFixedW : kW_runtime;
  for (int64_t ix = 0; ix < W; ++ix) {
    const scalar_t* __restrict__ s = src + ix * pixel_stride;
    T* __restrict__ d = tile + ix * kW;
    for (int64_t j = 0; j < rows; ++j) {
      for (int64_t kx = 0; kx < kW; ++kx) d[j * span + kx] = T(s[j * kW + kx]);
    }
  }
}

template <typename scalar_t>
void shuffle_pixel_major_to_nchw(const scalar_t* yp, DenseStrides st, int64_t n0, int64_t nb, const scalar_t* bp,
                                 const scalar_t* sp, scalar_t* op, Strides4 os, const Geometry& g, Activation act) {
  using T = at::opmath_type<scalar_t>;
  const int64_t kk = g.kH * g.kW;
  const int64_t span = g.W * g.sW;  // uncropped output width (kernel == stride)
  const int64_t block = std::clamp<int64_t>(kShuffleTileElements / std::max<int64_t>(1, g.kH * span), 1, g.Cout);
  const int64_t blocks = ceil_div(g.Cout, block);
  const int64_t iy_first = g.offH / g.sH, iy_count = (g.offH + g.OH - 1) / g.sH - iy_first + 1;
  // Output columns [0, cols) read the tile at ox + offW; the rest (output_padding) get no tap.
  const int64_t cols = std::clamp<int64_t>(span - g.offW, 0, g.OW);
  at::parallel_for(0, nb * blocks * iy_count, grain_for(block * g.sH * g.OW), [&](int64_t begin, int64_t end) {
    std::vector<T> tile_buf(block * g.kH * span), row_buf(g.OW);
    T* __restrict__ tile = tile_buf.data();
    T* __restrict__ v = row_buf.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t iy = iy_first + task % iy_count;
      const int64_t ob = (task / iy_count) % blocks, nl = task / (iy_count * blocks), n = n0 + nl;
      const int64_t oc0 = ob * block, ocs = std::min(block, g.Cout - oc0);
      const bool has_input = iy < g.H;
      if (has_input) {
        const scalar_t* src = yp + nl * st.ns + iy * g.W * st.ps + oc0 * kk;
        if (g.kW == 2) {
          fill_shuffle_tile<2>(src, st.ps, g.W, ocs * g.kH, g.kW, span, tile);
        } else {
          fill_shuffle_tile<0>(src, st.ps, g.W, ocs * g.kH, g.kW, span, tile);
        }
      }
      const int64_t oy_begin = std::max<int64_t>(0, iy * g.sH - g.offH);
      const int64_t oy_end = std::min<int64_t>(g.OH, (iy + 1) * g.sH - g.offH);
      for (int64_t ocl = 0; ocl < ocs; ++ocl) {
        const int64_t oc = oc0 + ocl;
        const T b0 = bp ? T(bp[oc]) : T(0);
        for (int64_t oy = oy_begin; oy < oy_end; ++oy) {
          const int64_t valid = has_input ? cols : 0;
          const T* __restrict__ trow = tile + (ocl * g.kH + (oy + g.offH - iy * g.sH)) * span + g.offW;
          for (int64_t ox = 0; ox < valid; ++ox) v[ox] = b0 + trow[ox];
          for (int64_t ox = valid; ox < g.OW; ++ox) v[ox] = b0;
          if (sp) {
            const scalar_t* __restrict__ sk =
                sp + ((n * g.Cout + oc) * g.skipH + oy + g.skip_offH) * g.skipW + g.skip_offW;
            for (int64_t ox = 0; ox < g.OW; ++ox) v[ox] += T(sk[ox]);
          }
          generic::store_row(v, op + os.at(n, oc, oy, 0), g.OW, act);
        }
      }
    }
  });
}

// Tap-major y (a tap's pixels contiguous) into NCHW rows: one task per output
// row reads, for each output column, the one tap that reaches it.
template <typename scalar_t>
void shuffle_tap_major_to_nchw(const scalar_t* yp, DenseStrides st, int64_t n0, int64_t nb, const scalar_t* bp,
                               const scalar_t* sp, scalar_t* op, Strides4 os, const Geometry& g, Activation act) {
  using T = at::opmath_type<scalar_t>;
  // Per output column: the offset of its (tap, input) inside a row of y. Only
  // the last columns (output_padding past the input's reach) have no tap.
  std::vector<int64_t> col_offset(g.OW);
  int64_t valid_cols = 0;
  for (int64_t ox = 0; ox < g.OW; ++ox) {
    const SingleTap t = single_tap(ox, g.offW, g.sW, g.W);
    if (t.input >= 0) {
      col_offset[ox] = t.tap * st.rs + t.input * st.ps;
      valid_cols = ox + 1;
    }
  }
  const int64_t* __restrict__ cofs = col_offset.data();
  at::parallel_for(0, nb * g.Cout * g.OH, grain_for(g.OW), [&](int64_t begin, int64_t end) {
    std::vector<T> row_buf(g.OW);
    T* __restrict__ v = row_buf.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t oy = row % g.OH;
      const int64_t noc = row / g.OH;
      const int64_t oc = noc % g.Cout;
      const int64_t nl = noc / g.Cout;
      const int64_t n = n0 + nl;
      const T b0 = bp ? T(bp[oc]) : T(0);
      const SingleTap ty = single_tap(oy, g.offH, g.sH, g.H);
      const int64_t cols = ty.input < 0 ? 0 : valid_cols;
      if (cols > 0) {
        const scalar_t* __restrict__ yrow =
            yp + ((oc * g.kH + ty.tap) * g.kW) * st.rs + nl * st.ns + ty.input * g.W * st.ps;
        for (int64_t ox = 0; ox < cols; ++ox) v[ox] = b0 + T(yrow[cofs[ox]]);
      }
      for (int64_t ox = cols; ox < g.OW; ++ox) v[ox] = b0;
      if (sp) {
        const scalar_t* __restrict__ sk = sp + ((n * g.Cout + oc) * g.skipH + oy + g.skip_offH) * g.skipW + g.skip_offW;
        for (int64_t ox = 0; ox < g.OW; ++ox) v[ox] += T(sk[ox]);
      }
      generic::store_row(v, op + os.at(n, oc, oy, 0), g.OW, act);
    }
  });
}

void shuffle_cpu(const at::Tensor& y, DenseStrides st, int64_t n0, int64_t nb, const std::optional<at::Tensor>& bias,
                 const std::optional<at::Tensor>& skip, at::Tensor& out, const Geometry& g, Activation act) {
  const bool channels_last = is_channels_last(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv_transpose2d_shuffle_cpu", [&] {
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
    const scalar_t* bp = bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr;
    const at::Tensor skip_c = skip.has_value() ? skip->contiguous(out.suggest_memory_format()) : at::Tensor();
    const scalar_t* sp = skip_c.defined() ? skip_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const Strides4 os{out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
    if (channels_last) {
      shuffle_to_channels_last(yp, st, n0, nb, bp, sp, op, os, g, act);
    } else if (st.rs == 1) {
      shuffle_pixel_major_to_nchw(yp, st, n0, nb, bp, sp, op, os, g, act);
    } else {
      shuffle_tap_major_to_nchw(yp, st, n0, nb, bp, sp, op, os, g, act);
    }
  });
}

// The inverse of fill_shuffle_tile: y[ix pixel][j * kW + kx] = tile[(j * span) + ix * kW + kx].
template <int kFixedW, typename scalar_t>
void drain_shuffle_tile(const scalar_t* __restrict__ tile, int64_t span, int64_t W, int64_t rows, int64_t kW_runtime,
                        scalar_t* __restrict__ dst, int64_t pixel_stride) {
  const int64_t kW = kFixedW > 0 ? kFixedW : kW_runtime;
  for (int64_t ix = 0; ix < W; ++ix) {
    scalar_t* __restrict__ d = dst + ix * pixel_stride;
    const scalar_t* __restrict__ s = tile + ix * kW;
    for (int64_t j = 0; j < rows; ++j) {
      for (int64_t kx = 0; kx < kW; ++kx) d[j * kW + kx] = s[j * span + kx];
    }
  }
}

// The gradient columns (pixel-major, as oneDNN's 1x1 convolutions want them)
// from an NCHW gradient: the shuffle's tiling run backwards. A task copies one
// input row's kH output rows of a block of channels into an L1 tile (zeros
// where a tap falls outside the output window), then writes each pixel's
// columns from it.
void unshuffle_cpu(const at::Tensor& grad, int64_t n0, int64_t nb, at::Tensor& cols, DenseStrides st,
                   const Geometry& g) {
  TORCH_INTERNAL_ASSERT(st.rs == 1, "conv_transpose2d: CPU unshuffle expects pixel-major columns");
  TORCH_INTERNAL_ASSERT(grad.stride(3) == 1, "conv_transpose2d: CPU unshuffle expects NCHW gradient rows");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "conv_transpose2d_unshuffle_cpu", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const Strides4 gs{grad.stride(0), grad.stride(1), grad.stride(2), grad.stride(3)};
    scalar_t* cp = cols.mutable_data_ptr<scalar_t>();
    const int64_t kk = g.kH * g.kW;
    const int64_t span = g.W * g.sW;
    const int64_t block = std::clamp<int64_t>(kShuffleTileElements / std::max<int64_t>(1, g.kH * span), 1, g.Cout);
    const int64_t blocks = ceil_div(g.Cout, block);
    // Tile columns [u_begin, u_end) lie inside the output window (u = ox + offW).
    const int64_t u_begin = std::min(g.offW, span), u_end = std::clamp<int64_t>(g.OW + g.offW, u_begin, span);
    at::parallel_for(0, nb * blocks * g.H, grain_for(block * kk * g.W), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> tile_buf(block * g.kH * span);
      scalar_t* __restrict__ tile = tile_buf.data();
      for (int64_t task = begin; task < end; ++task) {
        const int64_t iy = task % g.H, ob = (task / g.H) % blocks, nl = task / (g.H * blocks);
        const int64_t oc0 = ob * block, ocs = std::min(block, g.Cout - oc0);
        for (int64_t ocl = 0; ocl < ocs; ++ocl) {
          for (int64_t ky = 0; ky < g.kH; ++ky) {
            scalar_t* __restrict__ trow = tile + (ocl * g.kH + ky) * span;
            const int64_t oy = iy * g.sH + ky - g.offH;
            if (oy < 0 || oy >= g.OH) {
              std::fill(trow, trow + span, scalar_t(0));
              continue;
            }
            const scalar_t* __restrict__ grow = gp + gs.at(n0 + nl, oc0 + ocl, oy, 0) - g.offW;
            std::fill(trow, trow + u_begin, scalar_t(0));
            for (int64_t u = u_begin; u < u_end; ++u) trow[u] = grow[u];
            std::fill(trow + u_end, trow + span, scalar_t(0));
          }
        }
        scalar_t* dst = cp + nl * st.ns + iy * g.W * st.ps + oc0 * kk;
        if (g.kW == 2) {
          drain_shuffle_tile<2>(tile, span, g.W, ocs * g.kH, g.kW, dst, st.ps);
        } else {
          drain_shuffle_tile<0>(tile, span, g.W, ocs * g.kH, g.kW, dst, st.ps);
        }
      }
    });
  });
}

// ------------------------------------------------------------------ algorithm choice
//
// Measured on a 2-core AMD EPYC (AVX-512) with glibc's heap kept warm; see
// bench/ops/conv_transpose2d.py for the cases.
//  * Forward, NCHW: the 1x1 convolution + fused shuffle beats oneDNN's NCHW
//    deconvolution, which reorders its input and its output in separate passes
//    (U-Net 256->128 on 64x64: 3.5 vs 4.1 ms; Mask R-CNN head, 100 RoIs: 38 vs 45 ms).
//  * Forward, channels-last: oneDNN's deconvolution runs in its native layout
//    and the shuffle has nothing left to save; it runs, with the skip add and
//    ReLU fused in place after it.
//  * Backward: the column form pays off only while one image's columns stay in
//    the core's cache (the Mask R-CNN head with many RoIs); otherwise oneDNN's
//    own backward, channels-last when the input is.
//  * Forward, NCHW, float32, up to kDenseMatmulColumns columns in all (N *
//    Cout * kH * kW * H * W): one matrix product [R, Cin] @ [N, Cin, H * W]
//    before the shuffle beats the 1x1 convolution, whose oneDNN call and
//    channels-last reorder cost more than the product saves at these sizes
//    (`bench/conv_transpose2d_crossover.py --gemm`, torch time / ours with
//    each: U-Net 256 -> 128 at 16x16 1.39x vs 0.66x, 32x32 1.97x vs 1.39x,
//    40x40 1.23x vs 0.96x; mask head 256 -> 256, 1 RoI 1.29x vs 0.77x, 5 RoIs
//    1.49x vs 1.24x). Past it the 1x1 convolution wins (U-Net 64x64 1.21x vs
//    1.16x). One odd shape near the limit reads the other way: U-Net 45x45
//    (H * W = 2025) 0.91-1.08x vs 1.27-1.55x.
constexpr int64_t kDenseCacheColumns = int64_t(1) << 18;
constexpr int64_t kDenseMatmulColumns = int64_t(1) << 20;
constexpr int64_t kDenseSmallOutput = int64_t(1) << 22;  // 16 MB of float32: half the L3 here

// The torch output_padding of a dense window, or -1 when the window is not one
// torch's conv_transpose2d can express.
std::array<int64_t, 2> torch_output_padding(const Geometry& g) {
  const int64_t op_h = g.OH - (g.H * g.sH - 2 * g.offH), op_w = g.OW - (g.W * g.sW - 2 * g.offW);
  const bool ok = op_h >= 0 && op_h < g.sH && op_w >= 0 && op_w < g.sW;
  return {ok ? op_h : -1, ok ? op_w : -1};
}

// DETOPS_CT_DENSE_FORWARD / DETOPS_CT_DENSE_BACKWARD = "onednn" or "columns"
// force one algorithm (tests cover both at small sizes; benchmarks compare them).
// Returns 1 (oneDNN), 0 (columns) or -1 (not forced).
int forced_algorithm(const char* variable) {
  const char* value = std::getenv(variable);
  if (value == nullptr) return -1;
  const std::string v(value);
  return v == "onednn" ? 1 : (v == "columns" ? 0 : -1);
}

bool forward_via_onednn(const Geometry& g, const at::Tensor& input) {
  if (torch_output_padding(g)[0] < 0) return false;
  const int forced = forced_algorithm("DETOPS_CT_DENSE_FORWARD");
  return forced >= 0 ? forced == 1 : is_channels_last(input);
}

// DETOPS_CT_DENSE_GEMM = "matmul" or "conv1x1" forces the forward's product.
DenseGemm forward_gemm(const Geometry& g, const at::Tensor& input) {
  if (const char* forced = std::getenv("DETOPS_CT_DENSE_GEMM")) {
    return std::string(forced) == "matmul" ? DenseGemm::kMatmul : DenseGemm::kConv1x1;
  }
  // float32 only: bfloat16 matrix products take a slow reference path on CPUs
  // without AVX512-BF16 (U-Net 8x8: 0.88x torch, against oneDNN's 1x1 convolution).
  const bool small = g.N * g.Cout * g.kH * g.kW * g.H * g.W <= kDenseMatmulColumns;
  const bool matmul = small && input.scalar_type() == at::kFloat && !is_channels_last(input);
  return matmul ? DenseGemm::kMatmul : DenseGemm::kConv1x1;
}

bool backward_via_onednn(const Geometry& g, const at::Tensor& input) {
  if (torch_output_padding(g)[0] < 0) return false;
  const int forced = forced_algorithm("DETOPS_CT_DENSE_BACKWARD");
  if (forced >= 0) return forced == 1;
  if (is_channels_last(input)) return false;
  const bool columns_spill = g.Cout * g.kH * g.kW * g.H * g.W > kDenseCacheColumns;
  const bool small_output = g.N * g.Cout * g.OH * g.OW <= kDenseSmallOutput;
  return columns_spill || small_output;
}

// out = act(out + skip window), in place, row by row (an NCHW row is OW values
// of one channel, a channels-last row OW pixels of Cout channels).
void epilogue_cpu(at::Tensor& out, const std::optional<at::Tensor>& skip, const Geometry& g, Activation act) {
  if (!skip.has_value() && act == Activation::kNone) return;
  const bool channels_last = is_channels_last(out);
  const int64_t row_len = channels_last ? g.OW * g.Cout : g.OW;
  const int64_t rows = channels_last ? g.N * g.OH : g.N * g.Cout * g.OH;
  // Skip row (image-channel plane, or image, then row oy) to its window's first element.
  const int64_t pixel = channels_last ? g.Cout : 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv_transpose2d_epilogue_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor skip_c = skip.has_value() ? skip->contiguous(format_of(channels_last)) : at::Tensor();
    const scalar_t* sp = skip.has_value() ? skip_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(row_len), [&](int64_t begin, int64_t end) {
      std::vector<T> row_buf(row_len);
      T* __restrict__ v = row_buf.data();
      for (int64_t row = begin; row < end; ++row) {
        const int64_t oy = row % g.OH, plane = row / g.OH;
        scalar_t* __restrict__ o = op + row * row_len;
        for (int64_t i = 0; i < row_len; ++i) v[i] = T(o[i]);
        if (sp) {
          const scalar_t* __restrict__ sk =
              sp + ((plane * g.skipH + oy + g.skip_offH) * g.skipW + g.skip_offW) * pixel;
          for (int64_t i = 0; i < row_len; ++i) v[i] += T(sk[i]);
        }
        generic::store_row(v, o, row_len, act);
      }
    });
  });
}

at::Tensor dense_forward_onednn(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& skip,
                                const Geometry& g, Activation act) {
  const auto op = torch_output_padding(g);
  const int64_t stride[2] = {g.sH, g.sW}, pad[2] = {g.offH, g.offW}, one[2] = {1, 1};
  // oneDNN keeps a channels-last input's layout for its output.
  const at::MemoryFormat format = format_of(is_channels_last(input));
  at::Tensor out =
      at::convolution(input.contiguous(format), weight, bias, stride, pad, one, true, op, 1).contiguous(format);
  epilogue_cpu(out, skip, g, act);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_backward_onednn(const at::Tensor& grad, const at::Tensor& input,
                                                                     const at::Tensor& weight, const Geometry& g,
                                                                     std::array<bool, 3> mask) {
  const auto op = torch_output_padding(g);
  const int64_t stride[2] = {g.sH, g.sW}, pad[2] = {g.offH, g.offW}, one[2] = {1, 1};
  const int64_t bias_size[1] = {g.Cout};
  // oneDNN runs channels-last natively: keep a channels-last pair in that layout.
  const at::MemoryFormat format = format_of(is_channels_last(input));
  auto [gi, gw, gb] = at::convolution_backward(grad.contiguous(format), input.contiguous(format), weight,
                                               at::IntArrayRef(bias_size), stride, pad, one, true, op, 1, mask);
  const auto empty = [&] { return at::empty({0}, input.options()); };
  return {mask[0] ? gi.contiguous(format) : empty(), mask[1] ? gw.contiguous() : empty(), mask[2] ? gb : empty()};
}

at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& skip, at::IntArrayRef stride, at::IntArrayRef offset,
                       at::IntArrayRef output_size, at::IntArrayRef skip_offset, int64_t groups,
                       int64_t activation) {
  const Geometry g = make_geometry(input, weight, bias, skip, stride, offset, output_size, skip_offset, groups);
  const Activation act = parse_activation(activation);
  if (is_dense(g) && forward_via_onednn(g, input)) return dense_forward_onednn(input, weight, bias, skip, g, act);
  if (is_dense(g)) {
    return dense_forward(input, weight, bias, skip, g, act, &shuffle_cpu, forward_gemm(g, input), &relayout_cpu);
  }
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor s = skip.has_value() ? skip->contiguous() : at::Tensor();
  at::Tensor out = with_huge_pages(at::empty({g.N, g.Cout, g.OH, g.OW}, x.options()));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_transpose2d_cpu", [&] {
    DETOPS_CT_CALL(gather_forward<scalar_t>, g, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                   b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                   s.defined() ? s.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), act);
  });
  return in_format_of(out, input);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_in, const at::Tensor& input,
                                                            const at::Tensor& weight, at::IntArrayRef stride,
                                                            at::IntArrayRef offset, int64_t groups,
                                                            std::array<bool, 3> mask) {
  const Geometry g = backward_geometry(grad_in, input, weight, stride, offset, groups);
  if (is_dense(g) && backward_via_onednn(g, input)) return dense_backward_onednn(grad_in, input, weight, g, mask);
  if (is_dense(g)) {
    return dense_backward(grad_in, input, weight, g, mask, &unshuffle_cpu, DenseGemm::kConv1x1, &relayout_cpu);
  }
  const at::Tensor grad = grad_in.contiguous(), x = input.contiguous(), w = weight.contiguous();
  at::Tensor grad_input = mask[0] ? with_huge_pages(at::empty_like(x)) : at::empty({0}, x.options());
  at::Tensor grad_weight = mask[1] ? at::empty_like(w) : at::empty({0}, x.options());
  at::Tensor grad_bias = mask[2] ? grad.sum({0, 2, 3}) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_transpose2d_backward_cpu", [&] {
    if (mask[0] && x.numel() > 0) {
      DETOPS_CT_CALL(gather_backward_input<scalar_t>, g, grad.const_data_ptr<scalar_t>(),
                     w.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>());
    }
    if (mask[1] && w.numel() > 0) {
      DETOPS_CT_CALL(gather_backward_weight<scalar_t>, g, grad.const_data_ptr<scalar_t>(),
                     x.const_data_ptr<scalar_t>(), grad_weight.mutable_data_ptr<scalar_t>());
    }
  });
  return {mask[0] ? in_format_of(grad_input, input) : grad_input, grad_weight, grad_bias};
}

}  // namespace
}  // namespace conv_transpose2d
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  using namespace detops::conv_transpose2d;
  m.impl("conv_transpose2d", &forward_cpu);
  m.impl("conv_transpose2d_backward", &backward_cpu);
}
