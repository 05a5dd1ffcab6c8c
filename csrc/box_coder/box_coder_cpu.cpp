// CPU kernels of box encoding/decoding: at::parallel_for over boxes. Each task
// walks its boxes in blocks: a first pass writes the block's exponents (or log
// arguments) to a small buffer, torch's own vectorised exp/log runs over it (so
// these values are bit-identical to torchvision's), and a second pass finishes
// the block. Inputs and outputs stay in cache between the passes.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/log.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "box_coder/box_coder.h"

namespace detops {
namespace box_coder {
namespace {

constexpr int64_t kGrain = 4096;   // boxes per parallel task
constexpr int64_t kBlock = 1024;   // codes per exp/log block

// exp or log in place over n values, with torch's vectorised CPU kernel.
template <typename T>
void exp_inplace(T* values, int64_t n) {
  at::Tensor t = at::from_blob(values, {n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  at::exp_(t);
}

template <typename T>
void log_inplace(T* values, int64_t n) {
  at::Tensor t = at::from_blob(values, {n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  at::log_(t);
}

template <typename T, typename scalar_t>
Box4<T> load(const scalar_t* p) {
  return {{T(p[0]), T(p[1]), T(p[2]), T(p[3])}};
}

template <typename scalar_t, typename T>
void store(scalar_t* p, const Box4<T>& b) {
  p[0] = scalar_t(b.v[0]);
  p[1] = scalar_t(b.v[1]);
  p[2] = scalar_t(b.v[2]);
  p[3] = scalar_t(b.v[3]);
}

// The clamped exponents (dw, dh) of n codes, interleaved.
template <typename T, typename scalar_t>
void exponents_of_block(const scalar_t* __restrict rel, int64_t n, const CoderParams<T>& p, T* __restrict exps) {
  for (int64_t c = 0; c < n; ++c) {
    decode_exponents(load<T>(rel + 4 * c), p, exps[2 * c], exps[2 * c + 1]);
  }
}

// decode_from_exp over n boxes of one code each.
template <typename T, typename scalar_t>
void finish_block_one_code(const scalar_t* __restrict box, const scalar_t* __restrict rel, int64_t n,
                           const CoderParams<T>& p, const T* __restrict exps, scalar_t* __restrict out) {
  for (int64_t c = 0; c < n; ++c) {
    store(out + 4 * c, decode_from_exp(load<T>(box + 4 * c), load<T>(rel + 4 * c), p, exps[2 * c], exps[2 * c + 1]));
  }
}

at::Tensor decode_cpu(const at::Tensor& rel_codes_in, const at::Tensor& boxes_in, at::ArrayRef<double> weights,
                      double bbox_xform_clip) {
  check_decode_args(rel_codes_in, boxes_in);
  const CoderParams<double> params = make_params(weights, bbox_xform_clip, "box_decode");
  const at::Tensor rel_codes = rel_codes_in.contiguous(), boxes = boxes_in.contiguous();
  const int64_t N = rel_codes.size(0), K = rel_codes.size(1) / 4;
  at::Tensor out = at::empty_like(rel_codes);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rel_codes.scalar_type(), "box_decode_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const CoderParams<T> p = cast_params<T>(params);
    const scalar_t* rel = rel_codes.const_data_ptr<scalar_t>();
    const scalar_t* box = boxes.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t block_boxes = std::max<int64_t>(1, kBlock / K);
    at::parallel_for(0, N, std::max<int64_t>(1, kGrain / K), [&](int64_t begin, int64_t end) {
      std::vector<T> exps(static_cast<size_t>(2 * block_boxes * K));
      for (int64_t b0 = begin; b0 < end; b0 += block_boxes) {
        const int64_t b1 = std::min(end, b0 + block_boxes);
        const int64_t codes = (b1 - b0) * K;
        const int64_t first = b0 * K;  // first code of the block
        exponents_of_block(rel + 4 * first, codes, p, exps.data());
        exp_inplace(exps.data(), 2 * codes);
        if (K == 1) {  // one code per box: a flat loop the compiler vectorises
          finish_block_one_code(box + 4 * b0, rel + 4 * first, codes, p, exps.data(), o + 4 * first);
          continue;
        }
        for (int64_t i = b0, c = 0; i < b1; ++i) {
          const Box4<T> b = load<T>(box + 4 * i);
          for (int64_t k = 0; k < K; ++k, ++c) {
            const int64_t off = 4 * (first + c);
            store(o + off, decode_from_exp(b, load<T>(rel + off), p, exps[2 * c], exps[2 * c + 1]));
          }
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> decode_backward_cpu(const at::Tensor& grad_in, const at::Tensor& rel_codes_in,
                                                       const at::Tensor& boxes_in, at::ArrayRef<double> weights,
                                                       double bbox_xform_clip) {
  check_decode_args(rel_codes_in, boxes_in);
  check_grad(grad_in, rel_codes_in);
  const CoderParams<double> params = make_params(weights, bbox_xform_clip, "box_decode_backward");
  const at::Tensor rel_codes = rel_codes_in.contiguous(), boxes = boxes_in.contiguous();
  const at::Tensor grad = grad_in.contiguous().to(rel_codes.scalar_type());
  const int64_t N = rel_codes.size(0), K = rel_codes.size(1) / 4;
  at::Tensor grad_rel = at::empty_like(rel_codes), grad_boxes = at::empty_like(boxes);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rel_codes.scalar_type(), "box_decode_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const CoderParams<T> p = cast_params<T>(params);
    const scalar_t* rel = rel_codes.const_data_ptr<scalar_t>();
    const scalar_t* box = boxes.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* g_rel = grad_rel.mutable_data_ptr<scalar_t>();
    scalar_t* g_box = grad_boxes.mutable_data_ptr<scalar_t>();
    const int64_t K1 = std::max<int64_t>(K, 1);
    const int64_t block_boxes = std::max<int64_t>(1, kBlock / K1);
    at::parallel_for(0, N, std::max<int64_t>(1, kGrain / K1), [&](int64_t begin, int64_t end) {
      std::vector<T> exps(static_cast<size_t>(2 * block_boxes * K));
      for (int64_t b0 = begin; b0 < end; b0 += block_boxes) {
        const int64_t b1 = std::min(end, b0 + block_boxes);
        const int64_t codes = (b1 - b0) * K;
        const int64_t first = b0 * K;
        exponents_of_block(rel + 4 * first, codes, p, exps.data());
        if (codes > 0) exp_inplace(exps.data(), 2 * codes);
        for (int64_t i = b0, c = 0; i < b1; ++i) {
          const Box4<T> b = load<T>(box + 4 * i);
          Box4<T> gb{{T(0), T(0), T(0), T(0)}};
          for (int64_t k = 0; k < K; ++k, ++c) {
            const int64_t off = 4 * (first + c);
            Box4<T> gr;
            decode_backward_from_exp(b, load<T>(rel + off), p, exps[2 * c], exps[2 * c + 1], load<T>(g + off), gr,
                                     gb);
            store(g_rel + off, gr);
          }
          store(g_box + 4 * i, gb);
        }
      }
    });
  });
  return {grad_rel, grad_boxes};
}

at::Tensor encode_cpu(const at::Tensor& reference_in, const at::Tensor& proposals_in, at::ArrayRef<double> weights) {
  check_encode_args(reference_in, proposals_in);
  const CoderParams<double> params = make_params(weights, 0.0, "box_encode");
  const at::Tensor reference = reference_in.contiguous(), proposals = proposals_in.contiguous();
  const int64_t N = reference.size(0);
  at::Tensor out = at::empty_like(reference);
  if (N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, reference.scalar_type(), "box_encode_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const CoderParams<T> p = cast_params<T>(params);
    const scalar_t* ref = reference.const_data_ptr<scalar_t>();
    const scalar_t* prop = proposals.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
      std::vector<T> logs(static_cast<size_t>(2 * kBlock));
      for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
        const int64_t n = std::min(end - b0, kBlock);
        for (int64_t j = 0; j < n; ++j) {
          const int64_t i = b0 + j;
          encode_ratios(load<T>(ref + 4 * i), load<T>(prop + 4 * i), logs[2 * j], logs[2 * j + 1]);
        }
        log_inplace(logs.data(), 2 * n);
        for (int64_t j = 0; j < n; ++j) {
          const int64_t i = b0 + j;
          const Box4<T> reference_box = load<T>(ref + 4 * i), proposal_box = load<T>(prop + 4 * i);
          store(o + 4 * i, encode_from_log(reference_box, proposal_box, p, logs[2 * j], logs[2 * j + 1]));
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> encode_backward_cpu(const at::Tensor& grad_in, const at::Tensor& reference_in,
                                                       const at::Tensor& proposals_in, at::ArrayRef<double> weights) {
  check_encode_args(reference_in, proposals_in);
  check_grad(grad_in, reference_in);
  const CoderParams<double> params = make_params(weights, 0.0, "box_encode_backward");
  const at::Tensor reference = reference_in.contiguous(), proposals = proposals_in.contiguous();
  const at::Tensor grad = grad_in.contiguous().to(reference.scalar_type());
  const int64_t N = reference.size(0);
  at::Tensor grad_ref = at::empty_like(reference), grad_prop = at::empty_like(proposals);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, reference.scalar_type(), "box_encode_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const CoderParams<T> p = cast_params<T>(params);
    const scalar_t* ref = reference.const_data_ptr<scalar_t>();
    const scalar_t* prop = proposals.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* g_ref = grad_ref.mutable_data_ptr<scalar_t>();
    scalar_t* g_prop = grad_prop.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        Box4<T> gr, gp;
        encode_backward(load<T>(ref + 4 * i), load<T>(prop + 4 * i), p, load<T>(g + 4 * i), gr, gp);
        store(g_ref + 4 * i, gr);
        store(g_prop + 4 * i, gp);
      }
    });
  });
  return {grad_ref, grad_prop};
}

}  // namespace
}  // namespace box_coder
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  using namespace detops::box_coder;
  m.impl("box_decode", &decode_cpu);
  m.impl("box_decode_backward", &decode_backward_cpu);
  m.impl("box_encode", &encode_cpu);
  m.impl("box_encode_backward", &encode_backward_cpu);
}
