// Schema of mask pasting (torchvision's paste_masks_in_image for a batch):
//   paste_masks: masks [N, 1, M_h, M_w] x boxes [N, 4] (int64 (x1, y1, x2, y2),
//   inclusive, already grown by the padding) x image_sizes [N, 2] (int64 (h, w))
//   -> [N, 1, height, width], the masks' dtype.
// Each mask, zero-padded by `padding` pixels, is resized into its box (bilinear,
// align_corners=False) and written where the box, its image and the canvas
// overlap; every other pixel is 0. float16/bfloat16 are computed in float32.
#include "paste_masks/paste_masks.h"

#include <torch/library.h>

namespace detops {
namespace paste_masks {

void check_args(const at::Tensor& masks, const at::Tensor& boxes, const at::Tensor& image_sizes, int64_t height,
                int64_t width, int64_t padding) {
  TORCH_CHECK(masks.dim() == 4 && masks.size(1) == 1, "masks must have shape [N, 1, M_h, M_w], got ",
              masks.sizes());
  TORCH_CHECK(is_kernel_float(masks.scalar_type()), "masks must be float16, bfloat16, float32 or float64, got ",
              masks.scalar_type());
  TORCH_CHECK(masks.size(0) == 0 || (masks.size(2) > 0 && masks.size(3) > 0),
              "masks must have at least one pixel, got ", masks.sizes());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == masks.size(0),
              "boxes must have shape [N, 4] with N = ", masks.size(0), ", got ", boxes.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kLong, "boxes must be int64, got ", boxes.scalar_type());
  TORCH_CHECK(image_sizes.dim() == 2 && image_sizes.size(1) == 2 && image_sizes.size(0) == masks.size(0),
              "image_sizes must have shape [N, 2] with N = ", masks.size(0), ", got ", image_sizes.sizes());
  TORCH_CHECK(image_sizes.scalar_type() == at::kLong, "image_sizes must be int64, got ", image_sizes.scalar_type());
  TORCH_CHECK(boxes.device() == masks.device() && image_sizes.device() == masks.device(),
              "masks, boxes and image_sizes must be on one device, got ", masks.device(), ", ", boxes.device(),
              " and ", image_sizes.device());
  TORCH_CHECK(height >= 0 && width >= 0, "height and width must be >= 0, got ", height, " and ", width);
  TORCH_CHECK(padding >= 0 && padding <= kCoordinateLimit, "padding must be in [0, 2**40], got ", padding);
}

}  // namespace paste_masks
}  // namespace detops

TORCH_LIBRARY_FRAGMENT(detops, m) {
  m.def("paste_masks(Tensor masks, Tensor boxes, Tensor image_sizes, SymInt height, SymInt width, int padding) "
        "-> Tensor");
}
