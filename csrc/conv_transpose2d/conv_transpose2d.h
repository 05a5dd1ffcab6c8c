// The transposed convolution's entry points, shared by the schema file and the
// CPU and CUDA registrations.
//
// One operator computes
//   out = act(conv_transpose(input, weight, stride, groups)[window] + bias + skip[skip window])
// where the window [offset, offset + output_size) of the uncropped transposed
// convolution is torch's padding/output_padding, or an FCN crop. Two
// algorithms serve it:
//   * gather (any groups, any kernel): each output pixel reads only the taps
//     that reach it; made for depthwise/grouped large kernels (FCN bilinear);
//   * dense (groups == 1, kernel == stride): one matrix product then a fused
//     pixel shuffle with bias, skip and activation (Mask R-CNN, U-Net).
// The backward op returns (grad_input, grad_weight, grad_bias); an entry not
// asked for by output_mask is an empty tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "common/checks.h"
#include "common/memory_format.h"
#include "conv_transpose2d/conv_transpose2d_math.h"

namespace detops {
namespace conv_transpose2d {

// Checks every argument of the forward op and returns the sizes.
Geometry make_geometry(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& skip, at::IntArrayRef stride, at::IntArrayRef offset,
                       at::IntArrayRef output_size, at::IntArrayRef skip_offset, int64_t groups);

Activation parse_activation(int64_t activation);

// Checks the backward op's arguments and returns the sizes of the forward it inverts.
Geometry backward_geometry(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                           at::IntArrayRef stride, at::IntArrayRef offset, int64_t groups);

// Torch's convention: a channels-last input gives a channels-last output.
inline at::Tensor in_format_of(const at::Tensor& out, const at::Tensor& input) {
  return out.contiguous(format_of(is_channels_last(input)));
}

// Whether the dense algorithm applies (groups == 1 and kernel == stride).
inline bool is_dense(const Geometry& g) { return g.groups == 1 && g.kH == g.sH && g.kW == g.sW; }

// The dense algorithm's device-specific halves (DenseStrides: conv_transpose2d_math.h).
// out[n0 + n] = act(shuffle(y[n]) + bias + skip) for n in [0, nb). out may be a
// strided view (a block of output rows): shuffles address it through its strides.
using ShuffleFn = void (*)(const at::Tensor& y, DenseStrides st, int64_t n0, int64_t nb,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& skip,
                           at::Tensor& out, const Geometry& g, Activation act);
// g_cols = the inverse shuffle of grad[n0 : n0 + nb] (zeros where a tap falls outside the
// window); grad may be a strided view (a band of output rows).
using UnshuffleFn = void (*)(const at::Tensor& grad, int64_t n0, int64_t nb, at::Tensor& g_cols, DenseStrides st,
                             const Geometry& g);

// How the dense algorithm's matrix products run: as 1x1 convolutions (CPU:
// oneDNN, which uses AVX-512 where MKL's GEMM may not) or as at::matmul
// (CUDA: cuBLAS, which keeps float32 exact where cuDNN may use TF32).
enum class DenseGemm { kConv1x1, kMatmul };

// dst.copy_(src) for same-sized [N, C, H, W] tensors, each NCHW or channels-last
// contiguous: the CPU passes a cache-blocked transpose (ATen's strided copy
// misses the cache on every element there); nullptr means copy_.
using RelayoutFn = void (*)(const at::Tensor& src, const at::Tensor& dst);

// Device-independent drivers of the dense algorithm (matrix products through ATen).
at::Tensor dense_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& skip, const Geometry& g, Activation act,
                         ShuffleFn shuffle, DenseGemm gemm, RelayoutFn relayout = nullptr);
std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_backward(const at::Tensor& grad, const at::Tensor& input,
                                                              const at::Tensor& weight, const Geometry& g,
                                                              std::array<bool, 3> output_mask,
                                                              UnshuffleFn unshuffle, DenseGemm gemm,
                                                              RelayoutFn relayout = nullptr);

}  // namespace conv_transpose2d
}  // namespace detops
