// CPU kernels of corner pooling. Each task owns a block of lanes of one outer
// index (corner_pool_math.h) and walks them together along the scan, so the
// inner loop runs over neighbouring lanes: contiguous memory (and SIMD) for
// vertical pools on NCHW and every pool on channels-last; rows of one plane,
// still in cache, for horizontal pools on NCHW. No index tensor: the backward
// reads the forward's choices back from (input, output) in one reverse pass.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "common/roi_batch.h"
#include "corner_pool/corner_pool.h"

namespace detops {
namespace corner_pool {
namespace {

// Lanes per task: a few cache lines of contiguous lanes, fewer when lanes are
// strided (each lane is then its own cache line).
int64_t block_of(const ScanGeometry& g) { return g.s_inner == 1 ? 256 : 16; }

// Calls f(o, i0, nb) over (outer, lane block) tasks in parallel.
template <typename F>
void for_each_block(const ScanGeometry& g, F&& f) {
  const int64_t B = block_of(g);
  const int64_t blocks = ceil_div(g.inner, B);
  const int64_t tasks = g.outer * blocks;
  at::parallel_for(0, tasks, grain_for(tasks, double(g.outer) * g.inner * g.L, 2e5), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / blocks, i0 = (t % blocks) * B;
      f(o, i0, std::min(B, g.inner - i0));
    }
  });
}

at::Tensor corner_pool_cpu(const at::Tensor& input_in, c10::string_view direction) {
  const Operands op = forward_operands(input_in, direction);
  const at::Tensor& input = op.input;
  at::Tensor out = op.result;
  if (out.numel() == 0) return out;
  const ScanGeometry g = op.geometry;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "corner_pool_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* o_ptr = out.mutable_data_ptr<scalar_t>();
    for_each_block(g, [&](int64_t o, int64_t i0, int64_t nb) {
      T best[256];
      std::fill(best, best + nb, -std::numeric_limits<T>::infinity());
      const int64_t base = o * g.s_outer + g.start + i0 * g.s_inner;
      const int64_t si = g.s_inner;
      for (int64_t l = 0; l < g.L; ++l) {
        const scalar_t* __restrict__ src = in + base + l * g.step;
        scalar_t* __restrict__ dst = o_ptr + base + l * g.step;
        for (int64_t i = 0; i < nb; ++i) {
          const T x = T(src[i * si]);
          best[i] = takes(x, best[i]) ? x : best[i];
          dst[i * si] = scalar_t(best[i]);
        }
      }
    });
  });
  return out;
}

at::Tensor corner_pool_backward_cpu(const at::Tensor& grad_in, const at::Tensor& input_in,
                                    const at::Tensor& output_in, c10::string_view direction) {
  const Operands op = backward_operands(grad_in, input_in, output_in, direction);
  const at::Tensor &input = op.input, &output = op.output, &grad = op.grad;
  at::Tensor grad_input = op.result;
  if (grad_input.numel() == 0) return grad_input;
  const ScanGeometry g = op.geometry;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "corner_pool_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* out = output.const_data_ptr<scalar_t>();
    const scalar_t* gr = grad.const_data_ptr<scalar_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    for_each_block(g, [&](int64_t o, int64_t i0, int64_t nb) {
      // acc: the gradient of the scan points after the last one taken, which
      // all pooled the value taken there.
      T acc[256];
      std::fill(acc, acc + nb, T(0));
      const int64_t base = o * g.s_outer + g.start + i0 * g.s_inner;
      const int64_t si = g.s_inner;
      for (int64_t l = g.L - 1; l >= 0; --l) {
        const int64_t p = base + l * g.step;
        const scalar_t* __restrict__ x = in + p;
        const scalar_t* __restrict__ y = out + p;
        const scalar_t* __restrict__ dy = gr + p;
        scalar_t* __restrict__ dx = gi + p;
        for (int64_t i = 0; i < nb; ++i) {
          const T a = acc[i] + T(dy[i * si]);
          const bool t = took(T(x[i * si]), T(y[i * si]));
          dx[i * si] = scalar_t(t ? a : T(0));
          acc[i] = t ? T(0) : a;
        }
      }
    });
  });
  return grad_input;
}

}  // namespace
}  // namespace corner_pool
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  using namespace detops::corner_pool;
  m.impl("corner_pool", &corner_pool_cpu);
  m.impl("corner_pool_backward", &corner_pool_backward_cpu);
}
