// CPU kernels of RoI Pool. Like roi_align_cpu.cpp, each thread owns what it
// writes: NCHW maps are split into (channel, image) plane tasks that visit
// their image's RoIs in order (the plane stays in cache); channels-last maps
// into (channel block, RoI) forward tasks and (channel block, image) backward
// tasks whose inner loops run over contiguous channels. No atomics: the
// backward is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "roi_pool/roi_pool.h"

namespace detops {
namespace roi_pool {
namespace {

constexpr int64_t kChannelBlock = 16;

// Batch index (checked) and quantised geometry of every RoI.
template <typename T>
struct Plan {
  std::vector<int64_t> batch;
  std::vector<PoolRoi<T>> geo;
};

template <typename T>
Plan<T> make_plan(const at::Tensor& rois_in, int64_t N, double spatial_scale, int64_t PH, int64_t PW) {
  const at::Tensor rois = rois_in.to(c10::CppTypeToScalarType<T>::value).contiguous();
  const int64_t K = rois.size(0);
  const T* r5 = rois.const_data_ptr<T>();
  Plan<T> p;
  p.batch.resize(K);
  p.geo.resize(K);
  for (int64_t r = 0; r < K; ++r) {
    const T* b = r5 + 5 * r;
    p.batch[r] = roi_batch_index(b[0], N, r);
    p.geo[r] = pool_roi<T>(b[1], b[2], b[3], b[4], T(spatial_scale), PH, PW);
  }
  return p;
}

// The maximum of one bin of an NCHW plane and the index of the first pixel (in
// h, w order) that holds it: what torchvision's strict `v > best` scan keeps.
// That scan compiles to a maxss + cmov chain carried from pixel to pixel (4-5
// cycles a pixel: slower than torchvision's own build wherever the map is
// small enough to stay in cache). Here four independent running maxima per
// row, then a scan for the first pixel equal to the maximum (it exits early,
// its branch is predictable). A maximum still at the start value (-FLT_MAX:
// every pixel NaN or <= -FLT_MAX) means no pixel won, as in the strict scan;
// the value written is the winning pixel's own, so a zero keeps its sign.
template <typename scalar_t, typename T>
inline T row_max(const scalar_t* row, int64_t sW, int64_t n, T m0) {
  T m1 = m0, m2 = m0, m3 = m0;
  int64_t w = 0;
  if (sW == 1) {
    for (; w + 4 <= n; w += 4) {
      const T v0 = T(row[w]), v1 = T(row[w + 1]), v2 = T(row[w + 2]), v3 = T(row[w + 3]);
      m0 = v0 > m0 ? v0 : m0;
      m1 = v1 > m1 ? v1 : m1;
      m2 = v2 > m2 ? v2 : m2;
      m3 = v3 > m3 ? v3 : m3;
    }
  }
  for (; w < n; ++w) {
    const T v = T(row[w * sW]);
    m0 = v > m0 ? v : m0;
  }
  m0 = m1 > m0 ? m1 : m0;
  m2 = m3 > m2 ? m3 : m2;
  return m2 > m0 ? m2 : m0;
}

template <typename scalar_t, typename T>
inline void bin_max(const scalar_t* plane, int64_t sH, int64_t sW, int64_t W, const PoolBin& b, scalar_t& value,
                    int64_t& index) {
  const T init = pool_init<T>(b);
  T best = init;
  for (int64_t h = b.hstart; h < b.hend; ++h)
    best = row_max<scalar_t, T>(plane + h * sH + b.wstart * sW, sW, b.wend - b.wstart, best);
  if (!(best > init)) {
    value = scalar_t(init);
    index = -1;
    return;
  }
  for (int64_t h = b.hstart; h < b.hend; ++h)
    for (int64_t w = b.wstart; w < b.wend; ++w) {
      const scalar_t px = plane[h * sH + w * sW];
      if (T(px) == best) {
        value = px;
        index = h * W + w;
        return;
      }
    }
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                                int64_t PH, int64_t PW) {
  check_forward_args(input, rois, spatial_scale, PH, PW);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3), K = rois.size(0);
  const bool cl = is_channels_last(input);
  at::Tensor out = at::empty({K, C, PH, PW}, input.options(), format_of(cl));
  at::Tensor argmax = at::empty({K, C, PH, PW}, input.options().dtype(at::kLong), format_of(cl));
  if (out.numel() == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const Plan<T> p = make_plan<T>(rois, N, spatial_scale, PH, PW);
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    int64_t* am = argmax.mutable_data_ptr<int64_t>();
    const int64_t sN = input.stride(0), sC = input.stride(1), sH = input.stride(2), sW = input.stride(3);
    const int64_t oK = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);
    // Work estimate: every bin's pixels, per channel (bins tile the clamped RoI).
    double work = 1.0;
    for (int64_t r = 0; r < K; ++r) {
      const PoolBin all{0, std::min(H, static_cast<int64_t>(std::ceil(double(p.geo[r].bin_h) * PH)) + 1), 0,
                        std::min(W, static_cast<int64_t>(std::ceil(double(p.geo[r].bin_w) * PW)) + 1)};
      work += static_cast<double>(all.hend) * static_cast<double>(all.wend) * static_cast<double>(C);
    }
    if (!cl) {
      std::vector<int64_t> keys(p.batch);
      const RoiBuckets buckets(keys, N);
      // Every plane pools the same bins: work them out once, not once per channel.
      std::vector<PoolBin> bins(K * PH * PW);
      for (int64_t r = 0; r < K; ++r)
        for (int64_t ph = 0; ph < PH; ++ph)
          for (int64_t pw = 0; pw < PW; ++pw) bins[(r * PH + ph) * PW + pw] = pool_bin(p.geo[r], ph, pw, H, W);
      at::parallel_for(0, C * N, grain_for(C * N, work), [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t c = t / N, n = t % N;
          const scalar_t* plane = in + n * sN + c * sC;
          for (int64_t i = buckets.begin(n); i < buckets.end(n); ++i) {
            const int64_t r = buckets.rois[i];
            for (int64_t ph = 0; ph < PH; ++ph) {
              for (int64_t pw = 0; pw < PW; ++pw) {
                const int64_t off = r * oK + c * oC + ph * oH + pw * oW;
                bin_max<scalar_t, T>(plane, sH, sW, W, bins[(r * PH + ph) * PW + pw], o[off], am[off]);
              }
            }
          }
        }
      });
      return;
    }
    const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
    at::parallel_for(0, blocks * K, grain_for(blocks * K, work), [&](int64_t begin, int64_t end) {
      T best[kChannelBlock];
      int64_t best_idx[kChannelBlock];
      for (int64_t t = begin; t < end; ++t) {
        const int64_t j = t / K, r = t % K;
        const int64_t c0 = j * kChannelBlock, nc = std::min(kChannelBlock, C - c0);
        const scalar_t* base = in + p.batch[r] * sN + c0;
        for (int64_t ph = 0; ph < PH; ++ph) {
          for (int64_t pw = 0; pw < PW; ++pw) {
            const PoolBin b = pool_bin(p.geo[r], ph, pw, H, W);
            std::fill(best, best + nc, pool_init<T>(b));
            std::fill(best_idx, best_idx + nc, int64_t(-1));
            for (int64_t h = b.hstart; h < b.hend; ++h) {
              for (int64_t w = b.wstart; w < b.wend; ++w) {
                const scalar_t* px = base + h * sH + w * sW;
                const int64_t idx = h * W + w;
                for (int64_t c = 0; c < nc; ++c) {
                  const T v = T(px[c]);
                  const bool take = v > best[c];
                  best[c] = take ? v : best[c];
                  best_idx[c] = take ? idx : best_idx[c];
                }
              }
            }
            const int64_t off = r * oK + c0 * oC + ph * oH + pw * oW;
            for (int64_t c = 0; c < nc; ++c) {
              o[off + c * oC] = scalar_t(best[c]);
              am[off + c * oC] = best_idx[c];
            }
          }
        }
      }
    });
  });
  return {out, argmax};
}

// grad_input[n, c, argmax] += grad for every output element. argmax values
// outside [0, H*W) (the -1 of empty bins) are skipped, never read or written.
at::Tensor roi_pool_backward_cpu(const at::Tensor& grad_in, const at::Tensor& rois, const at::Tensor& argmax_in,
                                 double spatial_scale, int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H,
                                 int64_t W, bool channels_last) {
  check_backward_args(grad_in, rois, argmax_in, PH, PW);
  TORCH_CHECK(grad_in.size(1) == C, "grad must have ", C, " channels, got ", grad_in.size(1));
  const bool cl = channels_last && C > 1;
  const int64_t K = rois.size(0);
  at::Tensor grad_input = at::empty({N, C, H, W}, grad_in.options(), format_of(cl));
  if (grad_input.numel() == 0) return grad_input;
  const at::Tensor grad = grad_in.contiguous(format_of(cl));
  const at::Tensor argmax = argmax_in.contiguous(format_of(cl));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    std::vector<int64_t> batch(K);
    {
      const at::Tensor r = rois.to(c10::CppTypeToScalarType<T>::value).contiguous();
      const T* r5 = r.const_data_ptr<T>();
      for (int64_t i = 0; i < K; ++i) batch[i] = roi_batch_index(r5[5 * i], N, i);
    }
    const RoiBuckets buckets(batch, N);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const int64_t* am = argmax.const_data_ptr<int64_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    const int64_t gK = grad.stride(0), gC = grad.stride(1), gH = grad.stride(2), gW = grad.stride(3);
    const int64_t dN = grad_input.stride(0), dC = grad_input.stride(1), dH = grad_input.stride(2),
                  dW = grad_input.stride(3);
    const int64_t HW = H * W;
    const int64_t units = cl ? (C + kChannelBlock - 1) / kChannelBlock : C;
    at::parallel_for(0, units * N, grain_for(units * N, static_cast<double>(K) * C * PH * PW + double(N) * C * HW), [&](int64_t begin, int64_t end) {
      std::vector<T> buf;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t u = t / N, n = t % N;
        const int64_t c0 = cl ? u * kChannelBlock : u;
        const int64_t nc = cl ? std::min(kChannelBlock, C - c0) : 1;
        buf.assign(HW * nc, T(0));  // [H*W, nc]
        for (int64_t i = buckets.begin(n); i < buckets.end(n); ++i) {
          const int64_t r = buckets.rois[i];
          // Channels innermost: contiguous reads of channels-last grad and argmax.
          for (int64_t ph = 0; ph < PH; ++ph) {
            for (int64_t pw = 0; pw < PW; ++pw) {
              const int64_t base = r * gK + c0 * gC + ph * gH + pw * gW;
              for (int64_t c = 0; c < nc; ++c) {
                const int64_t off = base + c * gC;
                const int64_t idx = am[off];
                if (idx >= 0 && idx < HW) buf[idx * nc + c] += T(g[off]);
              }
            }
          }
        }
        scalar_t* dst = gi + n * dN + c0 * dC;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w)
            for (int64_t c = 0; c < nc; ++c) dst[h * dH + w * dW + c * dC] = scalar_t(buf[(h * W + w) * nc + c]);
      }
    });
  });
  return grad_input;
}

}  // namespace
}  // namespace roi_pool
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  using namespace detops::roi_pool;
  m.impl("roi_pool", &roi_pool_cpu);
  m.impl("roi_pool_backward", &roi_pool_backward_cpu);
}
