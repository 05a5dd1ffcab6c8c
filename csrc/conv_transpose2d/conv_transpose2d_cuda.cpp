// CUDA registrations of the transposed convolution: checks, allocation, the
// stream, and the launch. The dense algorithm's matrix products go through
// ATen (cuBLAS); its pixel shuffles are the kernels in conv_transpose2d_cuda.cu.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "conv_transpose2d/conv_transpose2d.h"
#include "conv_transpose2d/conv_transpose2d_cuda.h"

namespace detops {
namespace conv_transpose2d {
namespace {

const void* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr() : nullptr;
}

// Absent stays absent as an undefined tensor (null pointer): a local
// std::optional<at::Tensor> here made GCC warn, falsely, that its destructor
// may read an uninitialised pointer.
at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

void shuffle_cuda(const at::Tensor& y, DenseStrides st, int64_t n0, int64_t nb, const std::optional<at::Tensor>& bias,
                  const std::optional<at::Tensor>& skip, at::Tensor& out, const Geometry& g, Activation act) {
  const at::Tensor bias_c = contiguous_or_undefined(bias);
  const Strides4 skip_st = skip.has_value() ? strides_of(*skip) : Strides4{0, 0, 0, 0};
  DETOPS_CUDA_CHECK(dense_shuffle_cuda(to_dtype(out.scalar_type()), g, y.const_data_ptr(), st, n0, nb,
                                       ptr_or_null(bias_c), ptr_or_null(skip), skip_st, out.mutable_data_ptr(),
                                       strides_of(out), is_channels_last(out), act, current_stream(out)));
}

void unshuffle_cuda(const at::Tensor& grad, int64_t n0, int64_t nb, at::Tensor& cols, DenseStrides st,
                    const Geometry& g) {
  DETOPS_CUDA_CHECK(dense_unshuffle_cuda(to_dtype(grad.scalar_type()), g, grad.const_data_ptr(), strides_of(grad), n0,
                                         nb, cols.mutable_data_ptr(), st, current_stream(grad)));
}

at::Tensor forward_op(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& skip, at::IntArrayRef stride, at::IntArrayRef offset,
                      at::IntArrayRef output_size, at::IntArrayRef skip_offset, int64_t groups, int64_t activation) {
  const Geometry g = make_geometry(input, weight, bias, skip, stride, offset, output_size, skip_offset, groups);
  const Activation act = parse_activation(activation);
  const c10::cuda::CUDAGuard guard(input.device());
  if (is_dense(g)) return dense_forward(input, weight, bias, skip, g, act, &shuffle_cuda, DenseGemm::kMatmul);
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = contiguous_or_undefined(bias), s = contiguous_or_undefined(skip);
  at::Tensor out = at::empty({g.N, g.Cout, g.OH, g.OW}, x.options());
  DETOPS_CUDA_CHECK(gather_forward_cuda(to_dtype(x.scalar_type()), g, x.const_data_ptr(), w.const_data_ptr(),
                                        ptr_or_null(b), ptr_or_null(s), out.mutable_data_ptr(), act,
                                        current_stream(x)));
  return in_format_of(out, input);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(const at::Tensor& grad_in, const at::Tensor& input,
                                                           const at::Tensor& weight, at::IntArrayRef stride,
                                                           at::IntArrayRef offset, int64_t groups,
                                                           std::array<bool, 3> mask) {
  const Geometry g = backward_geometry(grad_in, input, weight, stride, offset, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  if (is_dense(g)) return dense_backward(grad_in, input, weight, g, mask, &unshuffle_cuda, DenseGemm::kMatmul);
  const at::Tensor grad = grad_in.contiguous(), x = input.contiguous(), w = weight.contiguous();
  at::Tensor grad_input = mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor grad_weight = mask[1] ? at::empty_like(w) : at::empty({0}, x.options());
  at::Tensor grad_bias = mask[2] ? grad.sum({0, 2, 3}) : at::empty({0}, x.options());
  const DType dtype = to_dtype(x.scalar_type());
  if (mask[0]) {
    DETOPS_CUDA_CHECK(gather_backward_input_cuda(dtype, g, grad.const_data_ptr(), w.const_data_ptr(),
                                                 grad_input.mutable_data_ptr(), current_stream(x)));
  }
  if (mask[1]) {
    DETOPS_CUDA_CHECK(gather_backward_weight_cuda(dtype, g, grad.const_data_ptr(), x.const_data_ptr(),
                                                  grad_weight.mutable_data_ptr(), current_stream(x)));
  }
  return {mask[0] ? in_format_of(grad_input, input) : grad_input, grad_weight, grad_bias};
}

}  // namespace
}  // namespace conv_transpose2d
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CUDA, m) {
  using namespace detops::conv_transpose2d;
  m.impl("conv_transpose2d", &forward_op);
  m.impl("conv_transpose2d_backward", &backward_op);
}
