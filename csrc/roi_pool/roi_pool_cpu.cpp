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
#include <climits>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/huge_pages.h"
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
// h, w order) that holds it: torchvision's strict `v > best` scan (NaN never
// wins; a bin with no winner keeps the start value and index -1; the value
// written is the winning pixel's own, so a zero keeps its sign). GCC compiles
// it to a maxss + cmov chain; timed alone on a 2-core AMD EPYC (fp32, 32x32
// and 100x100 maps, RPN-like RoIs), that is about 3x faster than four running maxima
// per row followed by a first-equal scan: the bins of real RoIs are a few
// pixels wide, so the per-row set-up and the second pass cost more than the
// carried dependency.
template <typename scalar_t, typename T>
inline void bin_max(const scalar_t* plane, int64_t sH, int64_t sW, int64_t W, const PoolBin& b, scalar_t& value,
                    int64_t& index) {
  T best = pool_init<T>(b);
  int64_t best_idx = -1;
  for (int64_t h = b.hstart; h < b.hend; ++h) {
    const scalar_t* row = plane + h * sH;
    for (int64_t w = b.wstart; w < b.wend; ++w) {
      const T v = T(row[w * sW]);
      if (v > best) {
        best = v;
        best_idx = h * W + w;
      }
    }
  }
  value = scalar_t(best);
  index = best_idx;
}

#if defined(__SSE2__)
// Four channels of a channels-last pixel as float32 (bfloat16 is the upper half of a float32).
inline __m128 load4(const float* p) { return _mm_loadu_ps(p); }
inline __m128 load4(const c10::BFloat16* p) {
  const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h));
}

// One bin of a full block of 16 channels-last channels: the strict `v > best`
// scan of every channel in SSE2 lanes. _mm_max_ps(v, best) is `v > best ? v :
// best` exactly (NaN and equal values keep best), and the compare's mask moves
// the pixel index into the lanes that took it, so values and argmax are the
// scalar scan's. Indices are int32 lanes (the caller checks H * W fits); the
// gcc-vectorised scalar loop with int64 indices was 2.4x slower.
template <typename scalar_t>
inline void block_bin_max_sse2(const scalar_t* base, int64_t sH, int64_t sW, int64_t W, const PoolBin& b,
                               float init, float* best_out, int32_t* idx_out) {
  __m128 b0 = _mm_set1_ps(init), b1 = b0, b2 = b0, b3 = b0;
  __m128i i0 = _mm_set1_epi32(-1), i1 = i0, i2 = i0, i3 = i0;
  for (int64_t h = b.hstart; h < b.hend; ++h) {
    for (int64_t w = b.wstart; w < b.wend; ++w) {
      const scalar_t* px = base + h * sH + w * sW;
      const __m128i idx = _mm_set1_epi32(static_cast<int32_t>(h * W + w));
#define DETOPS_ROI_POOL_LANES(k)                                                  \
  {                                                                               \
    const __m128 v = load4(px + 4 * k);                                           \
    const __m128i take = _mm_castps_si128(_mm_cmpgt_ps(v, b##k));                 \
    b##k = _mm_max_ps(v, b##k);                                                   \
    i##k = _mm_or_si128(_mm_and_si128(take, idx), _mm_andnot_si128(take, i##k)); \
  }
      DETOPS_ROI_POOL_LANES(0)
      DETOPS_ROI_POOL_LANES(1)
      DETOPS_ROI_POOL_LANES(2)
      DETOPS_ROI_POOL_LANES(3)
#undef DETOPS_ROI_POOL_LANES
    }
  }
  _mm_storeu_ps(best_out, b0);
  _mm_storeu_ps(best_out + 4, b1);
  _mm_storeu_ps(best_out + 8, b2);
  _mm_storeu_ps(best_out + 12, b3);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(idx_out), i0);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(idx_out + 4), i1);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(idx_out + 8), i2);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(idx_out + 12), i3);
}
#endif

// block_bin_max: false where there is no vector path for the dtype (the caller
// then runs the scalar scan).
template <typename scalar_t>
inline bool block_bin_max(const scalar_t*, int64_t, int64_t, int64_t, const PoolBin&, float, float*, int32_t*) {
  return false;
}
#if defined(__SSE2__)
inline bool block_bin_max(const float* base, int64_t sH, int64_t sW, int64_t W, const PoolBin& b, float init,
                          float* best, int32_t* idx) {
  block_bin_max_sse2(base, sH, sW, W, b, init, best, idx);
  return true;
}
inline bool block_bin_max(const c10::BFloat16* base, int64_t sH, int64_t sW, int64_t W, const PoolBin& b,
                          float init, float* best, int32_t* idx) {
  block_bin_max_sse2(base, sH, sW, W, b, init, best, idx);
  return true;
}
#endif

// Whether block_bin_max has a vector path for the dtype.
template <typename scalar_t>
constexpr bool has_block_bin_max() {
#if defined(__SSE2__)
  return std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>;
#else
  return false;
#endif
}

// NCHW forward: how many reads per map element (on average over the map) pay
// for one channels-last copy of it; see roi_pool_cpu.
constexpr double kRelayoutReads = 1.0;

std::tuple<at::Tensor, at::Tensor> roi_pool_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                                int64_t PH, int64_t PW) {
  check_forward_args(input, rois, spatial_scale, PH, PW);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3), K = rois.size(0);
  const bool cl = is_channels_last(input);
  at::Tensor out = with_huge_pages(at::empty({K, C, PH, PW}, input.options(), format_of(cl)));
  at::Tensor argmax = with_huge_pages(at::empty({K, C, PH, PW}, input.options().dtype(at::kLong), format_of(cl)));
  if (out.numel() == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const Plan<T> p = make_plan<T>(rois, N, spatial_scale, PH, PW);
    // Work estimate: every bin's pixels, per channel (bins tile the clamped RoI).
    double work = 1.0;
    for (int64_t r = 0; r < K; ++r) {
      const PoolBin all{0, std::min(H, static_cast<int64_t>(std::ceil(double(p.geo[r].bin_h) * PH)) + 1), 0,
                        std::min(W, static_cast<int64_t>(std::ceil(double(p.geo[r].bin_w) * PW)) + 1)};
      work += static_cast<double>(all.hend) * static_cast<double>(all.wend) * static_cast<double>(C);
    }
    // An NCHW map whose pixels the RoIs read more than kRelayoutReads times
    // over (per channel, on average) is copied channels-last once and pooled
    // by the channel-block scan, whose SSE2 lanes cover 16 channels per pixel
    // (the output keeps the input's layout; argmax indexes the plane either way).
    const bool relayout = !cl && C >= kChannelBlock && has_block_bin_max<scalar_t>() &&
                          work >= kRelayoutReads * static_cast<double>(N) * C * H * W;
    const at::Tensor scanned = relayout ? input.contiguous(at::MemoryFormat::ChannelsLast) : input;
    const scalar_t* in = scanned.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    int64_t* am = argmax.mutable_data_ptr<int64_t>();
    const int64_t sN = scanned.stride(0), sC = scanned.stride(1), sH = scanned.stride(2), sW = scanned.stride(3);
    const int64_t oK = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);
    if (!cl && !relayout) {
      std::vector<int64_t> keys(p.batch);
      const RoiBuckets buckets(keys, N);
      // Every plane pools the same bins: work them out once, not once per channel.
      std::vector<PoolBin> bins(K * PH * PW);
      for (int64_t r = 0; r < K; ++r)
        for (int64_t ph = 0; ph < PH; ++ph)
          for (int64_t pw = 0; pw < PW; ++pw) bins[(r * PH + ph) * PW + pw] = pool_bin(p.geo[r], ph, pw, H, W);
      // float16/bfloat16 planes whose pixels the bins visit more than once on
      // average are widened to float once, so the scans convert nothing (bf16,
      // 8 RoIs on a [1, 32, 32, 32] map: 0.92x of torchvision on a float32 copy
      // with the conversion in the scan).
      const bool widen = !std::is_same_v<scalar_t, T> && work >= static_cast<double>(N) * C * H * W;
      at::parallel_for(0, C * N, grain_for(C * N, work), [&](int64_t begin, int64_t end) {
        std::vector<T> wide(widen ? H * W : 0);
        for (int64_t t = begin; t < end; ++t) {
          const int64_t c = t / N, n = t % N;
          const scalar_t* plane = in + n * sN + c * sC;
          if (widen) {
            for (int64_t h = 0; h < H; ++h)
              for (int64_t w = 0; w < W; ++w) wide[h * W + w] = T(plane[h * sH + w * sW]);
          }
          for (int64_t i = buckets.begin(n); i < buckets.end(n); ++i) {
            const int64_t r = buckets.rois[i];
            for (int64_t ph = 0; ph < PH; ++ph) {
              for (int64_t pw = 0; pw < PW; ++pw) {
                const int64_t off = r * oK + c * oC + ph * oH + pw * oW;
                const PoolBin& b = bins[(r * PH + ph) * PW + pw];
                if (widen) {
                  T value;
                  bin_max<T, T>(wide.data(), W, 1, W, b, value, am[off]);
                  o[off] = scalar_t(value);
                } else {
                  bin_max<scalar_t, T>(plane, sH, sW, W, b, o[off], am[off]);
                }
              }
            }
          }
        }
      });
      return;
    }
    const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
    const bool index_fits_int32 = H * W <= INT32_MAX;
    at::parallel_for(0, blocks * K, grain_for(blocks * K, work), [&](int64_t begin, int64_t end) {
      T best[kChannelBlock];
      int64_t best_idx[kChannelBlock];
      float best32[kChannelBlock];
      int32_t idx32[kChannelBlock];
      for (int64_t t = begin; t < end; ++t) {
        const int64_t j = t / K, r = t % K;
        const int64_t c0 = j * kChannelBlock, nc = std::min(kChannelBlock, C - c0);
        const scalar_t* base = in + p.batch[r] * sN + c0;
        for (int64_t ph = 0; ph < PH; ++ph) {
          for (int64_t pw = 0; pw < PW; ++pw) {
            const PoolBin b = pool_bin(p.geo[r], ph, pw, H, W);
            const int64_t off = r * oK + c0 * oC + ph * oH + pw * oW;
            if (nc == kChannelBlock && index_fits_int32 &&
                block_bin_max(base, sH, sW, W, b, pool_init<float>(b), best32, idx32)) {
              for (int64_t c = 0; c < nc; ++c) {
                o[off + c * oC] = scalar_t(best32[c]);
                am[off + c * oC] = idx32[c];
              }
              continue;
            }
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
  at::Tensor grad_input = with_huge_pages(at::empty({N, C, H, W}, grad_in.options(), format_of(cl)));
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
