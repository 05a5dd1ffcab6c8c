// Argument checks shared by every op's CPU and CUDA entry points. The Python
// layer checks first with friendlier messages; these guard direct calls to
// torch.ops.detops.*.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/dtype.h"

namespace detops {

inline bool is_kernel_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// A floating tensor of boxes [..., 4] with the given rank.
inline void check_boxes(const at::Tensor& boxes, const char* name, int64_t ndim) {
  TORCH_CHECK(boxes.dim() == ndim && boxes.size(-1) == 4, name, " must have shape ",
              ndim == 2 ? "[K, 4]" : "[B, N, 4]", ", got ", boxes.sizes());
  TORCH_CHECK(is_kernel_float(boxes.scalar_type()), name,
              " must be float16, bfloat16, float32 or float64, got ", boxes.scalar_type());
}

inline void check_same_dtype_device(const at::Tensor& a, const char* name_a, const at::Tensor& b,
                                    const char* name_b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), name_a, " and ", name_b,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), name_a, " and ", name_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "detops: unsupported dtype ", t);
  }
}

// Reduced-precision inputs are computed, and returned, in float32.
inline at::ScalarType compute_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

}  // namespace detops
