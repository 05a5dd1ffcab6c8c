// Macros shared by the CPU (.cpp) and CUDA (.cu) builds of the per-element
// math headers, so one copy of the arithmetic serves both backends.
#pragma once

#if defined(__CUDACC__)
#define DETOPS_HD __host__ __device__ __forceinline__
#else
#define DETOPS_HD inline __attribute__((always_inline))
#endif

namespace detops {

template <typename T>
DETOPS_HD T max2(T a, T b) { return a > b ? a : b; }

template <typename T>
DETOPS_HD T min2(T a, T b) { return a < b ? a : b; }

// Gradient of torch.maximum / torch.minimum: ties split the gradient in half,
// as PyTorch's autograd does, so our gradients equal torchvision's at ties.
template <typename T>
DETOPS_HD void max2_backward(T a, T b, T g, T& ga, T& gb) {
  if (a > b) {
    ga += g;
  } else if (b > a) {
    gb += g;
  } else {
    ga += g / T(2);
    gb += g / T(2);
  }
}

template <typename T>
DETOPS_HD void min2_backward(T a, T b, T g, T& ga, T& gb) {
  if (a < b) {
    ga += g;
  } else if (b < a) {
    gb += g;
  } else {
    ga += g / T(2);
    gb += g / T(2);
  }
}

DETOPS_HD float arctan(float x) { return atanf(x); }
DETOPS_HD double arctan(double x) { return atan(x); }

}  // namespace detops
