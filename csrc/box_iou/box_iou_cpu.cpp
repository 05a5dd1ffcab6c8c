// CPU kernels of the IoU family: at::parallel_for over rows (matrix) or pairs
// (aligned, loss). The matrix inner loop reads the second set of boxes as
// structure-of-arrays so that the compiler vectorises it.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/atan.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/huge_pages.h"
#include "box_iou/box_iou.h"

namespace detops {
namespace box_iou {
namespace {

constexpr int64_t kGrain = 16384;  // pairs per parallel task

template <typename T, typename scalar_t>
DETOPS_HD Box<T> load_box(const scalar_t* p) {
  return {T(p[0]), T(p[1]), T(p[2]), T(p[3])};
}

template <typename scalar_t, typename A>
DETOPS_HD void store_grad(scalar_t* p, const BoxGrad<A>& g) {
  p[0] = scalar_t(g.x1);
  p[1] = scalar_t(g.y1);
  p[2] = scalar_t(g.x2);
  p[3] = scalar_t(g.y2);
}

template <typename A, typename T>
void accumulate(BoxGrad<A>& acc, const BoxGrad<T>& g) {
  acc.x1 += A(g.x1);
  acc.y1 += A(g.y1);
  acc.x2 += A(g.x2);
  acc.y2 += A(g.y2);
}

// The per-box quantities without CIoU's atan, which the CPU takes from torch
// (ciou_atans) instead of the shared polynomial: only the fields the caller keeps.
template <Variant V, BoxFormat F, typename T, typename scalar_t>
DETOPS_HD BoxInfo<T> load_info(const scalar_t* p) {
  constexpr Variant kFields = V == Variant::kCIoU ? Variant::kDIoU : V;
  return make_info_as<kFields, F>(T(p[0]), T(p[1]), T(p[2]), T(p[3]));
}

// atan of each element in place, by torch's own atan: torchvision's CIoU
// calls torch.atan on the w / h of each box set, and torch's vectorised and
// scalar paths round differently, so only the same call on the same number of
// elements gives its bits.
template <typename T>
void torch_atan_(std::vector<T>& values) {
  if (values.empty()) return;
  at::Tensor t = at::from_blob(values.data(), {static_cast<int64_t>(values.size())},
                               at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  at::atan_(t);
}

// atan(w / h) of each of n boxes given in format F, by torch's atan; empty
// unless the variant is CIoU.
template <Variant V, BoxFormat F, typename T, typename scalar_t>
std::vector<T> ciou_atans(const scalar_t* boxes, int64_t n) {
  std::vector<T> out;
  if constexpr (V == Variant::kCIoU) {
    out.resize(n);
    for (int64_t j = 0; j < n; ++j) {
      const BoxInfo<T> info = load_info<V, F, T>(boxes + 4 * j);
      out[j] = aspect_ratio(Box<T>{info.x1, info.y1, info.x2, info.y2});
    }
    torch_atan_(out);
  }
  return out;
}

// Per-box quantities of one set of boxes, one array per field.
template <typename T>
struct BoxInfoArrays {
  std::vector<T> x1, y1, x2, y2, area, cx, cy, atan_ratio;

  template <Variant V, BoxFormat F, typename scalar_t>
  BoxInfoArrays(VariantTag<V>, FormatTag<F>, const scalar_t* boxes, int64_t n)
      : x1(n), y1(n), x2(n), y2(n), area(n), cx(n), cy(n), atan_ratio(n, T(0)) {
    for (int64_t j = 0; j < n; ++j) {
      const BoxInfo<T> info = load_info<V, F, T>(boxes + 4 * j);
      x1[j] = info.x1; y1[j] = info.y1; x2[j] = info.x2; y2[j] = info.y2;
      area[j] = info.area; cx[j] = info.cx; cy[j] = info.cy;
      if constexpr (V == Variant::kCIoU) atan_ratio[j] = aspect_ratio(Box<T>{info.x1, info.y1, info.x2, info.y2});
    }
    if constexpr (V == Variant::kCIoU) torch_atan_(atan_ratio);  // as ciou_atans, in the same pass over the boxes
  }

  BoxInfo<T> at(int64_t j) const { return {x1[j], y1[j], x2[j], y2[j], area[j], cx[j], cy[j], atan_ratio[j]}; }
};

template <Variant V, typename T>
void matrix_row(const BoxInfo<T>& a, const BoxInfoArrays<T>& cols, int64_t m, T eps, T* __restrict__ out) {
  const T* __restrict__ x1 = cols.x1.data();
  const T* __restrict__ y1 = cols.y1.data();
  const T* __restrict__ x2 = cols.x2.data();
  const T* __restrict__ y2 = cols.y2.data();
  const T* __restrict__ area = cols.area.data();
  const T* __restrict__ cx = cols.cx.data();
  const T* __restrict__ cy = cols.cy.data();
  const T* __restrict__ atan_ratio = cols.atan_ratio.data();
#pragma GCC ivdep
  for (int64_t j = 0; j < m; ++j) {
    const BoxInfo<T> b{x1[j], y1[j], x2[j], y2[j], area[j], cx[j], cy[j], atan_ratio[j]};
    out[j] = matrix_forward<V>(a, b, eps);
  }
}

at::Tensor matrix_forward_cpu(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in,
                              c10::string_view variant, double eps, c10::string_view fmt) {
  check_matrix_args(boxes1_in, boxes2_in);
  const Variant v = parse_variant(variant);
  const BoxFormat f = parse_format(fmt, v);
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  const int64_t B = boxes1.size(0), N = boxes1.size(1), M = boxes2.size(1);
  at::Tensor out = with_huge_pages(at::empty({B, N, M}, boxes1.options().dtype(compute_dtype(boxes1.scalar_type()))));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_matrix_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* b1 = boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b2 = boxes2.const_data_ptr<scalar_t>();
    T* o = out.mutable_data_ptr<T>();
    dispatch_variant(v, [&](auto tag) {
      constexpr Variant V = decltype(tag)::value;
      dispatch_format<V>(f, [&](auto ftag) {
        for (int64_t b = 0; b < B; ++b) {
          const BoxInfoArrays<T> rows(tag, ftag, b1 + b * N * 4, N);
          const BoxInfoArrays<T> cols(tag, ftag, b2 + b * M * 4, M);
          at::parallel_for(0, N, std::max<int64_t>(1, kGrain / M), [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
              matrix_row<V>(rows.at(i), cols, M, T(eps), o + (b * N + i) * M);
            }
          });
        }
      });
    });
  });
  return out;
}

// Gradients of the matrix: each thread takes a block of rows, sums the
// gradient of its rows' boxes directly and the columns' boxes into its own
// buffer; the buffers are added at the end (no atomics, same result for the
// same thread count).
std::tuple<at::Tensor, at::Tensor> matrix_backward_cpu(const at::Tensor& grad_in, const at::Tensor& boxes1_in,
                                                       const at::Tensor& boxes2_in, c10::string_view variant,
                                                       double eps) {
  check_matrix_args(boxes1_in, boxes2_in);
  const Variant v = parse_variant(variant);
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  const int64_t B = boxes1.size(0), N = boxes1.size(1), M = boxes2.size(1);
  check_grad(grad_in, {B, N, M});
  const at::Tensor grad = grad_in.contiguous().to(compute_dtype(boxes1.scalar_type()));
  at::Tensor grad1 = at::empty_like(boxes1), grad2 = at::empty_like(boxes2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_matrix_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    using A = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const scalar_t* b1 = boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b2 = boxes2.const_data_ptr<scalar_t>();
    const T* g = grad.const_data_ptr<T>();
    scalar_t* g1 = grad1.mutable_data_ptr<scalar_t>();
    scalar_t* g2 = grad2.mutable_data_ptr<scalar_t>();
    const int threads = at::get_num_threads();
    std::vector<BoxGrad<A>> col_partials;
    dispatch_variant(v, [&](auto tag) {
      constexpr Variant V = decltype(tag)::value;
      for (int64_t b = 0; b < B; ++b) {
        col_partials.assign(static_cast<size_t>(threads) * M, BoxGrad<A>{});
        at::parallel_for(0, N, std::max<int64_t>(1, kGrain / std::max<int64_t>(M, 1)), [&](int64_t begin, int64_t end) {
          BoxGrad<A>* cols = col_partials.data() + static_cast<int64_t>(at::get_thread_num()) * M;
          for (int64_t i = begin; i < end; ++i) {
            const Box<T> a = load_box<T>(b1 + (b * N + i) * 4);
            const T* grow = g + (b * N + i) * M;
            BoxGrad<A> row{};
            for (int64_t j = 0; j < M; ++j) {
              BoxGrad<T> ga, gb;
              matrix_backward<V>(a, load_box<T>(b2 + (b * M + j) * 4), T(eps), grow[j], ga, gb);
              accumulate(row, ga);
              accumulate(cols[j], gb);
            }
            store_grad(g1 + (b * N + i) * 4, row);
          }
        });
        at::parallel_for(0, M, 4096, [&](int64_t begin, int64_t end) {
          for (int64_t j = begin; j < end; ++j) {
            BoxGrad<A> sum{};
            for (int t = 0; t < threads; ++t) accumulate(sum, col_partials[static_cast<size_t>(t) * M + j]);
            store_grad(g2 + (b * M + j) * 4, sum);
          }
        });
      }
    });
  });
  return {grad1, grad2};
}

// ------------------------------------------------------------------ paired forms

enum class PairedForm { kAligned, kLoss };

// atan_a, atan_b: CIoU's atan(w / h) of the two boxes (0 for other variants).
template <PairedForm F, Variant V, BoxFormat BF, typename T, typename scalar_t>
DETOPS_HD T paired_forward(const scalar_t* a, const scalar_t* b, T eps, T atan_a, T atan_b) {
  if constexpr (F == PairedForm::kAligned) {
    BoxInfo<T> ia = load_info<V, BF, T>(a), ib = load_info<V, BF, T>(b);
    ia.atan_ratio = atan_a;
    ib.atan_ratio = atan_b;
    return matrix_forward<V>(ia, ib, eps);
  } else {
    return loss_forward<V>(load_box<T>(a), load_box<T>(b), eps, atan_a, atan_b);
  }
}

template <PairedForm F, Variant V, typename T>
DETOPS_HD void paired_backward(const Box<T>& a, const Box<T>& b, T eps, T g, BoxGrad<T>& ga, BoxGrad<T>& gb) {
  if constexpr (F == PairedForm::kAligned) {
    matrix_backward<V>(a, b, eps, g, ga, gb);
  } else {
    loss_backward<V>(a, b, eps, g, ga, gb);
  }
}

// The pair loops are plain functions with restrict-qualified pointers: inside
// a lambda that captures the pointers by reference, GCC must assume the
// stores alias them and does not vectorise.
template <PairedForm F, Variant V, BoxFormat BF, typename T, typename scalar_t>
void paired_forward_range(const scalar_t* __restrict__ b1, const scalar_t* __restrict__ b2, T* __restrict__ out,
                          int64_t begin, int64_t end, T eps, const T* atan1, const T* atan2) {
  for (int64_t k = begin; k < end; ++k) {
    const bool ciou = V == Variant::kCIoU;
    out[k] = paired_forward<F, V, BF, T>(b1 + 4 * k, b2 + 4 * k, eps, ciou ? atan1[k] : T(0), ciou ? atan2[k] : T(0));
  }
}

template <PairedForm F, Variant V, typename T, typename scalar_t>
void paired_backward_range(const T* __restrict__ grad, const scalar_t* __restrict__ b1,
                           const scalar_t* __restrict__ b2, scalar_t* __restrict__ g1, scalar_t* __restrict__ g2,
                           int64_t begin, int64_t end, T eps) {
  for (int64_t k = begin; k < end; ++k) {
    BoxGrad<T> ga, gb;
    paired_backward<F, V>(load_box<T>(b1 + 4 * k), load_box<T>(b2 + 4 * k), eps, grad[k], ga, gb);
    store_grad(g1 + 4 * k, ga);
    store_grad(g2 + 4 * k, gb);
  }
}

constexpr int64_t kPairGrain = kGrain / 8;

template <PairedForm F>
at::Tensor paired_forward_cpu(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in, c10::string_view variant,
                              double eps, c10::string_view fmt) {
  check_paired_args(boxes1_in, boxes2_in);
  const Variant v = parse_variant(variant);
  TORCH_CHECK(F == PairedForm::kAligned || (v != Variant::kIoU && v != Variant::kIoF),
              "box_iou_loss: variant must be 'giou', 'diou' or 'ciou'");
  const BoxFormat f = parse_format(fmt, v);
  TORCH_CHECK(F == PairedForm::kAligned || f == BoxFormat::kXYXY, "box_iou_loss: boxes must be (x1, y1, x2, y2)");
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  const int64_t K = boxes1.size(0);
  at::Tensor out = at::empty({K}, boxes1.options().dtype(compute_dtype(boxes1.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_paired_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* b1 = boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b2 = boxes2.const_data_ptr<scalar_t>();
    T* o = out.mutable_data_ptr<T>();
    dispatch_variant(v, [&](auto tag) {
      constexpr Variant V = decltype(tag)::value;
      dispatch_format<V>(f, [&](auto ftag) {
        constexpr BoxFormat BF = decltype(ftag)::value;
        const std::vector<T> atan1 = ciou_atans<V, BF, T>(b1, K), atan2 = ciou_atans<V, BF, T>(b2, K);
        at::parallel_for(0, K, kPairGrain, [&](int64_t begin, int64_t end) {
          paired_forward_range<F, V, BF>(b1, b2, o, begin, end, T(eps), atan1.data(), atan2.data());
        });
      });
    });
  });
  return out;
}

template <PairedForm F>
std::tuple<at::Tensor, at::Tensor> paired_backward_cpu(const at::Tensor& grad_in, const at::Tensor& boxes1_in,
                                                       const at::Tensor& boxes2_in, c10::string_view variant,
                                                       double eps) {
  check_paired_args(boxes1_in, boxes2_in);
  const Variant v = parse_variant(variant);
  TORCH_CHECK(F == PairedForm::kAligned || (v != Variant::kIoU && v != Variant::kIoF),
              "box_iou_loss_backward: variant must be 'giou', 'diou' or 'ciou'");
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.contiguous();
  const int64_t K = boxes1.size(0);
  check_grad(grad_in, {K});
  const at::Tensor grad = grad_in.contiguous().to(compute_dtype(boxes1.scalar_type()));
  at::Tensor grad1 = at::empty_like(boxes1), grad2 = at::empty_like(boxes2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_paired_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* b1 = boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b2 = boxes2.const_data_ptr<scalar_t>();
    const T* g = grad.const_data_ptr<T>();
    scalar_t* g1 = grad1.mutable_data_ptr<scalar_t>();
    scalar_t* g2 = grad2.mutable_data_ptr<scalar_t>();
    dispatch_variant(v, [&](auto tag) {
      constexpr Variant V = decltype(tag)::value;
      at::parallel_for(0, K, kPairGrain, [&](int64_t begin, int64_t end) {
        paired_backward_range<F, V>(g, b1, b2, g1, g2, begin, end, T(eps));
      });
    });
  });
  return {grad1, grad2};
}

at::Tensor loss_forward_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view variant,
                            double eps) {
  return paired_forward_cpu<PairedForm::kLoss>(boxes1, boxes2, variant, eps, "xyxy");
}

}  // namespace
}  // namespace box_iou
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  using namespace detops::box_iou;
  m.impl("box_iou_matrix", &matrix_forward_cpu);
  m.impl("box_iou_matrix_backward", &matrix_backward_cpu);
  m.impl("box_iou_aligned", &paired_forward_cpu<PairedForm::kAligned>);
  m.impl("box_iou_aligned_backward", &paired_backward_cpu<PairedForm::kAligned>);
  m.impl("box_iou_loss", &loss_forward_cpu);
  m.impl("box_iou_loss_backward", &paired_backward_cpu<PairedForm::kLoss>);
}
