// The dtypes a CUDA launcher accepts, named without ATen so that .cu files
// stay free of ATen headers (they compile in seconds instead of minutes).
#pragma once

namespace detops {

enum class DType : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

}  // namespace detops
