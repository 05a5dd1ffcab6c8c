// Schemas of box encoding/decoding (torchvision's BoxCoder arithmetic).
// Boxes are (x1, y1, x2, y2); codes are (dx, dy, dw, dh).
//   box_decode: rel_codes [N, 4K] x boxes [N, 4] -> [N, 4K]   (K codes per box)
//   box_encode: reference_boxes [N, 4] x proposals [N, 4] -> [N, 4]
// weights are (wx, wy, ww, wh); bbox_xform_clip caps dw/dh before exp().
// Outputs have the inputs' dtype; float16/bfloat16 are computed in float32.
#include "box_coder/box_coder.h"

#include <torch/library.h>

#include <cmath>

namespace detops {
namespace box_coder {

CoderParams<double> make_params(at::ArrayRef<double> weights, double bbox_xform_clip, const char* op) {
  TORCH_CHECK(weights.size() == 4, op, ": weights must have 4 values (wx, wy, ww, wh), got ", weights.size());
  for (double w : weights) {
    TORCH_CHECK(std::isfinite(w) && w != 0.0, op, ": weights must be finite and non-zero, got ", weights);
  }
  return {weights[0], weights[1], weights[2], weights[3], bbox_xform_clip};
}

void check_decode_args(const at::Tensor& rel_codes, const at::Tensor& boxes) {
  TORCH_CHECK(rel_codes.dim() == 2 && rel_codes.size(1) % 4 == 0,
              "rel_codes must have shape [N, 4 * K], got ", rel_codes.sizes());
  TORCH_CHECK(is_kernel_float(rel_codes.scalar_type()),
              "rel_codes must be float16, bfloat16, float32 or float64, got ", rel_codes.scalar_type());
  check_boxes(boxes, "boxes", 2);
  check_same_dtype_device(rel_codes, "rel_codes", boxes, "boxes");
  TORCH_CHECK(rel_codes.size(0) == boxes.size(0), "rel_codes and boxes must have the same number of rows, got ",
              rel_codes.size(0), " and ", boxes.size(0));
}

void check_encode_args(const at::Tensor& reference_boxes, const at::Tensor& proposals) {
  check_boxes(reference_boxes, "reference_boxes", 2);
  check_boxes(proposals, "proposals", 2);
  check_same_dtype_device(reference_boxes, "reference_boxes", proposals, "proposals");
  TORCH_CHECK(reference_boxes.size(0) == proposals.size(0),
              "reference_boxes and proposals must have the same number of boxes, got ", reference_boxes.size(0),
              " and ", proposals.size(0));
}

void check_grad(const at::Tensor& grad, const at::Tensor& like) {
  TORCH_CHECK(grad.sizes() == like.sizes(), "grad must have shape ", like.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(grad.device() == like.device(), "grad must be on ", like.device(), ", got ", grad.device());
}

}  // namespace box_coder
}  // namespace detops

TORCH_LIBRARY_FRAGMENT(detops, m) {
  m.def("box_decode(Tensor rel_codes, Tensor boxes, float[] weights, float bbox_xform_clip) -> Tensor");
  m.def("box_decode_backward(Tensor grad, Tensor rel_codes, Tensor boxes, float[] weights, float bbox_xform_clip) -> (Tensor, Tensor)");
  m.def("box_encode(Tensor reference_boxes, Tensor proposals, float[] weights) -> Tensor");
  m.def("box_encode_backward(Tensor grad, Tensor reference_boxes, Tensor proposals, float[] weights) -> (Tensor, Tensor)");
}
