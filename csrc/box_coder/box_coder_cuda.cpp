// CUDA registrations of box encoding/decoding: checks, allocation and the launch.
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

#include "box_coder/box_coder.h"
#include "box_coder/box_coder_cuda.h"
#include "common/cuda_glue.h"

namespace detops {
namespace box_coder {
namespace {

at::Tensor decode_op(const at::Tensor& rel_codes_in, const at::Tensor& boxes_in, at::ArrayRef<double> weights,
                     double bbox_xform_clip) {
  check_decode_args(rel_codes_in, boxes_in);
  const CoderParams<double> params = make_params(weights, bbox_xform_clip, "box_decode");
  const c10::cuda::CUDAGuard guard(rel_codes_in.device());
  const at::Tensor rel_codes = rel_codes_in.contiguous(), boxes = boxes_in.contiguous();
  at::Tensor out = at::empty_like(rel_codes);
  DETOPS_CUDA_CHECK(decode_forward_cuda(to_dtype(rel_codes.scalar_type()), params, rel_codes.const_data_ptr(),
                                        boxes.const_data_ptr(), out.mutable_data_ptr(), rel_codes.size(0),
                                        rel_codes.size(1) / 4, current_stream(rel_codes)));
  return out;
}

std::tuple<at::Tensor, at::Tensor> decode_backward_op(const at::Tensor& grad_in, const at::Tensor& rel_codes_in,
                                                      const at::Tensor& boxes_in, at::ArrayRef<double> weights,
                                                      double bbox_xform_clip) {
  check_decode_args(rel_codes_in, boxes_in);
  check_grad(grad_in, rel_codes_in);
  const CoderParams<double> params = make_params(weights, bbox_xform_clip, "box_decode_backward");
  const c10::cuda::CUDAGuard guard(rel_codes_in.device());
  const at::Tensor rel_codes = rel_codes_in.contiguous(), boxes = boxes_in.contiguous();
  const at::Tensor grad = grad_in.contiguous().to(rel_codes.scalar_type());
  at::Tensor grad_rel = at::empty_like(rel_codes), grad_boxes = at::empty_like(boxes);
  DETOPS_CUDA_CHECK(decode_backward_cuda(to_dtype(rel_codes.scalar_type()), params, grad.const_data_ptr(),
                                         rel_codes.const_data_ptr(), boxes.const_data_ptr(),
                                         grad_rel.mutable_data_ptr(), grad_boxes.mutable_data_ptr(),
                                         rel_codes.size(0), rel_codes.size(1) / 4, current_stream(rel_codes)));
  return {grad_rel, grad_boxes};
}

at::Tensor encode_op(const at::Tensor& reference_in, const at::Tensor& proposals_in, at::ArrayRef<double> weights) {
  check_encode_args(reference_in, proposals_in);
  const CoderParams<double> params = make_params(weights, 0.0, "box_encode");
  const c10::cuda::CUDAGuard guard(reference_in.device());
  const at::Tensor reference = reference_in.contiguous(), proposals = proposals_in.contiguous();
  at::Tensor out = at::empty_like(reference);
  DETOPS_CUDA_CHECK(encode_forward_cuda(to_dtype(reference.scalar_type()), params, reference.const_data_ptr(),
                                        proposals.const_data_ptr(), out.mutable_data_ptr(), reference.size(0),
                                        current_stream(reference)));
  return out;
}

std::tuple<at::Tensor, at::Tensor> encode_backward_op(const at::Tensor& grad_in, const at::Tensor& reference_in,
                                                      const at::Tensor& proposals_in, at::ArrayRef<double> weights) {
  check_encode_args(reference_in, proposals_in);
  check_grad(grad_in, reference_in);
  const CoderParams<double> params = make_params(weights, 0.0, "box_encode_backward");
  const c10::cuda::CUDAGuard guard(reference_in.device());
  const at::Tensor reference = reference_in.contiguous(), proposals = proposals_in.contiguous();
  const at::Tensor grad = grad_in.contiguous().to(reference.scalar_type());
  at::Tensor grad_ref = at::empty_like(reference), grad_prop = at::empty_like(proposals);
  DETOPS_CUDA_CHECK(encode_backward_cuda(to_dtype(reference.scalar_type()), params, grad.const_data_ptr(),
                                         reference.const_data_ptr(), proposals.const_data_ptr(),
                                         grad_ref.mutable_data_ptr(), grad_prop.mutable_data_ptr(),
                                         reference.size(0), current_stream(reference)));
  return {grad_ref, grad_prop};
}

}  // namespace
}  // namespace box_coder
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CUDA, m) {
  using namespace detops::box_coder;
  m.impl("box_decode", &decode_op);
  m.impl("box_decode_backward", &decode_backward_op);
  m.impl("box_encode", &encode_op);
  m.impl("box_encode_backward", &encode_backward_op);
}
