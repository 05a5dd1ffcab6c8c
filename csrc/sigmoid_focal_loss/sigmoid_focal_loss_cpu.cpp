// CPU kernels of the focal-loss family. Each pass reads the logits and the
// targets (or labels) once and writes the loss, its sum, or the gradient:
// nothing is saved between forward and backward but the inputs.
//
// Work is split into fixed blocks of elements (or rows), run by at::parallel_for;
// reduced losses keep one partial sum per block and add the partials in block
// order, so the result does not depend on the thread count. The float loops
// are compiled for AVX-512, AVX2 and baseline x86-64 (target_clones, chosen at
// load time) and vectorise: exp and log1p are the polynomials of
// sigmoid_focal_loss_math.h, and the selects (x >= 0 ? ...) are if-converted
// because CMake builds with -fno-trapping-math. float16/bfloat16 blocks are
// converted to float buffers, computed, and converted back.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/binary_cross_entropy_with_logits.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/rsub.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "sigmoid_focal_loss/sigmoid_focal_loss.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DETOPS_FOCAL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DETOPS_FOCAL_CLONES
#endif

namespace detops {
namespace focal {
namespace {

// The incoming gradient when it is one value for every element (a reduced
// loss, or loss.sum() after 'none'): g[0], divided by the count for 'mean'.
template <typename T, typename scalar_t>
T uniform_grad(const scalar_t* g, bool uniform, Reduction reduction, int64_t count) {
  if (!uniform) return T(0);
  const T value = static_cast<T>(g[0]);
  return reduction == Reduction::kMean ? value / static_cast<T>(count) : value;
}

constexpr int64_t kBlock = 2048;     // elements per block (dense form)
constexpr int64_t kRowElems = 8192;  // elements per row block (indexed and softmax forms)
// Parallel grain: a thread is woken only for at least this many elements
// (~30-60 us of work). Below it the loss runs on the calling thread: a 256 x 80
// loss (10 blocks), split over 2 threads at a grain of 4 blocks, took 0.5x
// torchvision's time in the size sweep, and on a busy machine a woken thread
// can wait a whole scheduler slice. Partial sums stay per block, so the result
// does not depend on the grain.
constexpr int64_t kParallelElems = int64_t(1) << 16;
constexpr int64_t kBlocksPerTask = kParallelElems / kBlock;  // dense form

// ------------------------------------------------------------------ element loops
// Templates on the gamma kind and the element type. When t is null, the
// targets are one-hot: 1 at column `label` (-1: none), 0 elsewhere; rows of the
// indexed form are counted in 32 bits (checked) so that the compare vectorises
// at the width of the floats.

template <GammaKind G, typename T>
DETOPS_HD void forward_store(const T* __restrict__ x, const T* __restrict__ t, int64_t label, T* __restrict__ out,
                             int64_t n, const Coeffs<T>& c) {
  if (t != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = sigmoid_focal_forward<G>(x[i], t[i], c);
  } else {
    const int32_t n32 = static_cast<int32_t>(n), label32 = static_cast<int32_t>(label);
#pragma omp simd
    for (int32_t i = 0; i < n32; ++i) out[i] = sigmoid_focal_forward<G>(x[i], T(i == label32), c);
  }
}

template <GammaKind G, typename T>
DETOPS_HD T forward_sum(const T* __restrict__ x, const T* __restrict__ t, int64_t label, int64_t n,
                        const Coeffs<T>& c) {
  T sum = 0;
  if (t != nullptr) {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += sigmoid_focal_forward<G>(x[i], t[i], c);
  } else {
    const int32_t n32 = static_cast<int32_t>(n), label32 = static_cast<int32_t>(label);
#pragma omp simd reduction(+ : sum)
    for (int32_t i = 0; i < n32; ++i) sum += sigmoid_focal_forward<G>(x[i], T(i == label32), c);
  }
  return sum;
}

// grad_x[i] = d(g_i loss_i)/dx_i with g_i = g[i], or the scalar g_scalar when g is null.
template <GammaKind G, typename T>
DETOPS_HD void backward_input(const T* __restrict__ x, const T* __restrict__ t, int64_t label,
                              const T* __restrict__ g, T g_scalar, T* __restrict__ grad_x, int64_t n,
                              const Coeffs<T>& c) {
  if (t != nullptr && g != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) grad_x[i] = sigmoid_focal_grad_input<G>(x[i], t[i], g[i], c);
  } else if (t != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) grad_x[i] = sigmoid_focal_grad_input<G>(x[i], t[i], g_scalar, c);
  } else if (g != nullptr) {
    const int32_t n32 = static_cast<int32_t>(n), label32 = static_cast<int32_t>(label);
#pragma omp simd
    for (int32_t i = 0; i < n32; ++i) grad_x[i] = sigmoid_focal_grad_input<G>(x[i], T(i == label32), g[i], c);
  } else {
    const int32_t n32 = static_cast<int32_t>(n), label32 = static_cast<int32_t>(label);
#pragma omp simd
    for (int32_t i = 0; i < n32; ++i) {
      grad_x[i] = sigmoid_focal_grad_input<G>(x[i], T(i == label32), g_scalar, c);
    }
  }
}

template <GammaKind G, typename T>
DETOPS_HD void backward_target(const T* __restrict__ x, const T* __restrict__ t, const T* __restrict__ g,
                               T g_scalar, T* __restrict__ grad_t, int64_t n, const Coeffs<T>& c) {
  if (g != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) grad_t[i] = sigmoid_focal_grad_target<G>(x[i], t[i], g[i], c);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) grad_t[i] = sigmoid_focal_grad_target<G>(x[i], t[i], g_scalar, c);
  }
}

// Rows of the indexed form: col_of_row[r] is the column whose target is 1,
// -1 for background (all targets 0), or kIgnoredRow (loss and gradient 0).
constexpr int64_t kIgnoredRow = -2;

// Writes the rows' losses to out, or (out null) returns their sum.
template <GammaKind G, typename T>
DETOPS_HD double indexed_rows_forward(const T* __restrict__ x, const int64_t* __restrict__ col_of_row, int64_t rows,
                                      int64_t cols, T* __restrict__ out, const Coeffs<T>& c) {
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t col = col_of_row[r];
    if (col == kIgnoredRow) {
      if (out != nullptr) std::fill(out + r * cols, out + (r + 1) * cols, T(0));
    } else if (out != nullptr) {
      forward_store<G>(x + r * cols, static_cast<const T*>(nullptr), col, out + r * cols, cols, c);
    } else {
      total += static_cast<double>(forward_sum<G>(x + r * cols, static_cast<const T*>(nullptr), col, cols, c));
    }
  }
  return total;
}

template <GammaKind G, typename T>
DETOPS_HD void indexed_rows_backward(const T* __restrict__ x, const int64_t* __restrict__ col_of_row, int64_t rows,
                                     int64_t cols, const T* __restrict__ g, T g_scalar, T* __restrict__ grad_x,
                                     const Coeffs<T>& c) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t col = col_of_row[r];
    if (col == kIgnoredRow) {
      std::fill(grad_x + r * cols, grad_x + (r + 1) * cols, T(0));
    } else {
      backward_input<G>(x + r * cols, static_cast<const T*>(nullptr), col, g != nullptr ? g + r * cols : nullptr,
                        g_scalar, grad_x + r * cols, cols, c);
    }
  }
}

// One row's softmax at class k: logsumexp, log p_k, p_k and 1 - p_k. The last
// is the other classes' share summed, exact near p_k = 1 without an expm1 call
// per row (libm's scalar expm1 was a sixth of the loss's time); the max and the
// two sums vectorise.
template <typename T>
struct SoftmaxAt {
  T lse, logp, p, omp, inv_sum;  // inv_sum: 1 / sum_j exp(x[j] - max)
};

// With kKeepExp, e[i] = exp(x[i] - max) is kept for the caller (the backward
// scales it into the gradient instead of taking the exponentials again).
// The reductions keep kLanes partial results, updated lane by lane, which GCC
// turns into whole-vector max/add; `omp simd reduction` compiled the max to a
// scalar loop through a stack array here.
constexpr int64_t kLanes = 16;

template <bool kKeepExp, typename T>
DETOPS_HD SoftmaxAt<T> softmax_at(const T* __restrict__ x, int64_t n, int64_t k, T* __restrict__ e = nullptr) {
  const int64_t body = n - n % kLanes;
  T lane_max[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lane_max[l] = x[0];
  for (int64_t i = 0; i < body; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lane_max[l] = x[i + l] > lane_max[l] ? x[i + l] : lane_max[l];
  }
  T mx = x[0];
  for (int64_t l = 0; l < kLanes; ++l) mx = lane_max[l] > mx ? lane_max[l] : mx;
  for (int64_t i = body; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  const auto accumulate = [&](int64_t i, T& sum, T& other) {
    const T ei = exp_nonpos(x[i] - mx);
    if constexpr (kKeepExp) e[i] = ei;
    sum += ei;
    other += i == k ? T(0) : ei;
  };
  T lane_sum[kLanes] = {}, lane_other[kLanes] = {};
  for (int64_t i = 0; i < body; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) accumulate(i + l, lane_sum[l], lane_other[l]);
  }
  T sum = 0, other = 0;
  for (int64_t l = 0; l < kLanes; ++l) {
    sum += lane_sum[l];
    other += lane_other[l];
  }
  for (int64_t i = body; i < n; ++i) accumulate(i, sum, other);
  const T log_sum = std::log(sum);
  return {mx + log_sum, (x[k] - mx) - log_sum, exp_nonpos(x[k] - mx) / sum, other / sum, T(1) / sum};
}

// grad[j] = dl * ([j == k] - p_j), in place over grad[j] = exp(x[j] - max);
// the class's own entry is dl * (1 - p_k), exact near p_k = 1.
template <typename T>
DETOPS_HD void softmax_grad_row(int64_t k, const SoftmaxAt<T>& s, T dl, T* __restrict__ grad, int64_t n) {
  const T scale = -dl * s.inv_sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) grad[j] *= scale;
  grad[k] = dl * s.omp;
}

// Rows of the softmax form: k_of_row[r] is the row's class, or -1 for an
// ignored row (loss and gradient 0). Forward writes the rows' losses to out
// (when not null) and returns their sum.
template <GammaKind G, typename T>
DETOPS_HD double softmax_rows_forward(const T* __restrict__ x, const int64_t* __restrict__ k_of_row, int64_t rows,
                                      int64_t cols, T scale, T gamma, T* __restrict__ out) {
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t k = k_of_row[r];
    T loss = 0;
    if (k >= 0) {
      const T* xr = x + r * cols;
      const SoftmaxAt<T> s = softmax_at<false>(xr, cols, k);
      loss = softmax_focal_from_logp<G>(s.logp, s.omp, scale, gamma);
      total += static_cast<double>(loss);
    }
    if (out != nullptr) out[r] = loss;
  }
  return total;
}

// grad of sum_r g_r loss_r, g_r = g[r] or g_scalar when g is null.
template <GammaKind G, typename T>
DETOPS_HD void softmax_rows_backward(const T* __restrict__ x, const int64_t* __restrict__ k_of_row, int64_t rows,
                                     int64_t cols, const T* __restrict__ g, T g_scalar, T scale, T gamma,
                                     T* __restrict__ grad) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t k = k_of_row[r];
    if (k < 0) {
      std::fill(grad + r * cols, grad + (r + 1) * cols, T(0));
      continue;
    }
    const T* xr = x + r * cols;
    T* gr = grad + r * cols;
    const SoftmaxAt<T> s = softmax_at<true>(xr, cols, k, gr);
    const T dl = (g != nullptr ? g[r] : g_scalar) * softmax_focal_dlogp<G>(s.logp, s.p, s.omp, scale, gamma);
    softmax_grad_row(k, s, dl, gr, cols);
  }
}

// The reduced loss and its gradient in one pass over each row (the softmax is
// taken once): returns sum_r loss_r and writes the gradient of
// g_scalar * sum_r loss_r, bit for bit softmax_rows_forward's sum and
// softmax_rows_backward's gradient for a uniform g_scalar.
template <GammaKind G, typename T>
DETOPS_HD double softmax_rows_forward_backward(const T* __restrict__ x, const int64_t* __restrict__ k_of_row,
                                               int64_t rows, int64_t cols, T g_scalar, T scale, T gamma,
                                               T* __restrict__ grad) {
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t k = k_of_row[r];
    if (k < 0) {
      std::fill(grad + r * cols, grad + (r + 1) * cols, T(0));
      continue;
    }
    T* gr = grad + r * cols;
    const SoftmaxAt<T> s = softmax_at<true>(x + r * cols, cols, k, gr);
    total += static_cast<double>(softmax_focal_from_logp<G>(s.logp, s.omp, scale, gamma));
    softmax_grad_row(k, s, g_scalar * softmax_focal_dlogp<G>(s.logp, s.p, s.omp, scale, gamma), gr, cols);
  }
  return total;
}

// The float entry points, one machine-code clone per instruction set.
#define DETOPS_FOCAL_SWITCH(kind, CALL)                            \
  switch (kind) {                                                  \
    case GammaKind::kZero: return CALL(GammaKind::kZero);          \
    case GammaKind::kOne: return CALL(GammaKind::kOne);            \
    case GammaKind::kTwo: return CALL(GammaKind::kTwo);            \
    default: return CALL(GammaKind::kGeneral);                     \
  }

DETOPS_FOCAL_CLONES void forward_store_f32(const float* x, const float* t, int64_t label, float* out, int64_t n,
                                           const Coeffs<float>& c, GammaKind kind) {
#define CALL(G) forward_store<G>(x, t, label, out, n, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

DETOPS_FOCAL_CLONES float forward_sum_f32(const float* x, const float* t, int64_t label, int64_t n,
                                          const Coeffs<float>& c, GammaKind kind) {
#define CALL(G) forward_sum<G>(x, t, label, n, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

DETOPS_FOCAL_CLONES void backward_input_f32(const float* x, const float* t, int64_t label, const float* g,
                                            float g_scalar, float* grad_x, int64_t n, const Coeffs<float>& c,
                                            GammaKind kind) {
#define CALL(G) backward_input<G>(x, t, label, g, g_scalar, grad_x, n, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

DETOPS_FOCAL_CLONES void backward_target_f32(const float* x, const float* t, const float* g, float g_scalar,
                                             float* grad_t, int64_t n, const Coeffs<float>& c, GammaKind kind) {
#define CALL(G) backward_target<G>(x, t, g, g_scalar, grad_t, n, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

DETOPS_FOCAL_CLONES double indexed_rows_forward_f32(const float* x, const int64_t* col_of_row, int64_t rows,
                                                    int64_t cols, float* out, const Coeffs<float>& c,
                                                    GammaKind kind) {
#define CALL(G) indexed_rows_forward<G>(x, col_of_row, rows, cols, out, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

DETOPS_FOCAL_CLONES void indexed_rows_backward_f32(const float* x, const int64_t* col_of_row, int64_t rows,
                                                   int64_t cols, const float* g, float g_scalar, float* grad_x,
                                                   const Coeffs<float>& c, GammaKind kind) {
#define CALL(G) indexed_rows_backward<G>(x, col_of_row, rows, cols, g, g_scalar, grad_x, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

double indexed_rows_forward_f64(const double* x, const int64_t* col_of_row, int64_t rows, int64_t cols, double* out,
                                const Coeffs<double>& c, GammaKind kind) {
#define CALL(G) indexed_rows_forward<G>(x, col_of_row, rows, cols, out, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

void indexed_rows_backward_f64(const double* x, const int64_t* col_of_row, int64_t rows, int64_t cols,
                               const double* g, double g_scalar, double* grad_x, const Coeffs<double>& c,
                               GammaKind kind) {
#define CALL(G) indexed_rows_backward<G>(x, col_of_row, rows, cols, g, g_scalar, grad_x, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

DETOPS_FOCAL_CLONES double softmax_rows_forward_f32(const float* x, const int64_t* k_of_row, int64_t rows,
                                                    int64_t cols, float scale, float gamma, float* out,
                                                    GammaKind kind) {
#define CALL(G) softmax_rows_forward<G>(x, k_of_row, rows, cols, scale, gamma, out)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

DETOPS_FOCAL_CLONES void softmax_rows_backward_f32(const float* x, const int64_t* k_of_row, int64_t rows,
                                                   int64_t cols, const float* g, float g_scalar, float scale,
                                                   float gamma, float* grad, GammaKind kind) {
#define CALL(G) softmax_rows_backward<G>(x, k_of_row, rows, cols, g, g_scalar, scale, gamma, grad)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

DETOPS_FOCAL_CLONES double softmax_rows_forward_backward_f32(const float* x, const int64_t* k_of_row, int64_t rows,
                                                             int64_t cols, float g_scalar, float scale, float gamma,
                                                             float* grad, GammaKind kind) {
#define CALL(G) softmax_rows_forward_backward<G>(x, k_of_row, rows, cols, g_scalar, scale, gamma, grad)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

double softmax_rows_forward_backward_f64(const double* x, const int64_t* k_of_row, int64_t rows, int64_t cols,
                                         double g_scalar, double scale, double gamma, double* grad, GammaKind kind) {
#define CALL(G) softmax_rows_forward_backward<G>(x, k_of_row, rows, cols, g_scalar, scale, gamma, grad)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

double softmax_rows_forward_f64(const double* x, const int64_t* k_of_row, int64_t rows, int64_t cols, double scale,
                                double gamma, double* out, GammaKind kind) {
#define CALL(G) softmax_rows_forward<G>(x, k_of_row, rows, cols, scale, gamma, out)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

void softmax_rows_backward_f64(const double* x, const int64_t* k_of_row, int64_t rows, int64_t cols,
                               const double* g, double g_scalar, double scale, double gamma, double* grad,
                               GammaKind kind) {
#define CALL(G) softmax_rows_backward<G>(x, k_of_row, rows, cols, g, g_scalar, scale, gamma, grad)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

// The same entry points for double (libm, scalar).
void forward_store_f64(const double* x, const double* t, int64_t label, double* out, int64_t n,
                       const Coeffs<double>& c, GammaKind kind) {
#define CALL(G) forward_store<G>(x, t, label, out, n, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

double forward_sum_f64(const double* x, const double* t, int64_t label, int64_t n, const Coeffs<double>& c,
                       GammaKind kind) {
#define CALL(G) forward_sum<G>(x, t, label, n, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

void backward_input_f64(const double* x, const double* t, int64_t label, const double* g, double g_scalar,
                        double* grad_x, int64_t n, const Coeffs<double>& c, GammaKind kind) {
#define CALL(G) backward_input<G>(x, t, label, g, g_scalar, grad_x, n, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}

void backward_target_f64(const double* x, const double* t, const double* g, double g_scalar, double* grad_t,
                         int64_t n, const Coeffs<double>& c, GammaKind kind) {
#define CALL(G) backward_target<G>(x, t, g, g_scalar, grad_t, n, c)
  DETOPS_FOCAL_SWITCH(kind, CALL)
#undef CALL
}
#undef DETOPS_FOCAL_SWITCH

// Overloads by compute type, so that the drivers below are written once.
struct Kernels {
  static void forward_store(const float* x, const float* t, int64_t l, float* o, int64_t n, const Coeffs<float>& c,
                            GammaKind k) { forward_store_f32(x, t, l, o, n, c, k); }
  static void forward_store(const double* x, const double* t, int64_t l, double* o, int64_t n,
                            const Coeffs<double>& c, GammaKind k) { forward_store_f64(x, t, l, o, n, c, k); }
  static float forward_sum(const float* x, const float* t, int64_t l, int64_t n, const Coeffs<float>& c,
                           GammaKind k) { return forward_sum_f32(x, t, l, n, c, k); }
  static double forward_sum(const double* x, const double* t, int64_t l, int64_t n, const Coeffs<double>& c,
                            GammaKind k) { return forward_sum_f64(x, t, l, n, c, k); }
  static void backward_input(const float* x, const float* t, int64_t l, const float* g, float gs, float* gx,
                             int64_t n, const Coeffs<float>& c, GammaKind k) {
    backward_input_f32(x, t, l, g, gs, gx, n, c, k);
  }
  static void backward_input(const double* x, const double* t, int64_t l, const double* g, double gs, double* gx,
                             int64_t n, const Coeffs<double>& c, GammaKind k) {
    backward_input_f64(x, t, l, g, gs, gx, n, c, k);
  }
  static void backward_target(const float* x, const float* t, const float* g, float gs, float* gt, int64_t n,
                              const Coeffs<float>& c, GammaKind k) { backward_target_f32(x, t, g, gs, gt, n, c, k); }
  static void backward_target(const double* x, const double* t, const double* g, double gs, double* gt, int64_t n,
                              const Coeffs<double>& c, GammaKind k) {
    backward_target_f64(x, t, g, gs, gt, n, c, k);
  }
  static double indexed_rows_forward(const float* x, const int64_t* cr, int64_t rows, int64_t cols, float* o,
                                     const Coeffs<float>& c, GammaKind k) {
    return indexed_rows_forward_f32(x, cr, rows, cols, o, c, k);
  }
  static double indexed_rows_forward(const double* x, const int64_t* cr, int64_t rows, int64_t cols, double* o,
                                     const Coeffs<double>& c, GammaKind k) {
    return indexed_rows_forward_f64(x, cr, rows, cols, o, c, k);
  }
  static void indexed_rows_backward(const float* x, const int64_t* cr, int64_t rows, int64_t cols, const float* g,
                                    float gs, float* gx, const Coeffs<float>& c, GammaKind k) {
    indexed_rows_backward_f32(x, cr, rows, cols, g, gs, gx, c, k);
  }
  static void indexed_rows_backward(const double* x, const int64_t* cr, int64_t rows, int64_t cols, const double* g,
                                    double gs, double* gx, const Coeffs<double>& c, GammaKind k) {
    indexed_rows_backward_f64(x, cr, rows, cols, g, gs, gx, c, k);
  }
  static double softmax_rows_forward(const float* x, const int64_t* kr, int64_t rows, int64_t cols, float scale,
                                     float gamma, float* o, GammaKind k) {
    return softmax_rows_forward_f32(x, kr, rows, cols, scale, gamma, o, k);
  }
  static double softmax_rows_forward(const double* x, const int64_t* kr, int64_t rows, int64_t cols, double scale,
                                     double gamma, double* o, GammaKind k) {
    return softmax_rows_forward_f64(x, kr, rows, cols, scale, gamma, o, k);
  }
  static void softmax_rows_backward(const float* x, const int64_t* kr, int64_t rows, int64_t cols, const float* g,
                                    float gs, float scale, float gamma, float* gx, GammaKind k) {
    softmax_rows_backward_f32(x, kr, rows, cols, g, gs, scale, gamma, gx, k);
  }
  static void softmax_rows_backward(const double* x, const int64_t* kr, int64_t rows, int64_t cols, const double* g,
                                    double gs, double scale, double gamma, double* gx, GammaKind k) {
    softmax_rows_backward_f64(x, kr, rows, cols, g, gs, scale, gamma, gx, k);
  }
  static double softmax_rows_forward_backward(const float* x, const int64_t* kr, int64_t rows, int64_t cols,
                                              float gs, float scale, float gamma, float* gx, GammaKind k) {
    return softmax_rows_forward_backward_f32(x, kr, rows, cols, gs, scale, gamma, gx, k);
  }
  static double softmax_rows_forward_backward(const double* x, const int64_t* kr, int64_t rows, int64_t cols,
                                              double gs, double scale, double gamma, double* gx, GammaKind k) {
    return softmax_rows_forward_backward_f64(x, kr, rows, cols, gs, scale, gamma, gx, k);
  }
};

// ------------------------------------------------------------------ float16 / bfloat16
// Conversions written with integer operations so that they vectorise inside
// the clones (c10::Half converts with F16C only when the whole file is built
// for it). Narrowing rounds to nearest even and keeps NaN a (quiet) NaN, as c10 does.

DETOPS_HD uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

DETOPS_HD float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

DETOPS_HD float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t em = uint32_t(h & 0x7fffu) << 13;  // exponent and mantissa at float's positions
  const uint32_t exp = em & (0x7c00u << 13);
  const uint32_t normal = em + ((127u - 15u) << 23);
  const uint32_t inf_nan = normal + ((128u - 16u) << 23);
  // Denormals: (2^-14 + m 2^-24) - 2^-14, exact.
  const uint32_t denormal = float_bits(bits_float(normal + (1u << 23)) - bits_float(113u << 23));
  const uint32_t o = exp == (0x7c00u << 13) ? inf_nan : (exp == 0 ? denormal : normal);
  return bits_float(o | sign);
}

DETOPS_HD uint16_t float_to_half(float x) {
  uint32_t f = float_bits(x);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  const uint32_t big = f > (255u << 23) ? 0x7e00u : 0x7c00u;  // NaN, or overflow to Inf
  // Below the smallest normal half: let the float adder round at 2^-24.
  const float magic = bits_float(((127u - 15u) + (23u - 10u) + 1u) << 23);
  const uint32_t small = float_bits(bits_float(f) + magic) - float_bits(magic);
  const uint32_t odd = (f >> 13) & 1u;
  const uint32_t normal = (f + (uint32_t(15 - 127) << 23) + 0xfffu + odd) >> 13;
  const uint32_t o = f >= ((127u + 16u) << 23) ? big : (f < (113u << 23) ? small : normal);
  return static_cast<uint16_t>(o | (sign >> 16));
}

DETOPS_HD float bfloat16_to_float(uint16_t h) { return bits_float(uint32_t(h) << 16); }

DETOPS_HD uint16_t float_to_bfloat16(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(x != x ? 0x7fc0u : rounded);
}

DETOPS_FOCAL_CLONES void widen_half(const uint16_t* __restrict__ src, float* __restrict__ dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

DETOPS_FOCAL_CLONES void narrow_half(const float* __restrict__ src, uint16_t* __restrict__ dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
}

DETOPS_FOCAL_CLONES void widen_bfloat16(const uint16_t* __restrict__ src, float* __restrict__ dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = bfloat16_to_float(src[i]);
}

DETOPS_FOCAL_CLONES void narrow_bfloat16(const float* __restrict__ src, uint16_t* __restrict__ dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bfloat16(src[i]);
}

// ------------------------------------------------------------------ block views
// A block of `n` elements of a scalar_t array seen as the compute type T:
// the pointer itself when scalar_t == T, else a converted copy in `buf`.

template <typename T, typename scalar_t>
const T* load_block(const scalar_t* src, int64_t n, T* buf) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return src;
  } else {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<scalar_t, c10::Half>) {
      widen_half(reinterpret_cast<const uint16_t*>(src), buf, n);
    } else if constexpr (std::is_same_v<T, float> && std::is_same_v<scalar_t, c10::BFloat16>) {
      widen_bfloat16(reinterpret_cast<const uint16_t*>(src), buf, n);
    } else {
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<T>(src[i]);
    }
    return buf;
  }
}

// Where to compute a block that will be stored to dst: dst itself, or `buf`.
template <typename T, typename scalar_t>
T* out_block(scalar_t* dst, T* buf) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return dst;
  } else {
    return buf;
  }
}

template <typename T, typename scalar_t>
void store_block(const T* src, int64_t n, scalar_t* dst) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<scalar_t, c10::Half>) {
    narrow_half(src, reinterpret_cast<uint16_t*>(dst), n);
  } else if constexpr (std::is_same_v<T, float> && std::is_same_v<scalar_t, c10::BFloat16>) {
    narrow_bfloat16(src, reinterpret_cast<uint16_t*>(dst), n);
  } else if constexpr (!std::is_same_v<T, scalar_t>) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

template <typename scalar_t>
using compute_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Sum of per-block partial sums, in block order.
double ordered_sum(const std::vector<double>& partials) {
  double sum = 0;
  for (double p : partials) sum += p;
  return sum;
}

at::Tensor scalar_like(double value, const at::Tensor& like) {
  return at::scalar_tensor(value, like.options());
}


// The incoming gradient in the compute dtype. `uniform` is true when it is one
// value for every element: a reduced loss, or "none" followed by .sum(),
// whose gradient arrives as a stride-0 expansion of one scalar; that value is
// then read once instead of being copied out to a full tensor.
at::Tensor prepare_grad(const at::Tensor& grad_in, at::ScalarType dtype, Reduction reduction, bool& uniform) {
  uniform = reduction != Reduction::kNone;
  if (!uniform && grad_in.numel() > 0) {
    uniform = true;
    for (int64_t d = 0; d < grad_in.dim(); ++d) uniform = uniform && (grad_in.stride(d) == 0 || grad_in.size(d) == 1);
  }
  if (uniform) return grad_in.as_strided({1}, {1}, grad_in.storage_offset()).to(dtype).contiguous();
  return grad_in.to(dtype).contiguous();
}

// ------------------------------------------------------------------ dense sigmoid focal loss

// gamma = 0: torchvision's loss is alpha_t * BCE-with-logits (its modulating
// factor is exactly 1). torch's own ops, in torchvision's order, give
// torchvision's (and BCE's) values bit for bit, which the fused kernel's
// vectorised exp / log1p polynomials would not. float16 / bfloat16 are
// computed in float32 and rounded once, as the fused kernel does.
at::Tensor bce_focal_forward(const at::Tensor& inputs_in, const at::Tensor& targets_in, double alpha,
                             Reduction reduction) {
  const at::ScalarType dtype = inputs_in.scalar_type(), compute = compute_dtype(dtype);
  const at::Tensor inputs = inputs_in.contiguous().to(compute), targets = targets_in.contiguous().to(compute);
  at::Tensor loss = at::binary_cross_entropy_with_logits(inputs, targets, std::nullopt, std::nullopt, 0);
  if (alpha >= 0) {
    const at::Tensor alpha_t = at::mul(targets, alpha).add(at::mul(at::rsub(targets, 1), 1.0 - alpha));
    loss = at::mul(alpha_t, loss);
  }
  if (reduction == Reduction::kMean) loss = loss.mean();
  if (reduction == Reduction::kSum) loss = loss.sum();
  return loss.to(dtype);
}

at::Tensor sigmoid_forward_cpu(const at::Tensor& inputs_in, const at::Tensor& targets_in, double alpha,
                               double gamma, c10::string_view reduction_name) {
  check_dense_args(inputs_in, targets_in);
  check_coeffs(alpha, gamma);
  const Reduction reduction = parse_reduction(reduction_name);
  if (gamma_kind(gamma) == GammaKind::kZero) return bce_focal_forward(inputs_in, targets_in, alpha, reduction);
  const at::Tensor inputs = inputs_in.contiguous(), targets = targets_in.contiguous();
  const int64_t n = inputs.numel();
  const int64_t blocks = ceil_div(n, kBlock);
  const GammaKind kind = gamma_kind(gamma);
  at::Tensor out;
  if (reduction == Reduction::kNone) out = at::empty_like(inputs);
  std::vector<double> partials(reduction == Reduction::kNone ? 0 : blocks, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "sigmoid_focal_loss_cpu", [&] {
    using T = compute_t<scalar_t>;
    const Coeffs<T> c = make_coeffs<T>(alpha, gamma);
    const scalar_t* x = inputs.const_data_ptr<scalar_t>();
    const scalar_t* t = targets.const_data_ptr<scalar_t>();
    scalar_t* o = reduction == Reduction::kNone ? out.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, blocks, kBlocksPerTask, [&](int64_t b0, int64_t b1) {
      std::vector<T> buf(std::is_same_v<T, scalar_t> ? 0 : 3 * kBlock);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t off = b * kBlock, len = std::min(kBlock, n - off);
        const T* xb = load_block<T>(x + off, len, buf.data());
        const T* tb = load_block<T>(t + off, len, buf.data() + kBlock);
        if (o != nullptr) {
          T* ob = out_block<T>(o + off, buf.data() + 2 * kBlock);
          Kernels::forward_store(xb, tb, -1, ob, len, c, kind);
          store_block(ob, len, o + off);
        } else {
          partials[b] = static_cast<double>(Kernels::forward_sum(xb, tb, -1, len, c, kind));
        }
      }
    });
  });
  if (reduction == Reduction::kNone) return out;
  const double sum = ordered_sum(partials);
  return scalar_like(reduction == Reduction::kSum ? sum : sum / static_cast<double>(n), inputs);
}

std::tuple<at::Tensor, at::Tensor> sigmoid_backward_cpu(const at::Tensor& grad_in, const at::Tensor& inputs_in,
                                                        const at::Tensor& targets_in, double alpha, double gamma,
                                                        c10::string_view reduction_name, bool targets_grad) {
  check_dense_args(inputs_in, targets_in);
  check_coeffs(alpha, gamma);
  const Reduction reduction = parse_reduction(reduction_name);
  check_grad(grad_in, inputs_in.sizes(), reduction);
  const at::Tensor inputs = inputs_in.contiguous(), targets = targets_in.contiguous();
  bool uniform = false;
  const at::Tensor grad = prepare_grad(grad_in, inputs.scalar_type(), reduction, uniform);
  const int64_t n = inputs.numel();
  const int64_t blocks = ceil_div(n, kBlock);
  const GammaKind kind = gamma_kind(gamma);
  at::Tensor grad_inputs = at::empty_like(inputs);
  at::Tensor grad_targets = targets_grad ? at::empty_like(targets) : at::empty({0}, inputs.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "sigmoid_focal_loss_backward_cpu",
                                  [&] {
    using T = compute_t<scalar_t>;
    const Coeffs<T> c = make_coeffs<T>(alpha, gamma);
    const scalar_t* x = inputs.const_data_ptr<scalar_t>();
    const scalar_t* t = targets.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const T g_scalar = uniform_grad<T>(g, uniform, reduction, n);
    scalar_t* gx = grad_inputs.mutable_data_ptr<scalar_t>();
    scalar_t* gt = targets_grad ? grad_targets.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, blocks, kBlocksPerTask, [&](int64_t b0, int64_t b1) {
      std::vector<T> buf(std::is_same_v<T, scalar_t> ? 0 : 4 * kBlock);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t off = b * kBlock, len = std::min(kBlock, n - off);
        const T* xb = load_block<T>(x + off, len, buf.data());
        const T* tb = load_block<T>(t + off, len, buf.data() + kBlock);
        const T* gb = uniform ? nullptr : load_block<T>(g + off, len, buf.data() + 2 * kBlock);
        T* ob = out_block<T>(gx + off, buf.data() + 3 * kBlock);
        Kernels::backward_input(xb, tb, -1, gb, g_scalar, ob, len, c, kind);
        store_block(ob, len, gx + off);
        if (gt != nullptr) {
          ob = out_block<T>(gt + off, buf.data() + 3 * kBlock);
          Kernels::backward_target(xb, tb, gb, g_scalar, ob, len, c, kind);
          store_block(ob, len, gt + off);
        }
      }
    });
  });
  return {grad_inputs, grad_targets};
}

// ------------------------------------------------------------------ indexed sigmoid focal loss

void check_special_labels(int64_t num_classes, int64_t background, int64_t ignore_index) {
  TORCH_CHECK(background < 0 || background >= num_classes,
              "background must not be a class index in [0, ", num_classes, "), got ", background);
  TORCH_CHECK(ignore_index < 0 || ignore_index >= num_classes,
              "ignore_index must not be a class index in [0, ", num_classes, "), got ", ignore_index);
  TORCH_CHECK(background != ignore_index, "background and ignore_index must differ, both are ", background);
}

// Rows per block so that a block holds about kRowElems elements.
int64_t rows_per_block(int64_t cols) { return std::max<int64_t>(1, kRowElems / std::max<int64_t>(cols, 1)); }

// Row blocks per parallel task: at least kParallelElems elements.
int64_t row_grain(int64_t per_block, int64_t cols) {
  return std::max<int64_t>(1, kParallelElems / std::max<int64_t>(per_block * cols, 1));
}

// Column of the target 1 for a row's label: the label, or -1 (all zeros) for background.
struct LabelRule {
  int64_t num_classes, background, ignore_index;
  // Returns false for an ignored row; throws through `bad` for a label out of range.
  bool column(int64_t label, int64_t& col, std::atomic<int64_t>& bad) const {
    if (label == ignore_index) return false;
    if (label == background) {
      col = -1;
      return true;
    }
    if (label < 0 || label >= num_classes) {
      bad.store(label, std::memory_order_relaxed);
      return false;
    }
    col = label;
    return true;
  }
};

void throw_bad_label(const std::atomic<int64_t>& bad, const std::atomic<bool>& seen, const char* name,
                     const LabelRule& rule, bool with_background) {
  if (!seen.load()) return;
  if (with_background) {
    TORCH_CHECK_VALUE(false, name, " must be in [0, ", rule.num_classes, "), background (", rule.background,
                ") or ignore_index (", rule.ignore_index, "), found ", bad.load());
  }
  TORCH_CHECK_VALUE(false, name, " must be in [0, ", rule.num_classes, ") or ignore_index (", rule.ignore_index,
              "), found ", bad.load());
}

// Resolves the labels of rows [r0, r0 + n) into columns (see indexed_rows_forward);
// returns how many rows are not ignored.
int64_t resolve_rows(const int64_t* lab, int64_t r0, int64_t n, const LabelRule& rule, int64_t* col_of_row,
                     std::atomic<int64_t>& bad, std::atomic<bool>& seen) {
  int64_t valid = 0;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t label = lab[r0 + r];
    int64_t col = -1;
    if (rule.column(label, col, bad)) {
      col_of_row[r] = col;
      ++valid;
    } else {
      if (label != rule.ignore_index) seen.store(true);
      col_of_row[r] = kIgnoredRow;
    }
  }
  return valid;
}

at::Tensor indexed_forward_cpu(const at::Tensor& inputs_in, const at::Tensor& labels_in, double alpha, double gamma,
                               c10::string_view reduction_name, int64_t background, int64_t ignore_index) {
  check_indexed_args(inputs_in, labels_in, "labels");
  check_coeffs(alpha, gamma);
  const Reduction reduction = parse_reduction(reduction_name);
  const at::Tensor inputs = inputs_in.contiguous(), labels = labels_in.contiguous();
  const int64_t rows = inputs.size(0), cols = inputs.size(1);
  check_special_labels(cols, background, ignore_index);
  const LabelRule rule{cols, background, ignore_index};
  const int64_t per_block = rows_per_block(cols), blocks = ceil_div(rows, per_block);
  const GammaKind kind = gamma_kind(gamma);
  at::Tensor out;
  if (reduction == Reduction::kNone) out = at::empty_like(inputs);
  std::vector<double> partials(blocks, 0.0);
  std::vector<int64_t> counts(blocks, 0);
  std::atomic<int64_t> bad{0};
  std::atomic<bool> seen{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "sigmoid_focal_loss_indexed_cpu",
                                  [&] {
    using T = compute_t<scalar_t>;
    const Coeffs<T> c = make_coeffs<T>(alpha, gamma);
    const scalar_t* x = inputs.const_data_ptr<scalar_t>();
    const int64_t* lab = labels.const_data_ptr<int64_t>();
    scalar_t* o = reduction == Reduction::kNone ? out.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, blocks, row_grain(per_block, cols), [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> col_of_row(per_block);
      std::vector<T> buf(std::is_same_v<T, scalar_t> ? 0 : 2 * per_block * cols);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * per_block, n = std::min(rows, r0 + per_block) - r0, off = r0 * cols;
        counts[b] = resolve_rows(lab, r0, n, rule, col_of_row.data(), bad, seen);
        const T* xb = load_block<T>(x + off, n * cols, buf.data());
        if (o != nullptr) {
          T* ob = out_block<T>(o + off, buf.data() + per_block * cols);
          Kernels::indexed_rows_forward(xb, col_of_row.data(), n, cols, ob, c, kind);
          store_block(ob, n * cols, o + off);
        } else {
          partials[b] = Kernels::indexed_rows_forward(xb, col_of_row.data(), n, cols, static_cast<T*>(nullptr), c,
                                                      kind);
        }
      }
    });
  });
  throw_bad_label(bad, seen, "labels", rule, true);
  if (reduction == Reduction::kNone) return out;
  const double sum = ordered_sum(partials);
  int64_t valid_rows = 0;
  for (int64_t k : counts) valid_rows += k;
  // "mean" averages over the elements of the rows that are not ignored, as the
  // one-hot form does on inputs[valid], targets[valid].
  return scalar_like(reduction == Reduction::kSum ? sum : sum / static_cast<double>(valid_rows * cols), inputs);
}

// Rows not ignored, for the "mean" of the backward pass.
int64_t count_valid_rows(const at::Tensor& labels, int64_t ignore_index) {
  const int64_t* lab = labels.const_data_ptr<int64_t>();
  int64_t count = 0;
  for (int64_t r = 0; r < labels.numel(); ++r) count += lab[r] != ignore_index;
  return count;
}

at::Tensor indexed_backward_cpu(const at::Tensor& grad_in, const at::Tensor& inputs_in, const at::Tensor& labels_in,
                                double alpha, double gamma, c10::string_view reduction_name, int64_t background,
                                int64_t ignore_index) {
  check_indexed_args(inputs_in, labels_in, "labels");
  check_coeffs(alpha, gamma);
  const Reduction reduction = parse_reduction(reduction_name);
  check_grad(grad_in, inputs_in.sizes(), reduction);
  const at::Tensor inputs = inputs_in.contiguous(), labels = labels_in.contiguous();
  bool uniform = false;
  const at::Tensor grad = prepare_grad(grad_in, inputs.scalar_type(), reduction, uniform);
  const int64_t rows = inputs.size(0), cols = inputs.size(1);
  check_special_labels(cols, background, ignore_index);
  const LabelRule rule{cols, background, ignore_index};
  const int64_t per_block = rows_per_block(cols), blocks = ceil_div(rows, per_block);
  const GammaKind kind = gamma_kind(gamma);
  const int64_t valid_rows = reduction == Reduction::kMean ? count_valid_rows(labels, ignore_index) : 0;
  at::Tensor grad_inputs = at::empty_like(inputs);
  std::atomic<int64_t> bad{0};
  std::atomic<bool> seen{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(),
                                  "sigmoid_focal_loss_indexed_backward_cpu", [&] {
    using T = compute_t<scalar_t>;
    const Coeffs<T> c = make_coeffs<T>(alpha, gamma);
    const scalar_t* x = inputs.const_data_ptr<scalar_t>();
    const int64_t* lab = labels.const_data_ptr<int64_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const T g_scalar = uniform_grad<T>(g, uniform, reduction, valid_rows * cols);
    scalar_t* gx = grad_inputs.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, blocks, row_grain(per_block, cols), [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> col_of_row(per_block);
      std::vector<T> buf(std::is_same_v<T, scalar_t> ? 0 : 3 * per_block * cols);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * per_block, n = std::min(rows, r0 + per_block) - r0, off = r0 * cols;
        resolve_rows(lab, r0, n, rule, col_of_row.data(), bad, seen);
        const T* xb = load_block<T>(x + off, n * cols, buf.data());
        const T* gb = uniform ? nullptr : load_block<T>(g + off, n * cols, buf.data() + per_block * cols);
        T* ob = out_block<T>(gx + off, buf.data() + 2 * per_block * cols);
        Kernels::indexed_rows_backward(xb, col_of_row.data(), n, cols, gb, g_scalar, ob, c, kind);
        store_block(ob, n * cols, gx + off);
      }
    });
  });
  throw_bad_label(bad, seen, "labels", rule, true);
  return grad_inputs;
}

// ------------------------------------------------------------------ softmax focal loss

// The checks every softmax entry point makes, and its label rule: no
// background value, so every label that is not ignored must be a class.
LabelRule check_softmax_args(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                             int64_t ignore_index) {
  check_indexed_args(inputs, targets, "targets");
  check_coeffs(alpha, gamma);
  const int64_t cols = inputs.size(1);
  TORCH_CHECK(cols > 0 || inputs.size(0) == 0, "inputs must have at least one class, got shape ", inputs.sizes());
  TORCH_CHECK(ignore_index < 0 || ignore_index >= cols, "ignore_index must not be a class index in [0, ", cols,
              "), got ", ignore_index);
  return LabelRule{cols, ignore_index, ignore_index};
}

// Resolves the targets of rows [r0, r0 + n) into classes, -1 for ignored rows;
// returns how many rows are not ignored.
int64_t resolve_softmax_rows(const int64_t* lab, int64_t r0, int64_t n, const LabelRule& rule, int64_t* k_of_row,
                             std::atomic<int64_t>& bad, std::atomic<bool>& seen) {
  int64_t valid = 0;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t label = lab[r0 + r];
    int64_t k = -1;
    if (label != rule.ignore_index && !rule.column(label, k, bad)) seen.store(true);
    k_of_row[r] = k;
    valid += k >= 0;
  }
  return valid;
}

at::Tensor softmax_forward_cpu(const at::Tensor& inputs_in, const at::Tensor& targets_in, double alpha,
                               double gamma, c10::string_view reduction_name, int64_t ignore_index) {
  const LabelRule rule = check_softmax_args(inputs_in, targets_in, alpha, gamma, ignore_index);
  const Reduction reduction = parse_reduction(reduction_name);
  const at::Tensor inputs = inputs_in.contiguous(), targets = targets_in.contiguous();
  const int64_t rows = inputs.size(0), cols = inputs.size(1);
  const int64_t per_block = rows_per_block(cols), blocks = ceil_div(rows, per_block);
  const GammaKind kind = gamma_kind(gamma);
  at::Tensor out = at::empty({reduction == Reduction::kNone ? rows : 0}, inputs.options());
  std::vector<double> partials(blocks, 0.0);
  std::vector<int64_t> counts(blocks, 0);
  std::atomic<int64_t> bad{0};
  std::atomic<bool> seen{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "softmax_focal_loss_cpu", [&] {
    using T = compute_t<scalar_t>;
    const T scale = alpha >= 0 ? T(alpha) : T(1);
    const scalar_t* x = inputs.const_data_ptr<scalar_t>();
    const int64_t* lab = targets.const_data_ptr<int64_t>();
    scalar_t* o = reduction == Reduction::kNone ? out.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, blocks, row_grain(per_block, cols), [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> k_of_row(per_block);
      std::vector<T> buf(std::is_same_v<T, scalar_t> ? 0 : per_block * (cols + 1));
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * per_block, n = std::min(rows, r0 + per_block) - r0;
        counts[b] = resolve_softmax_rows(lab, r0, n, rule, k_of_row.data(), bad, seen);
        const T* xb = load_block<T>(x + r0 * cols, n * cols, buf.data());
        T* ob = o != nullptr ? out_block<T>(o + r0, buf.data() + per_block * cols) : nullptr;
        partials[b] = Kernels::softmax_rows_forward(xb, k_of_row.data(), n, cols, scale, T(gamma), ob, kind);
        if (o != nullptr) store_block(ob, n, o + r0);
      }
    });
  });
  throw_bad_label(bad, seen, "targets", rule, false);
  if (reduction == Reduction::kNone) return out;
  const double sum = ordered_sum(partials);
  int64_t valid_rows = 0;
  for (int64_t k : counts) valid_rows += k;
  return scalar_like(reduction == Reduction::kSum ? sum : sum / static_cast<double>(valid_rows), inputs);
}

at::Tensor softmax_backward_cpu(const at::Tensor& grad_in, const at::Tensor& inputs_in, const at::Tensor& targets_in,
                                double alpha, double gamma, c10::string_view reduction_name, int64_t ignore_index) {
  const LabelRule rule = check_softmax_args(inputs_in, targets_in, alpha, gamma, ignore_index);
  const Reduction reduction = parse_reduction(reduction_name);
  check_grad(grad_in, {inputs_in.size(0)}, reduction);
  const at::Tensor inputs = inputs_in.contiguous(), targets = targets_in.contiguous();
  bool uniform = false;
  const at::Tensor grad = prepare_grad(grad_in, inputs.scalar_type(), reduction, uniform);
  const int64_t rows = inputs.size(0), cols = inputs.size(1);
  const int64_t per_block = rows_per_block(cols), blocks = ceil_div(rows, per_block);
  const GammaKind kind = gamma_kind(gamma);
  const int64_t valid_rows = reduction == Reduction::kMean ? count_valid_rows(targets, ignore_index) : 0;
  at::Tensor grad_inputs = at::empty_like(inputs);
  std::atomic<int64_t> bad{0};
  std::atomic<bool> seen{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "softmax_focal_loss_backward_cpu",
                                  [&] {
    using T = compute_t<scalar_t>;
    const T scale = alpha >= 0 ? T(alpha) : T(1);
    const scalar_t* x = inputs.const_data_ptr<scalar_t>();
    const int64_t* lab = targets.const_data_ptr<int64_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const T g_scalar = uniform_grad<T>(g, uniform, reduction, valid_rows);
    scalar_t* gx = grad_inputs.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, blocks, row_grain(per_block, cols), [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> k_of_row(per_block);
      std::vector<T> buf(std::is_same_v<T, scalar_t> ? 0 : per_block * (2 * cols + 1));
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * per_block, n = std::min(rows, r0 + per_block) - r0, off = r0 * cols;
        resolve_softmax_rows(lab, r0, n, rule, k_of_row.data(), bad, seen);
        const T* xb = load_block<T>(x + off, n * cols, buf.data());
        const T* gb = uniform ? nullptr : load_block<T>(g + r0, n, buf.data() + per_block * cols);
        T* ob = out_block<T>(gx + off, buf.data() + per_block * (cols + 1));
        Kernels::softmax_rows_backward(xb, k_of_row.data(), n, cols, gb, g_scalar, scale, T(gamma), ob, kind);
        store_block(ob, n * cols, gx + off);
      }
    });
  });
  throw_bad_label(bad, seen, "targets", rule, false);
  return grad_inputs;
}

}  // namespace
// softmax_focal_loss_with_grad: the reduced loss and d loss / d inputs (for an
// upstream gradient of 1) in one pass, for training, where the backward then
// only scales the saved gradient.
std::tuple<at::Tensor, at::Tensor> softmax_forward_backward_cpu(const at::Tensor& inputs_in,
                                                                const at::Tensor& targets_in, double alpha,
                                                                double gamma, c10::string_view reduction_name,
                                                                int64_t ignore_index) {
  const LabelRule rule = check_softmax_args(inputs_in, targets_in, alpha, gamma, ignore_index);
  const Reduction reduction = parse_reduction(reduction_name);
  TORCH_CHECK_VALUE(reduction != Reduction::kNone, "softmax_focal_loss_with_grad: reduction must be 'mean' or 'sum'");
  const at::Tensor inputs = inputs_in.contiguous(), targets = targets_in.contiguous();
  const int64_t rows = inputs.size(0), cols = inputs.size(1);
  const int64_t per_block = rows_per_block(cols), blocks = ceil_div(rows, per_block);
  const GammaKind kind = gamma_kind(gamma);
  const int64_t valid_rows = count_valid_rows(targets, ignore_index);
  at::Tensor grad_inputs = at::empty_like(inputs);
  std::vector<double> partials(blocks, 0.0);
  std::atomic<int64_t> bad{0};
  std::atomic<bool> seen{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.scalar_type(), "softmax_focal_loss_with_grad_cpu",
                                  [&] {
    using T = compute_t<scalar_t>;
    const T scale = alpha >= 0 ? T(alpha) : T(1);
    // The gradient of the mean is the sum's over the rows not ignored (as uniform_grad).
    const T g_scalar = reduction == Reduction::kMean ? T(1) / static_cast<T>(valid_rows) : T(1);
    const scalar_t* x = inputs.const_data_ptr<scalar_t>();
    const int64_t* lab = targets.const_data_ptr<int64_t>();
    scalar_t* gx = grad_inputs.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, blocks, row_grain(per_block, cols), [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> k_of_row(per_block);
      std::vector<T> buf(std::is_same_v<T, scalar_t> ? 0 : 2 * per_block * cols);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * per_block, n = std::min(rows, r0 + per_block) - r0, off = r0 * cols;
        resolve_softmax_rows(lab, r0, n, rule, k_of_row.data(), bad, seen);
        const T* xb = load_block<T>(x + off, n * cols, buf.data());
        T* ob = out_block<T>(gx + off, buf.data() + per_block * cols);
        partials[b] =
            Kernels::softmax_rows_forward_backward(xb, k_of_row.data(), n, cols, g_scalar, scale, T(gamma), ob, kind);
        store_block(ob, n * cols, gx + off);
      }
    });
  });
  throw_bad_label(bad, seen, "targets", rule, false);
  const double sum = ordered_sum(partials);
  return {scalar_like(reduction == Reduction::kSum ? sum : sum / static_cast<double>(valid_rows), inputs),
          grad_inputs};
}

}  // namespace focal
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  using namespace detops::focal;
  m.impl("sigmoid_focal_loss", &sigmoid_forward_cpu);
  m.impl("sigmoid_focal_loss_backward", &sigmoid_backward_cpu);
  m.impl("sigmoid_focal_loss_indexed", &indexed_forward_cpu);
  m.impl("sigmoid_focal_loss_indexed_backward", &indexed_backward_cpu);
  m.impl("softmax_focal_loss", &softmax_forward_cpu);
  m.impl("softmax_focal_loss_backward", &softmax_backward_cpu);
  m.impl("softmax_focal_loss_with_grad", &softmax_forward_backward_cpu);
}
