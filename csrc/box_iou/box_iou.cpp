// Schemas of the IoU family. Boxes are (x1, y1, x2, y2).
//   box_iou_matrix:  [B, N, 4] x [B, M, 4] -> [B, N, M]
//   box_iou_aligned: [K, 4] x [K, 4] -> [K]   (the matrix formulas, pair by pair)
//   box_iou_loss:    [K, 4] x [K, 4] -> [K]   (torchvision's loss formulas, no reduction)
// variant is "iou", "giou", "diou", "ciou" or "iof" (intersection over the
// area of boxes1's box; "iou" and "iof" have no loss form). fmt ("xyxy",
// "xywh", "cxcywh") applies to "iou" and "iof"; the backward ops take
// (x1, y1, x2, y2) boxes (the Python layer converts).
// Outputs are float32 for float16/bfloat16 boxes, as torchvision returns.
#include "box_iou/box_iou.h"

#include <torch/library.h>

namespace detops {
namespace box_iou {

Variant parse_variant(std::string_view name) {
  if (name == "iou") return Variant::kIoU;
  if (name == "giou") return Variant::kGIoU;
  if (name == "diou") return Variant::kDIoU;
  if (name == "ciou") return Variant::kCIoU;
  if (name == "iof") return Variant::kIoF;
  TORCH_CHECK(false, "variant must be one of 'iou', 'giou', 'diou', 'ciou', 'iof', got '", name, "'");
}

BoxFormat parse_format(std::string_view fmt, Variant v) {
  BoxFormat f;
  if (fmt == "xyxy") {
    f = BoxFormat::kXYXY;
  } else if (fmt == "xywh") {
    f = BoxFormat::kXYWH;
  } else if (fmt == "cxcywh") {
    f = BoxFormat::kCXCYWH;
  } else {
    TORCH_CHECK(false, "fmt must be 'xyxy', 'xywh' or 'cxcywh', got '", fmt, "'");
  }
  TORCH_CHECK(f == BoxFormat::kXYXY || v == Variant::kIoU || v == Variant::kIoF,
              "fmt '", fmt, "' is supported for the 'iou' and 'iof' variants only");
  return f;
}

void check_matrix_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes(boxes1, "boxes1", 3);
  check_boxes(boxes2, "boxes2", 3);
  check_same_dtype_device(boxes1, "boxes1", boxes2, "boxes2");
  TORCH_CHECK(boxes1.size(0) == boxes2.size(0), "boxes1 and boxes2 must have the same batch size, got ",
              boxes1.size(0), " and ", boxes2.size(0));
}

void check_paired_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes(boxes1, "boxes1", 2);
  check_boxes(boxes2, "boxes2", 2);
  check_same_dtype_device(boxes1, "boxes1", boxes2, "boxes2");
  TORCH_CHECK(boxes1.size(0) == boxes2.size(0), "boxes1 and boxes2 must have the same number of boxes, got ",
              boxes1.size(0), " and ", boxes2.size(0));
}

void check_grad(const at::Tensor& grad, at::IntArrayRef expected) {
  TORCH_CHECK(grad.sizes() == expected, "grad must have shape ", expected, ", got ", grad.sizes());
}

}  // namespace box_iou
}  // namespace detops

TORCH_LIBRARY_FRAGMENT(detops, m) {
  m.def("box_iou_matrix(Tensor boxes1, Tensor boxes2, str variant, float eps, str fmt=\"xyxy\") -> Tensor");
  m.def("box_iou_matrix_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str variant, float eps) -> (Tensor, Tensor)");
  m.def("box_iou_aligned(Tensor boxes1, Tensor boxes2, str variant, float eps, str fmt=\"xyxy\") -> Tensor");
  m.def("box_iou_aligned_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str variant, float eps) -> (Tensor, Tensor)");
  m.def("box_iou_loss(Tensor boxes1, Tensor boxes2, str variant, float eps) -> Tensor");
  m.def("box_iou_loss_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str variant, float eps) -> (Tensor, Tensor)");
}
