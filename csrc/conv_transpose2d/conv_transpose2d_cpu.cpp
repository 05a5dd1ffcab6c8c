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
// activation, and its inverse for the gradients.
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
#include <vector>

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

// ------------------------------------------------------------------ dense shuffle

void shuffle_cpu(const at::Tensor& y, DenseStrides st, int64_t n0, int64_t nb, const std::optional<at::Tensor>& bias,
                 const std::optional<at::Tensor>& skip, at::Tensor& out, const Geometry& g, Activation act) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv_transpose2d_shuffle_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    const at::Tensor skip_c = skip.has_value() ? skip->contiguous() : at::Tensor();
    const scalar_t* sp = skip.has_value() ? skip_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
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
    const int64_t rows = nb * g.Cout * g.OH;
    at::parallel_for(0, rows, grain_for(g.OW), [&](int64_t begin, int64_t end) {
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
        scalar_t* __restrict__ o = op + ((n * g.Cout + oc) * g.OH + oy) * g.OW;
        generic::store_row(v, o, g.OW, act);
      }
    });
  });
}

void unshuffle_cpu(const at::Tensor& grad, int64_t n0, int64_t nb, at::Tensor& cols, DenseStrides st,
                   const Geometry& g) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "conv_transpose2d_unshuffle_cpu", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* cp = cols.mutable_data_ptr<scalar_t>();
    // The CPU driver always asks for channels-last columns (see dense_backward).
    TORCH_INTERNAL_ASSERT(st.rs == 1, "conv_transpose2d: CPU unshuffle expects channels-last columns");
    {
      // Channels-last columns: a pixel's R values are contiguous. One task per
      // input row (image, iy) writes its pixels' columns in order; the
      // 2 * Cout output rows it reads stay in cache across the pixels.
      const int64_t R = g.Cout * g.kH * g.kW;
      at::parallel_for(0, nb * g.H, grain_for(g.W * R), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t iy = row % g.H, nl = row / g.H;
          const scalar_t* g_img = gp + (n0 + nl) * g.Cout * g.OH * g.OW;
          for (int64_t ix = 0; ix < g.W; ++ix) {
            scalar_t* __restrict__ c = cp + nl * st.ns + (iy * g.W + ix) * st.ps;
            for (int64_t oc = 0; oc < g.Cout; ++oc) {
              for (int64_t ky = 0; ky < g.kH; ++ky) {
                const int64_t oy = iy * g.sH + ky - g.offH;
                const bool row_inside = oy >= 0 && oy < g.OH;
                const scalar_t* g_row = row_inside ? g_img + (oc * g.OH + oy) * g.OW : g_img;
                for (int64_t kx = 0; kx < g.kW; ++kx) {
                  const int64_t ox = ix * g.sW + kx - g.offW;
                  c[(oc * g.kH + ky) * g.kW + kx] =
                      (row_inside && ox >= 0 && ox < g.OW) ? g_row[ox] : scalar_t(0);
                }
              }
            }
          }
        }
      });
    }
  });
}

// ------------------------------------------------------------------ large dense layers
//
// The dense algorithm writes its column buffer and reads it back once. When one
// image's columns stay in the core's cache (the Mask R-CNN head: 1024 x 196) and
// the batch is large (its output outgrows the last-level cache: 24+ RoIs),
// the fused shuffle beats oneDNN's deconvolution followed by a separate ReLU
// (measured: 100 RoIs 108 ms vs 307 ms on one thread). Otherwise (U-Net
// decoders on large maps, small batches) oneDNN's direct deconvolution is
// faster on CPU than any matrix product + shuffle (8 RoIs: 7 ms vs 10.7 ms), so
// those layers call it and fuse only the skip add and the ReLU, in place.
constexpr int64_t kDenseCacheColumns = int64_t(1) << 18;
constexpr int64_t kDenseSmallOutput = int64_t(1) << 22;  // 16 MB of float32: half the L3 here

// The torch output_padding of a dense window, or -1 when the window is not one
// torch's conv_transpose2d can express.
std::array<int64_t, 2> torch_output_padding(const Geometry& g) {
  const int64_t op_h = g.OH - (g.H * g.sH - 2 * g.offH), op_w = g.OW - (g.W * g.sW - 2 * g.offW);
  const bool ok = op_h >= 0 && op_h < g.sH && op_w >= 0 && op_w < g.sW;
  return {ok ? op_h : -1, ok ? op_w : -1};
}

bool dense_via_onednn(const Geometry& g) {
  const bool columns_spill = g.Cout * g.kH * g.kW * g.H * g.W > kDenseCacheColumns;
  const bool small_output = g.N * g.Cout * g.OH * g.OW <= kDenseSmallOutput;
  return (columns_spill || small_output) && torch_output_padding(g)[0] >= 0;
}

// out = act(out + skip window), in place, row by row.
void epilogue_cpu(at::Tensor& out, const std::optional<at::Tensor>& skip, const Geometry& g, Activation act) {
  if (!skip.has_value() && act == Activation::kNone) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv_transpose2d_epilogue_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor skip_c = skip.has_value() ? skip->contiguous() : at::Tensor();
    const scalar_t* sp = skip.has_value() ? skip_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.N * g.Cout * g.OH, grain_for(g.OW), [&](int64_t begin, int64_t end) {
      std::vector<T> row_buf(g.OW);
      T* __restrict__ v = row_buf.data();
      for (int64_t row = begin; row < end; ++row) {
        const int64_t oy = row % g.OH, noc = row / g.OH;
        scalar_t* __restrict__ o = op + row * g.OW;
        for (int64_t ox = 0; ox < g.OW; ++ox) v[ox] = T(o[ox]);
        if (sp) {
          const scalar_t* __restrict__ sk = sp + (noc * g.skipH + oy + g.skip_offH) * g.skipW + g.skip_offW;
          for (int64_t ox = 0; ox < g.OW; ++ox) v[ox] += T(sk[ox]);
        }
        generic::store_row(v, o, g.OW, act);
      }
    });
  });
}

at::Tensor dense_forward_onednn(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& skip,
                                const Geometry& g, Activation act) {
  const auto op = torch_output_padding(g);
  const int64_t stride[2] = {g.sH, g.sW}, pad[2] = {g.offH, g.offW}, one[2] = {1, 1};
  at::Tensor out = at::convolution(input.contiguous(), weight, bias, stride, pad, one, true, op, 1).contiguous();
  epilogue_cpu(out, skip, g, act);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_backward_onednn(const at::Tensor& grad, const at::Tensor& input,
                                                                     const at::Tensor& weight, const Geometry& g,
                                                                     std::array<bool, 3> mask) {
  const auto op = torch_output_padding(g);
  const int64_t stride[2] = {g.sH, g.sW}, pad[2] = {g.offH, g.offW}, one[2] = {1, 1};
  const int64_t bias_size[1] = {g.Cout};
  auto [gi, gw, gb] = at::convolution_backward(grad.contiguous(), input.contiguous(), weight, at::IntArrayRef(bias_size),
                                               stride, pad, one, true, op, 1, mask);
  const auto empty = [&] { return at::empty({0}, input.options()); };
  return {mask[0] ? gi.contiguous() : empty(), mask[1] ? gw.contiguous() : empty(), mask[2] ? gb : empty()};
}

at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& skip, at::IntArrayRef stride, at::IntArrayRef offset,
                       at::IntArrayRef output_size, at::IntArrayRef skip_offset, int64_t groups,
                       int64_t activation) {
  const Geometry g = make_geometry(input, weight, bias, skip, stride, offset, output_size, skip_offset, groups);
  const Activation act = parse_activation(activation);
  if (is_dense(g) && dense_via_onednn(g)) return dense_forward_onednn(input, weight, bias, skip, g, act);
  if (is_dense(g)) return dense_forward(input, weight, bias, skip, g, act, &shuffle_cpu, DenseGemm::kConv1x1);
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor s = skip.has_value() ? skip->contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.N, g.Cout, g.OH, g.OW}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_transpose2d_cpu", [&] {
    DETOPS_CT_CALL(gather_forward<scalar_t>, g, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                   b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                   s.defined() ? s.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), act);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_in, const at::Tensor& input,
                                                            const at::Tensor& weight, at::IntArrayRef stride,
                                                            at::IntArrayRef offset, int64_t groups,
                                                            std::array<bool, 3> mask) {
  const Geometry g = backward_geometry(grad_in, input, weight, stride, offset, groups);
  if (is_dense(g) && dense_via_onednn(g)) return dense_backward_onednn(grad_in, input, weight, g, mask);
  if (is_dense(g)) return dense_backward(grad_in, input, weight, g, mask, &unshuffle_cpu, DenseGemm::kConv1x1);
  const at::Tensor grad = grad_in.contiguous(), x = input.contiguous(), w = weight.contiguous();
  at::Tensor grad_input = mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
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
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace
}  // namespace conv_transpose2d
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  using namespace detops::conv_transpose2d;
  m.impl("conv_transpose2d", &forward_cpu);
  m.impl("conv_transpose2d_backward", &backward_cpu);
}
