// Per-element math of the focal losses (Lin et al. 2017), shared by the CPU
// kernels (and by a CUDA kernel, should one be written; the GPU path today is
// Triton, kernels/sigmoid_focal_loss.py, which mirrors these formulas).
//
// Sigmoid focal loss of a logit x and a target t (torchvision's formula):
//   p   = sigmoid(x),  q = 1 - p = sigmoid(-x)
//   ce  = max(x, 0) - x t + log1p(exp(-|x|))          (BCE with logits)
//   m   = 1 - p_t = p (1 - t) + q t                    (q computed directly, not as 1 - p)
//   a_t = alpha t + (1 - alpha)(1 - t)                 (1 when alpha < 0)
//   loss = a_t ce m^gamma
// d loss / dx = a_t (dce m^g + ce g m^(g-1) dm),  dce = p - t,  dm = p q (1 - 2t)
// d loss / dt = da_t ce m^g + a_t (-x m^g + ce g m^(g-1) (q - p)),  da_t = 2 alpha - 1
// m^(g-1) is written m^g / m (one power per element) and its term is 0 where
// m == 0, the limit for gamma > 0 (m only reaches 0 by underflow, where ce and
// p q vanish as fast), so logits of +-100 give no NaN or Inf.
//
// Softmax focal loss of a row of logits x and a class k:
//   log p = x_k - logsumexp(x),  1 - p = -expm1(log p)
//   loss = -a (1 - p)^gamma log p                      (a = alpha, or 1 when alpha < 0)
//   d loss / d log p = -a (1-p)^g + a g (1-p)^(g-1) p log p
//   d loss / dx_j = d loss / d log p * ([j == k] - softmax_j)
//
// On the host, exp and log1p of float are written as branch-free polynomials
// (within 3 ulp of float's correctly rounded values) so that the CPU loops
// vectorise; double uses libm.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace detops {
namespace focal {

#if !defined(__CUDACC__)
using std::exp;
using std::expm1;
using std::log1p;
using std::pow;
#endif

// How the modulating factor m^gamma is computed: gamma = 0, 1, 2 are exact
// products (torch.pow special-cases them too); anything else is pow().
enum class GammaKind : int { kZero = 0, kOne = 1, kTwo = 2, kGeneral = 3 };

inline GammaKind gamma_kind(double gamma) {
  if (gamma == 0.0) return GammaKind::kZero;
  if (gamma == 1.0) return GammaKind::kOne;
  if (gamma == 2.0) return GammaKind::kTwo;
  return GammaKind::kGeneral;
}

// Loop-invariant constants of one call.
template <typename T>
struct Coeffs {
  T alpha_pos;   // a_t = alpha_pos t + alpha_neg (1 - t)
  T alpha_neg;
  T alpha_grad;  // d a_t / d t
  T gamma;
  bool use_alpha;
};

template <typename T>
inline Coeffs<T> make_coeffs(double alpha, double gamma) {
  const bool use_alpha = alpha >= 0;
  return {use_alpha ? T(alpha) : T(1), use_alpha ? T(1.0 - alpha) : T(1),
          use_alpha ? T(2.0 * alpha - 1.0) : T(0), T(gamma), use_alpha};
}

// ------------------------------------------------------------------ exp / log1p

#if defined(__CUDA_ARCH__)
DETOPS_HD float exp_nonpos(float y) { return __expf(y); }
DETOPS_HD float log1p_unit(float e) { return log1pf(e); }
#else
DETOPS_HD float bits_to_float(int32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// exp(y) for y <= 0 (NaN propagates), down to the float denormals: Cephes'
// expf polynomial after Cody-Waite reduction, scaled by 2^n in two halves so
// that results below FLT_MIN come out denormal instead of garbage.
DETOPS_HD float exp_nonpos(float y) {
  y = y < -104.0f ? -104.0f : y;
  // Round to nearest with the 1.5 * 2^23 trick (no libm call, vectorises).
  const float kn = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (y - kn * 0.693359375f) - kn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t n = static_cast<int32_t>(kn);  // in [-150, 0]
  const int32_t n1 = n / 2, n2 = n - n1;        // each >= -75
  return p * bits_to_float((n1 + 127) << 23) * bits_to_float((n2 + 127) << 23);
}

// log1p(e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) in [0, 1/3]: no
// cancellation for tiny e, and the series in s^2 <= 1/9 converges fast.
DETOPS_HD float log1p_unit(float e) {
  const float s = e / (2.0f + e);
  const float z = s * s;
  float p = 1.0f / 13.0f;
  p = p * z + 1.0f / 11.0f;
  p = p * z + 1.0f / 9.0f;
  p = p * z + 1.0f / 7.0f;
  p = p * z + 1.0f / 5.0f;
  p = p * z + 1.0f / 3.0f;
  return 2.0f * s + 2.0f * s * (z * p);
}
#endif

DETOPS_HD double exp_nonpos(double y) { return exp(y); }
DETOPS_HD double log1p_unit(double e) { return log1p(e); }

DETOPS_HD float pow_general(float m, float g) { return powf(m, g); }
DETOPS_HD double pow_general(double m, double g) { return pow(m, g); }

// m^gamma and d(m^gamma)/dm, the latter 0 where m == 0 (see the header comment).
template <GammaKind G, typename T>
DETOPS_HD T modulator(T m, T gamma) {
  if constexpr (G == GammaKind::kZero) return T(1);
  else if constexpr (G == GammaKind::kOne) return m;
  else if constexpr (G == GammaKind::kTwo) return m * m;
  else return pow_general(m, gamma);
}

template <GammaKind G, typename T>
DETOPS_HD T modulator_grad(T m, T mg, T gamma) {
  if constexpr (G == GammaKind::kZero) return T(0);
  else if constexpr (G == GammaKind::kOne) return T(1);
  else if constexpr (G == GammaKind::kTwo) return T(2) * m;
  else return m > T(0) ? gamma * mg / m : T(0);
}

// ------------------------------------------------------------------ sigmoid focal loss

// The quantities of one (logit, target) pair that forward and backward share.
template <typename T>
struct SigmoidTerms {
  T p, q, ce, m;
};

template <typename T>
DETOPS_HD SigmoidTerms<T> sigmoid_terms(T x, T t) {
  const T ax = x < T(0) ? -x : x;
  const T e = exp_nonpos(-ax);  // exp(-|x|) in (0, 1]
  const T r = T(1) / (T(1) + e);
  const T er = e * r;
  const bool pos = x >= T(0);
  SigmoidTerms<T> s;
  s.p = pos ? r : er;
  s.q = pos ? er : r;
  s.ce = (pos ? x : T(0)) - x * t + log1p_unit(e);
  s.m = s.p * (T(1) - t) + s.q * t;
  return s;
}

template <typename T>
DETOPS_HD T alpha_t(const Coeffs<T>& c, T t) {
  return c.alpha_pos * t + c.alpha_neg * (T(1) - t);
}

template <GammaKind G, typename T>
DETOPS_HD T sigmoid_focal_forward(T x, T t, const Coeffs<T>& c) {
  const SigmoidTerms<T> s = sigmoid_terms(x, t);
  const T loss = alpha_t(c, t) * s.ce * modulator<G>(s.m, c.gamma);
  return x != x ? x : loss;  // NaN logits give NaN, as torchvision does
}

// Gradient of g * loss with respect to the logit x.
template <GammaKind G, typename T>
DETOPS_HD T sigmoid_focal_grad_input(T x, T t, T g, const Coeffs<T>& c) {
  const SigmoidTerms<T> s = sigmoid_terms(x, t);
  const T mg = modulator<G>(s.m, c.gamma);
  const T dmg = modulator_grad<G>(s.m, mg, c.gamma);
  const T dce = s.p - t;
  const T dm = s.p * s.q * (T(1) - T(2) * t);
  const T gx = g * alpha_t(c, t) * (dce * mg + s.ce * dmg * dm);
  return x != x ? x : gx;
}

// Gradient of g * loss with respect to the (soft) target t.
template <GammaKind G, typename T>
DETOPS_HD T sigmoid_focal_grad_target(T x, T t, T g, const Coeffs<T>& c) {
  const SigmoidTerms<T> s = sigmoid_terms(x, t);
  const T mg = modulator<G>(s.m, c.gamma);
  const T dmg = modulator_grad<G>(s.m, mg, c.gamma);
  const T gt = g * (c.alpha_grad * s.ce * mg + alpha_t(c, t) * (-x * mg + s.ce * dmg * (s.q - s.p)));
  return x != x ? x : gt;
}

// ------------------------------------------------------------------ softmax focal loss

// Loss of one row from log p_k and omp = 1 - p_k (the caller computes it
// without cancellation near p_k = 1); `scale` is alpha (or 1).
template <GammaKind G, typename T>
DETOPS_HD T softmax_focal_from_logp(T logp, T omp, T scale, T gamma) {
  return -scale * modulator<G>(omp, gamma) * logp;
}

// d loss / d log p_k of one row, from log p_k, p_k and 1 - p_k.
template <GammaKind G, typename T>
DETOPS_HD T softmax_focal_dlogp(T logp, T p, T omp, T scale, T gamma) {
  const T mg = modulator<G>(omp, gamma);
  const T dmg = modulator_grad<G>(omp, mg, gamma);
  return -scale * mg + scale * dmg * p * logp;
}

}  // namespace focal
}  // namespace detops
