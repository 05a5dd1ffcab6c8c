// Schemas of the transposed convolution (see conv_transpose2d.h), the argument
// checks and the device-independent driver of the dense (kernel == stride)
// algorithm.
//
//   conv_transpose2d(input [N, Cin, H, W], weight [Cin, Cout/groups, kH, kW], bias [Cout]?,
//                    skip [N, Cout, SH, SW]?, stride, offset, output_size, skip_offset, groups,
//                    activation) -> [N, Cout, OH, OW]
//   activation: 0 = none, 1 = ReLU (applied after bias and skip).
#include "conv_transpose2d/conv_transpose2d.h"

#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>

namespace detops {
namespace conv_transpose2d {

namespace {

void check_pair(at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK(v.size() == 2, "conv_transpose2d: ", name, " must have 2 values, got ", v.size());
  TORCH_CHECK(v[0] >= min_value && v[1] >= min_value, "conv_transpose2d: ", name, " must be >= ", min_value,
              ", got ", v);
}

}  // namespace

Activation parse_activation(int64_t activation) {
  TORCH_CHECK(activation == 0 || activation == 1, "conv_transpose2d: activation must be 0 (none) or 1 (relu), got ",
              activation);
  return static_cast<Activation>(activation);
}

Geometry make_geometry(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& skip, at::IntArrayRef stride, at::IntArrayRef offset,
                       at::IntArrayRef output_size, at::IntArrayRef skip_offset, int64_t groups) {
  TORCH_CHECK(input.dim() == 4, "conv_transpose2d: input must be [N, Cin, H, W], got ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "conv_transpose2d: weight must be [Cin, Cout / groups, kH, kW], got ",
              weight.sizes());
  TORCH_CHECK(is_kernel_float(input.scalar_type()),
              "conv_transpose2d: input must be float16, bfloat16, float32 or float64, got ", input.scalar_type());
  check_same_dtype_device(input, "input", weight, "weight");
  check_pair(stride, "stride", 1);
  check_pair(offset, "offset", 0);
  check_pair(output_size, "output_size", 0);
  check_pair(skip_offset, "skip_offset", 0);
  TORCH_CHECK(groups >= 1, "conv_transpose2d: groups must be >= 1, got ", groups);
  Geometry g{};
  g.N = input.size(0);
  g.Cin = input.size(1);
  g.H = input.size(2);
  g.W = input.size(3);
  TORCH_CHECK(weight.size(0) == g.Cin, "conv_transpose2d: weight.size(0) must equal input channels ", g.Cin,
              ", got ", weight.size(0));
  TORCH_CHECK(g.Cin % groups == 0, "conv_transpose2d: input channels ", g.Cin, " must be divisible by groups ",
              groups);
  TORCH_CHECK(weight.size(2) >= 1 && weight.size(3) >= 1, "conv_transpose2d: empty kernel ", weight.sizes());
  g.Cout = weight.size(1) * groups;
  g.kH = weight.size(2);
  g.kW = weight.size(3);
  g.sH = stride[0];
  g.sW = stride[1];
  g.offH = offset[0];
  g.offW = offset[1];
  g.OH = output_size[0];
  g.OW = output_size[1];
  g.groups = groups;
  if (bias.has_value()) {
    check_same_dtype_device(input, "input", *bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.Cout, "conv_transpose2d: bias must be [", g.Cout, "], got ",
                bias->sizes());
  }
  if (skip.has_value()) {
    check_same_dtype_device(input, "input", *skip, "skip");
    TORCH_CHECK(skip->dim() == 4 && skip->size(0) == g.N && skip->size(1) == g.Cout,
                "conv_transpose2d: skip must be [", g.N, ", ", g.Cout, ", H, W], got ", skip->sizes());
    g.skipH = skip->size(2);
    g.skipW = skip->size(3);
    g.skip_offH = skip_offset[0];
    g.skip_offW = skip_offset[1];
    TORCH_CHECK(g.skip_offH + g.OH <= g.skipH && g.skip_offW + g.OW <= g.skipW, "conv_transpose2d: skip ",
                skip->sizes(), " is too small for an output of ", g.OH, "x", g.OW, " at skip_offset ", skip_offset);
  }
  return g;
}

Geometry backward_geometry(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                           at::IntArrayRef stride, at::IntArrayRef offset, int64_t groups) {
  TORCH_CHECK(grad.dim() == 4, "conv_transpose2d_backward: grad must be 4-D, got ", grad.sizes());
  check_same_dtype_device(grad, "grad", input, "input");
  const int64_t out_size[2] = {grad.size(2), grad.size(3)};
  const int64_t zero[2] = {0, 0};
  const Geometry g = make_geometry(input, weight, std::nullopt, std::nullopt, stride, offset, out_size, zero, groups);
  TORCH_CHECK(grad.size(0) == g.N && grad.size(1) == g.Cout,
              "conv_transpose2d_backward: grad must be [", g.N, ", ", g.Cout, ", OH, OW], got ", grad.sizes());
  return g;
}

namespace {

// Images per matrix product: keeps the column buffer near 8M elements.
int64_t dense_chunk(const Geometry& g) {
  const int64_t per_image = std::max<int64_t>(1, g.Cout * g.kH * g.kW * g.H * g.W);
  return std::clamp<int64_t>((int64_t(8) << 20) / per_image, 1, std::max<int64_t>(g.N, 1));
}

// Input rows per 1x1 convolution when one image's columns exceed this many
// elements: each product's output then stays in cache for the shuffle that
// reads it (U-Net 256 -> 128 on 64x64, 2 cores: four 16-row products take
// 2.6 ms, one whole-image product 3.4 ms before its shuffle even starts).
constexpr int64_t kRowBlockColumns = int64_t(1) << 19;

int64_t rows_per_block(const Geometry& g) {
  const int64_t per_row = std::max<int64_t>(1, g.Cout * g.kH * g.kW * g.W);
  return per_row * g.H > kRowBlockColumns ? std::max<int64_t>(1, kRowBlockColumns / per_row) : g.H;
}

// The geometry of input rows [iy_begin, iy_end) alone, written into output
// rows [out_row0, out_row0 + OH) of the whole: offH is re-based so that the
// block's first output row reads its first tap, and the last block keeps the
// output_padding rows past the input.
struct RowBlock {
  Geometry g;
  int64_t out_row0;
};

RowBlock row_block(const Geometry& g, int64_t iy_begin, int64_t iy_end) {
  const int64_t oy_begin = std::clamp<int64_t>(iy_begin * g.sH - g.offH, 0, g.OH);
  const int64_t oy_end = iy_end == g.H ? g.OH : std::clamp<int64_t>(iy_end * g.sH - g.offH, oy_begin, g.OH);
  Geometry b = g;
  b.H = iy_end - iy_begin;
  b.offH = oy_begin + g.offH - iy_begin * g.sH;
  b.OH = oy_end - oy_begin;
  b.skip_offH = g.skip_offH + oy_begin;
  return {b, oy_begin};
}

}  // namespace

namespace {

// The 1x1 convolution form of the dense matrix product: weight [Cin, R] as [R, Cin, 1, 1].
at::Tensor as_1x1(const at::Tensor& w2d) { return w2d.t().contiguous().view({w2d.size(1), w2d.size(0), 1, 1}); }

// On CPUs without native bfloat16/float16 convolutions (no AVX512-BF16: the
// project's 2-core AMD EPYC), torch runs a reduced-precision convolution on its
// reference path, 5-10x slower than the float32 one; the product is then
// computed in float32 and rounded once. bench/conv_transpose2d_crossover.py
// times it (U-Net 256 -> 128, bf16 NCHW: this path against oneDNN and torch).
at::Tensor conv1x1(const at::Tensor& x, const at::Tensor& w) {
  const int64_t one[2] = {1, 1}, zero[2] = {0, 0};
  if (x.is_cpu() && at::isReducedFloatingType(x.scalar_type())) {
    return at::convolution(x.to(at::kFloat), w.to(at::kFloat), std::nullopt, one, zero, one, false, zero, 1)
        .to(x.scalar_type());
  }
  return at::convolution(x, w, std::nullopt, one, zero, one, false, zero, 1);
}

void relayout_into(RelayoutFn relayout, const at::Tensor& src, const at::Tensor& dst) {
  if (relayout) {
    relayout(src, dst);
  } else {
    dst.copy_(src);
  }
}

// x contiguous in the given layout (itself when it already is).
at::Tensor in_layout(const at::Tensor& x, at::MemoryFormat format, RelayoutFn relayout) {
  if (x.is_contiguous(format)) return x;
  at::Tensor out = at::empty(x.sizes(), x.options(), format);
  const bool dense = x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast);
  relayout_into(relayout, dense ? x : x.contiguous(), out);
  return out;
}

}  // namespace

at::Tensor dense_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& skip, const Geometry& g, Activation act,
                         ShuffleFn shuffle, DenseGemm gemm, RelayoutFn relayout) {
  const bool channels_last = is_channels_last(input);
  at::Tensor out = at::empty({g.N, g.Cout, g.OH, g.OW}, input.options(), format_of(channels_last));
  if (out.numel() == 0) return out;
  const int64_t R = g.Cout * g.kH * g.kW, HW = g.H * g.W;
  const at::Tensor w2d = weight.contiguous().view({g.Cin, R});
  const at::Tensor x = gemm == DenseGemm::kConv1x1 ? in_layout(input, at::MemoryFormat::ChannelsLast, relayout)
                                                   : input.contiguous(format_of(channels_last));
  const at::Tensor w1x1 = gemm == DenseGemm::kConv1x1 ? as_1x1(w2d) : at::Tensor();
  const int64_t block_rows = gemm == DenseGemm::kConv1x1 ? rows_per_block(g) : g.H;
  if (block_rows < g.H) {
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t iy = 0; iy < g.H; iy += block_rows) {
        const RowBlock b = row_block(g, iy, std::min(g.H, iy + block_rows));
        if (b.g.OH == 0) continue;  // rows cropped away
        const at::Tensor y = conv1x1(x.narrow(0, n, 1).narrow(2, iy, b.g.H), w1x1);
        TORCH_INTERNAL_ASSERT(y.stride(1) == 1 && y.stride(2) == b.g.W * y.stride(3));
        at::Tensor rows = out.narrow(2, b.out_row0, b.g.OH);
        shuffle(y, {1, y.stride(0), y.stride(3)}, n, 1, bias, skip, rows, b.g, act);
      }
    }
    return out;
  }
  const int64_t chunk = dense_chunk(g);
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t nb = std::min(chunk, g.N - n0);
    const at::Tensor xs = x.narrow(0, n0, nb);
    if (gemm == DenseGemm::kConv1x1) {
      // [nb, R, H, W], channels-last: oneDNN's native layout, so that it does not
      // reorder its (large) output back to NCHW before the shuffle reads it.
      at::Tensor y = conv1x1(xs, w1x1);
      if (!(y.stride(2) == g.W * y.stride(3))) y = y.contiguous();
      shuffle(y, {y.stride(1), y.stride(0), y.stride(3)}, n0, nb, bias, skip, out, g, act);
    } else if (channels_last) {
      // [nb * HW, Cin] @ [Cin, R]: rows are pixels, columns the (oc, ky, kx) taps.
      const at::Tensor y = at::matmul(xs.permute({0, 2, 3, 1}).reshape({nb * HW, g.Cin}), w2d);
      shuffle(y, {1, HW * R, R}, n0, nb, bias, skip, out, g, act);
    } else {
      // [R, Cin] @ [nb, Cin, HW] -> [nb, R, HW]. at::matmul picks a slower route
      // for a 2-D @ 3-D product whose operand requires a gradient (a weight in
      // training always does; 0.75 vs 0.53 ms at U-Net 16x16); this runs below
      // autograd, so the detached operands take the plain route.
      const at::Tensor y = at::matmul(w2d.t().detach(), xs.view({nb, g.Cin, HW}).detach());
      shuffle(y, {HW, R * HW, 1}, n0, nb, bias, skip, out, g, act);
    }
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_backward(const at::Tensor& grad_in, const at::Tensor& input,
                                                              const at::Tensor& weight, const Geometry& g,
                                                              std::array<bool, 3> output_mask,
                                                              UnshuffleFn unshuffle, DenseGemm gemm,
                                                              RelayoutFn relayout) {
  const bool conv = gemm == DenseGemm::kConv1x1;
  const at::Tensor grad = in_layout(grad_in, at::MemoryFormat::Contiguous, relayout);
  // The 1x1 convolutions read x channels-last; the matrix products NCHW.
  const at::Tensor x = in_layout(input, conv ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous,
                                 relayout);
  const int64_t R = g.Cout * g.kH * g.kW, HW = g.H * g.W;
  const at::Tensor w2d = weight.contiguous().view({g.Cin, R});
  // grad_input keeps the input's layout (torch's convention); the matrix-product
  // form writes NCHW rows and converts once at the end.
  const at::MemoryFormat input_format = format_of(is_channels_last(input));
  const at::MemoryFormat grad_input_format = conv ? input_format : at::MemoryFormat::Contiguous;
  at::Tensor grad_input =
      output_mask[0] ? at::empty(x.sizes(), x.options(), grad_input_format) : at::empty({0}, x.options());
  at::Tensor grad_weight = output_mask[1] ? at::zeros_like(weight, at::MemoryFormat::Contiguous)
                                          : at::empty({0}, x.options());
  at::Tensor grad_bias = output_mask[2] ? grad.sum({0, 2, 3}) : at::empty({0}, x.options());
  if ((!output_mask[0] && !output_mask[1]) || x.numel() == 0) {
    if (output_mask[0]) grad_input.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  const int64_t chunk = dense_chunk(g);
  at::Tensor gw2d = output_mask[1] ? grad_weight.view({g.Cin, R}) : at::Tensor();
  const at::Tensor w_in = conv ? w2d.view({g.Cin, R, 1, 1}) : at::Tensor();  // cols -> grad_input
  const at::Tensor w1x1 = conv ? as_1x1(w2d) : at::Tensor();
  const auto weight_grad_1x1 = [&](const at::Tensor& cols, const at::Tensor& xs) {
    const int64_t one[2] = {1, 1}, zero[2] = {0, 0};
    const auto grads = at::convolution_backward(cols, xs, w1x1, std::nullopt, one, zero, one, false, zero, 1,
                                                {false, true, false});
    gw2d.add_(std::get<1>(grads).view({R, g.Cin}).t());
  };
  const int64_t block_rows = conv ? rows_per_block(g) : g.H;
  if (block_rows < g.H) {
    // As in the forward: blocks of input rows, so that each block's columns are
    // written, read by both 1x1 products, and dropped while still in cache.
    // The 1x1 products write channels-last bands; an NCHW grad_input takes them in one copy at the end.
    const at::MemoryFormat cl = at::MemoryFormat::ChannelsLast;
    const bool direct = !output_mask[0] || grad_input.is_contiguous(cl);
    at::Tensor gi = direct ? grad_input : at::empty(x.sizes(), x.options(), cl);
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t iy = 0; iy < g.H; iy += block_rows) {
        const RowBlock b = row_block(g, iy, std::min(g.H, iy + block_rows));
        at::Tensor cols = at::empty({1, R, b.g.H, g.W}, grad.options().memory_format(cl));
        unshuffle(grad.narrow(2, b.out_row0, b.g.OH), n, 1, cols, {1, cols.stride(0), R}, b.g);
        const at::Tensor xs = x.narrow(0, n, 1).narrow(2, iy, b.g.H);
        if (output_mask[0]) gi.narrow(0, n, 1).narrow(2, iy, b.g.H).copy_(conv1x1(cols, w_in));
        if (output_mask[1]) weight_grad_1x1(cols, xs);
      }
    }
    if (!direct) relayout_into(relayout, gi, grad_input);
    return {grad_input, grad_weight, grad_bias};
  }
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t nb = std::min(chunk, g.N - n0);
    const at::Tensor xs = x.narrow(0, n0, nb);
    if (conv) {
      // The gradient columns as a channels-last image batch [nb, R, H, W]; both
      // products are 1x1 convolutions.
      at::Tensor cols = at::empty({nb, R, g.H, g.W}, grad.options().memory_format(at::MemoryFormat::ChannelsLast));
      unshuffle(grad, n0, nb, cols, {1, HW * R, R}, g);
      if (output_mask[0]) relayout_into(relayout, conv1x1(cols, w_in), grad_input.narrow(0, n0, nb));
      if (output_mask[1]) weight_grad_1x1(cols, xs);
      continue;
    }
    // The gradient columns [R, nb * HW]: one matrix product per input for the whole chunk.
    at::Tensor cols = at::empty({R, nb * HW}, grad.options());
    unshuffle(grad, n0, nb, cols, {nb * HW, HW, 1}, g);
    if (output_mask[0]) {
      // [Cin, R] @ [R, nb * HW] -> [Cin, nb, HW] -> grad_input[n0 : n0 + nb]
      const at::Tensor gi = at::matmul(w2d, cols).view({g.Cin, nb, HW});
      grad_input.narrow(0, n0, nb).view({nb, g.Cin, HW}).copy_(gi.transpose(0, 1));
    }
    if (output_mask[1]) {
      gw2d.addmm_(xs.view({nb, g.Cin, HW}).transpose(0, 1).reshape({g.Cin, nb * HW}), cols.t());
    }
  }
  return {output_mask[0] ? grad_input.contiguous(input_format) : grad_input, grad_weight, grad_bias};
}

}  // namespace conv_transpose2d
}  // namespace detops

TORCH_LIBRARY_FRAGMENT(detops, m) {
  m.def(
      "conv_transpose2d(Tensor input, Tensor weight, Tensor? bias, Tensor? skip, int[2] stride, int[2] offset, "
      "SymInt[2] output_size, int[2] skip_offset, int groups, int activation) -> Tensor");
  m.def(
      "conv_transpose2d_backward(Tensor grad, Tensor input, Tensor weight, int[2] stride, int[2] offset, "
      "int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
