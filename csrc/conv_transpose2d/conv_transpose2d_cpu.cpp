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

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Per input column: the taps [lo, hi) that land in the output window, and
// where tap 0 would land.
struct ColumnTaps {
  std::vector<Span> span;
  std::vector<int64_t> base;
  ColumnTaps(const Geometry& g) : span(g.W), base(g.W) {
    for (int64_t ix = 0; ix < g.W; ++ix) {
      span[ix] = scatter_taps(ix, g.offW, g.sW, g.kW, g.OW);
      base[ix] = ix * g.sW - g.offW;
    }
  }
};

template <typename scalar_t>
void gather_forward(const Geometry& g, const scalar_t* __restrict__ in, const scalar_t* __restrict__ w,
                    const scalar_t* bias, const scalar_t* skip, scalar_t* __restrict__ out, Activation act) {
  using T = at::opmath_type<scalar_t>;
  const ColumnTaps cols(g);
  const int64_t cin_g = g.cin_g(), cout_g = g.cout_g();
  const int64_t rows = g.N * g.Cout * g.OH;
  const int64_t work = cin_g * ceil_div(g.kH, g.sH) * g.W * g.kW + g.OW;
  at::parallel_for(0, rows, grain_for(work), [&](int64_t begin, int64_t end) {
    std::vector<T> acc_buf(g.OW);
    std::vector<T> w_buf(g.kW);
    T* __restrict__ acc = acc_buf.data();
    T* __restrict__ wr = w_buf.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t oy = row % g.OH;
      const int64_t noc = row / g.OH;
      const int64_t oc = noc % g.Cout;
      const int64_t n = noc / g.Cout;
      const int64_t grp = oc / cout_g, ocl = oc % cout_g;
      const T b0 = bias ? T(bias[oc]) : T(0);
      std::fill(acc, acc + g.OW, b0);
      const TapRange ty = gather_taps(oy, g.offH, g.sH, g.kH, g.H);
      for (int64_t icl = 0; icl < cin_g; ++icl) {
        const int64_t ic = grp * cin_g + icl;
        for (int64_t j = 0; j < ty.count; ++j) {
          const int64_t ky = ty.first_tap + j * g.sH, iy = ty.first_input - j;
          const scalar_t* in_row = in + ((n * g.Cin + ic) * g.H + iy) * g.W;
          const scalar_t* w_row = w + ((ic * cout_g + ocl) * g.kH + ky) * g.kW;
          for (int64_t kx = 0; kx < g.kW; ++kx) wr[kx] = T(w_row[kx]);
          for (int64_t ix = 0; ix < g.W; ++ix) {
            const Span s = cols.span[ix];
            const T v = T(in_row[ix]);
            T* __restrict__ a = acc + cols.base[ix];
            for (int64_t kx = s.lo; kx < s.hi; ++kx) a[kx] += v * wr[kx];
          }
        }
      }
      scalar_t* o = out + row * g.OW;
      if (skip) {
        const scalar_t* sk = skip + ((n * g.Cout + oc) * g.skipH + oy + g.skip_offH) * g.skipW + g.skip_offW;
        for (int64_t ox = 0; ox < g.OW; ++ox) o[ox] = scalar_t(activate(act, acc[ox] + T(sk[ox])));
      } else {
        for (int64_t ox = 0; ox < g.OW; ++ox) o[ox] = scalar_t(activate(act, acc[ox]));
      }
    }
  });
}

// grad_input[n, ic, iy, ix] = sum over the outputs input (iy, ix) reaches of grad * weight.
template <typename scalar_t>
void gather_backward_input(const Geometry& g, const scalar_t* __restrict__ grad, const scalar_t* __restrict__ w,
                           scalar_t* __restrict__ grad_in) {
  using T = at::opmath_type<scalar_t>;
  const ColumnTaps cols(g);
  const int64_t cin_g = g.cin_g(), cout_g = g.cout_g();
  const int64_t rows = g.N * g.Cin * g.H;
  const int64_t work = cout_g * std::min(g.kH, g.OH) * g.W * std::min(g.kW, g.OW) + g.W;
  at::parallel_for(0, rows, grain_for(work), [&](int64_t begin, int64_t end) {
    std::vector<T> acc_buf(g.W);
    std::vector<T> w_buf(g.kW);
    std::vector<T> g_buf(g.OW);
    T* __restrict__ acc = acc_buf.data();
    T* __restrict__ wr = w_buf.data();
    T* __restrict__ gr = g_buf.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t iy = row % g.H;
      const int64_t nic = row / g.H;
      const int64_t ic = nic % g.Cin;
      const int64_t n = nic / g.Cin;
      const int64_t grp = ic / cin_g;
      std::fill(acc, acc + g.W, T(0));
      const Span sy = scatter_taps(iy, g.offH, g.sH, g.kH, g.OH);
      for (int64_t ocl = 0; ocl < cout_g; ++ocl) {
        const int64_t oc = grp * cout_g + ocl;
        for (int64_t ky = sy.lo; ky < sy.hi; ++ky) {
          const int64_t oy = iy * g.sH - g.offH + ky;
          const scalar_t* g_row = grad + ((n * g.Cout + oc) * g.OH + oy) * g.OW;
          const scalar_t* w_row = w + ((ic * cout_g + ocl) * g.kH + ky) * g.kW;
          for (int64_t kx = 0; kx < g.kW; ++kx) wr[kx] = T(w_row[kx]);
          for (int64_t ox = 0; ox < g.OW; ++ox) gr[ox] = T(g_row[ox]);
          for (int64_t ix = 0; ix < g.W; ++ix) {
            const Span s = cols.span[ix];
            const T* __restrict__ gp = gr + cols.base[ix];
            T sum = T(0);
#pragma omp simd reduction(+ : sum)
            for (int64_t kx = s.lo; kx < s.hi; ++kx) sum += gp[kx] * wr[kx];
            acc[ix] += sum;
          }
        }
      }
      scalar_t* o = grad_in + row * g.W;
      for (int64_t ix = 0; ix < g.W; ++ix) o[ix] = scalar_t(acc[ix]);
    }
  });
}

// grad_weight[ic, ocl, ky, kx] = sum over images and inputs of input * grad at the output the tap reaches.
template <typename scalar_t>
void gather_backward_weight(const Geometry& g, const scalar_t* __restrict__ grad, const scalar_t* __restrict__ in,
                            scalar_t* __restrict__ grad_w) {
  using T = at::opmath_type<scalar_t>;
  const ColumnTaps cols(g);
  const int64_t cin_g = g.cin_g(), cout_g = g.cout_g();
  const int64_t rows = g.Cin * cout_g * g.kH;
  const int64_t work = g.N * ceil_div(g.OH, g.sH) * g.W * g.kW + g.kW;
  at::parallel_for(0, rows, grain_for(work), [&](int64_t begin, int64_t end) {
    std::vector<T> acc_buf(g.kW);
    std::vector<T> g_buf(g.OW);
    T* __restrict__ acc = acc_buf.data();
    T* __restrict__ gr = g_buf.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t ky = row % g.kH;
      const int64_t icl_o = row / g.kH;
      const int64_t ocl = icl_o % cout_g;
      const int64_t ic = icl_o / cout_g;
      const int64_t oc = (ic / cin_g) * cout_g + ocl;
      std::fill(acc, acc + g.kW, T(0));
      const Span iys = inputs_of_tap(ky, g.offH, g.sH, g.H, g.OH);
      for (int64_t n = 0; n < g.N; ++n) {
        for (int64_t iy = iys.lo; iy < iys.hi; ++iy) {
          const int64_t oy = iy * g.sH - g.offH + ky;
          const scalar_t* in_row = in + ((n * g.Cin + ic) * g.H + iy) * g.W;
          const scalar_t* g_row = grad + ((n * g.Cout + oc) * g.OH + oy) * g.OW;
          for (int64_t ox = 0; ox < g.OW; ++ox) gr[ox] = T(g_row[ox]);
          for (int64_t ix = 0; ix < g.W; ++ix) {
            const Span s = cols.span[ix];
            const T v = T(in_row[ix]);
            const T* __restrict__ gp = gr + cols.base[ix];
            for (int64_t kx = s.lo; kx < s.hi; ++kx) acc[kx] += v * gp[kx];
          }
        }
      }
      scalar_t* o = grad_w + row * g.kW;
      for (int64_t kx = 0; kx < g.kW; ++kx) o[kx] = scalar_t(acc[kx]);
    }
  });
}

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
    // Per output column: the offset of its (tap, input) inside a row of y, or -1.
    std::vector<int64_t> col_offset(g.OW);
    for (int64_t ox = 0; ox < g.OW; ++ox) {
      const SingleTap t = single_tap(ox, g.offW, g.sW, g.W);
      col_offset[ox] = t.input < 0 ? -1 : t.tap * st.rs + t.input * st.ps;
    }
    const int64_t rows = nb * g.Cout * g.OH;
    at::parallel_for(0, rows, grain_for(g.OW), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t oy = row % g.OH;
        const int64_t noc = row / g.OH;
        const int64_t oc = noc % g.Cout;
        const int64_t nl = noc / g.Cout;
        const int64_t n = n0 + nl;
        const T b0 = bp ? T(bp[oc]) : T(0);
        const SingleTap ty = single_tap(oy, g.offH, g.sH, g.H);
        scalar_t* o = op + ((n * g.Cout + oc) * g.OH + oy) * g.OW;
        const scalar_t* sk =
            sp ? sp + ((n * g.Cout + oc) * g.skipH + oy + g.skip_offH) * g.skipW + g.skip_offW : nullptr;
        const scalar_t* yrow =
            ty.input < 0 ? nullptr : yp + ((oc * g.kH + ty.tap) * g.kW) * st.rs + nl * st.ns + ty.input * g.W * st.ps;
        for (int64_t ox = 0; ox < g.OW; ++ox) {
          T v = b0;
          if (yrow && col_offset[ox] >= 0) v += T(yrow[col_offset[ox]]);
          if (sk) v += T(sk[ox]);
          o[ox] = scalar_t(activate(act, v));
        }
      }
    });
  });
}

void unshuffle_cpu(const at::Tensor& grad, int64_t n0, int64_t nb, at::Tensor& cols, DenseStrides st,
                   const Geometry& g) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "conv_transpose2d_unshuffle_cpu", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* cp = cols.mutable_data_ptr<scalar_t>();
    // rows (image, oc, ky, iy); each writes kW * W entries.
    const int64_t rows = nb * g.Cout * g.kH * g.H;
    at::parallel_for(0, rows, grain_for(g.kW * g.W), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t iy = row % g.H;
        int64_t rest = row / g.H;
        const int64_t ky = rest % g.kH;
        rest /= g.kH;
        const int64_t oc = rest % g.Cout;
        const int64_t nl = rest / g.Cout;
        const int64_t oy = iy * g.sH + ky - g.offH;
        const bool row_inside = oy >= 0 && oy < g.OH;
        const scalar_t* g_row = row_inside ? gp + (((n0 + nl) * g.Cout + oc) * g.OH + oy) * g.OW : nullptr;
        for (int64_t kx = 0; kx < g.kW; ++kx) {
          scalar_t* c = cp + ((oc * g.kH + ky) * g.kW + kx) * st.rs + nl * st.ns + iy * g.W * st.ps;
          for (int64_t ix = 0; ix < g.W; ++ix) {
            const int64_t ox = ix * g.sW + kx - g.offW;
            c[ix * st.ps] = (row_inside && ox >= 0 && ox < g.OW) ? g_row[ox] : scalar_t(0);
          }
        }
      }
    });
  });
}

at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& skip, at::IntArrayRef stride, at::IntArrayRef offset,
                       at::IntArrayRef output_size, at::IntArrayRef skip_offset, int64_t groups,
                       int64_t activation) {
  const Geometry g = make_geometry(input, weight, bias, skip, stride, offset, output_size, skip_offset, groups);
  const Activation act = parse_activation(activation);
  if (is_dense(g)) return dense_forward(input, weight, bias, skip, g, act, &shuffle_cpu);
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor s = skip.has_value() ? skip->contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.N, g.Cout, g.OH, g.OW}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_transpose2d_cpu", [&] {
    gather_forward<scalar_t>(g, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                             b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                             s.defined() ? s.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
                             act);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_in, const at::Tensor& input,
                                                            const at::Tensor& weight, at::IntArrayRef stride,
                                                            at::IntArrayRef offset, int64_t groups,
                                                            std::array<bool, 3> mask) {
  TORCH_CHECK(grad_in.dim() == 4, "conv_transpose2d_backward: grad must be 4-D, got ", grad_in.sizes());
  check_same_dtype_device(grad_in, "grad", input, "input");
  const int64_t out_size[2] = {grad_in.size(2), grad_in.size(3)};
  const int64_t zero[2] = {0, 0};
  const Geometry g = make_geometry(input, weight, std::nullopt, std::nullopt, stride, offset, out_size, zero, groups);
  check_grad(grad_in, g);
  if (is_dense(g)) return dense_backward(grad_in, input, weight, g, mask, &unshuffle_cpu);
  const at::Tensor grad = grad_in.contiguous(), x = input.contiguous(), w = weight.contiguous();
  at::Tensor grad_input = mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor grad_weight = mask[1] ? at::empty_like(w) : at::empty({0}, x.options());
  at::Tensor grad_bias = mask[2] ? grad.sum({0, 2, 3}) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_transpose2d_backward_cpu", [&] {
    if (mask[0] && x.numel() > 0) {
      gather_backward_input<scalar_t>(g, grad.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                      grad_input.mutable_data_ptr<scalar_t>());
    }
    if (mask[1] && w.numel() > 0) {
      gather_backward_weight<scalar_t>(g, grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                       grad_weight.mutable_data_ptr<scalar_t>());
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
