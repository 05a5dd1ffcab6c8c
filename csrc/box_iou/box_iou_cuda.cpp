// CUDA registrations of the IoU family: checks, allocation and the launch.
// The loss ops' GPU path is the Triton kernel in kernels/box_iou.py, registered
// from python/detops/ops/box_iou.py.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "box_iou/box_iou.h"
#include "box_iou/box_iou_cuda.h"
#include "common/cuda_glue.h"

namespace detops {
namespace box_iou {
namespace {

at::Tensor matrix_forward_op(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in, c10::string_view variant,
                             double eps, c10::string_view fmt) {
  check_matrix_args(boxes1_in, boxes2_in);
  const Variant v = parse_variant(variant);
  const BoxFormat f = parse_format(fmt, v);
  const c10::cuda::CUDAGuard guard(boxes1_in.device());
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  const int64_t B = boxes1.size(0), N = boxes1.size(1), M = boxes2.size(1);
  at::Tensor out = at::empty({B, N, M}, boxes1.options().dtype(compute_dtype(boxes1.scalar_type())));
  DETOPS_CUDA_CHECK(matrix_forward_cuda(to_dtype(boxes1.scalar_type()), v, f, boxes1.const_data_ptr(), boxes2.const_data_ptr(), out.mutable_data_ptr(),
                                        B, N, M, eps, current_stream(boxes1)));
  return out;
}

std::tuple<at::Tensor, at::Tensor> matrix_backward_op(const at::Tensor& grad_in, const at::Tensor& boxes1_in,
                                                   const at::Tensor& boxes2_in, c10::string_view variant,
                                                   double eps) {
  check_matrix_args(boxes1_in, boxes2_in);
  check_grad_device(grad_in, boxes1_in, "boxes1");
  const c10::cuda::CUDAGuard guard(boxes1_in.device());
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  const int64_t B = boxes1.size(0), N = boxes1.size(1), M = boxes2.size(1);
  check_grad(grad_in, {B, N, M});
  // one block per row of boxes1, and the batch on grid.y for boxes2's columns
  TORCH_CHECK(B * N < (int64_t(1) << 31) && B <= 65535,
              "box_iou_matrix_backward (CUDA): at most 2^31 rows and 65535 batches, got B=", B, ", N=", N);
  const at::Tensor grad = grad_in.contiguous().to(compute_dtype(boxes1.scalar_type()));
  at::Tensor grad1 = at::empty_like(boxes1), grad2 = at::empty_like(boxes2);
  // Partial sums of the split reductions (box_iou_cuda.h: BackwardSplit).
  const BackwardSplit split = backward_split(B, N, M);
  const int64_t ws = split.workspace(B, N, M);
  const at::Tensor workspace = at::empty({ws}, grad.options());
  DETOPS_CUDA_CHECK(matrix_backward_cuda(to_dtype(boxes1.scalar_type()), parse_variant(variant),
                                         grad.const_data_ptr(), boxes1.const_data_ptr(), boxes2.const_data_ptr(),
                                         grad1.mutable_data_ptr(), grad2.mutable_data_ptr(), B, N, M, eps, split,
                                         ws > 0 ? workspace.mutable_data_ptr() : nullptr, current_stream(boxes1)));
  return {grad1, grad2};
}

at::Tensor aligned_forward_op(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in, c10::string_view variant,
                              double eps, c10::string_view fmt) {
  check_paired_args(boxes1_in, boxes2_in);
  const Variant v = parse_variant(variant);
  const BoxFormat f = parse_format(fmt, v);
  const c10::cuda::CUDAGuard guard(boxes1_in.device());
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  at::Tensor out = at::empty({boxes1.size(0)}, boxes1.options().dtype(compute_dtype(boxes1.scalar_type())));
  DETOPS_CUDA_CHECK(aligned_forward_cuda(to_dtype(boxes1.scalar_type()), v, f, boxes1.const_data_ptr(), boxes2.const_data_ptr(), out.mutable_data_ptr(),
                                         boxes1.size(0), eps, current_stream(boxes1)));
  return out;
}

std::tuple<at::Tensor, at::Tensor> aligned_backward_op(const at::Tensor& grad_in, const at::Tensor& boxes1_in,
                                                    const at::Tensor& boxes2_in, c10::string_view variant,
                                                    double eps) {
  check_paired_args(boxes1_in, boxes2_in);
  check_grad_device(grad_in, boxes1_in, "boxes1");
  const c10::cuda::CUDAGuard guard(boxes1_in.device());
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  check_grad(grad_in, {boxes1.size(0)});
  const at::Tensor grad = grad_in.contiguous().to(compute_dtype(boxes1.scalar_type()));
  at::Tensor grad1 = at::empty_like(boxes1), grad2 = at::empty_like(boxes2);
  DETOPS_CUDA_CHECK(aligned_backward_cuda(to_dtype(boxes1.scalar_type()), parse_variant(variant),
                                          grad.const_data_ptr(), boxes1.const_data_ptr(), boxes2.const_data_ptr(),
                                          grad1.mutable_data_ptr(), grad2.mutable_data_ptr(), boxes1.size(0), eps,
                                          current_stream(boxes1)));
  return {grad1, grad2};
}

}  // namespace
}  // namespace box_iou
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CUDA, m) {
  using namespace detops::box_iou;
  m.impl("box_iou_matrix", &matrix_forward_op);
  m.impl("box_iou_matrix_backward", &matrix_backward_op);
  m.impl("box_iou_aligned", &aligned_forward_op);
  m.impl("box_iou_aligned_backward", &aligned_backward_op);
}
