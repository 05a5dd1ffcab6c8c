// Macros shared by the CPU (.cpp) and CUDA (.cu) builds of the per-element
// math headers, so one copy of the arithmetic serves both backends.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DETOPS_HD __host__ __device__ __forceinline__
#else
#define DETOPS_HD inline __attribute__((always_inline))
#endif

namespace detops {

// Whole blocks of b that cover a (a >= 0, b > 0).
DETOPS_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
DETOPS_HD T max2(T a, T b) { return a > b ? a : b; }

template <typename T>
DETOPS_HD T min2(T a, T b) { return a < b ? a : b; }

// Gradient of torch.maximum / torch.minimum: ties split the gradient in half,
// as PyTorch's autograd does, so our gradients equal torchvision's at ties.
// Written as selects, not branches, so that CPU loops calling them vectorise.
template <typename T>
DETOPS_HD void max2_backward(T a, T b, T g, T& ga, T& gb) {
  const T half = g / T(2);
  ga += a > b ? g : (b > a ? T(0) : half);
  gb += b > a ? g : (a > b ? T(0) : half);
}

template <typename T>
DETOPS_HD void min2_backward(T a, T b, T g, T& ga, T& gb) {
  const T half = g / T(2);
  ga += a < b ? g : (b < a ? T(0) : half);
  gb += b < a ? g : (a < b ? T(0) : half);
}

#if defined(__CUDA_ARCH__)
DETOPS_HD float arctan(float x) { return atanf(x); }
#else
// Cephes' atanf, branch-free so that CPU loops calling it vectorise (libm's
// atanf is a scalar call): range reduction to |x| <= tan(pi/8), then a
// degree-9 odd polynomial; about 1 ulp, NaN in, NaN out.
inline float arctan(float x) {
  const float ax = __builtin_fabsf(x);
  const bool big = ax > 2.414213562373095f;
  const bool mid = ax > 0.4142135623730950f;
  const float xr = big ? -1.0f / ax : (mid ? (ax - 1.0f) / (ax + 1.0f) : ax);
  const float base = big ? 1.5707963267948966f : (mid ? 0.7853981633974483f : 0.0f);
  const float z = xr * xr;
  const float poly =
      (((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z - 3.33329491539e-1f) * z * xr + xr;
  return __builtin_copysignf(base + poly, x);
}
#endif
DETOPS_HD double arctan(double x) { return atan(x); }

}  // namespace detops
