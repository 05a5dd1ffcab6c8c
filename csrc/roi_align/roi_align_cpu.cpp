// CPU kernels of RoI Align (single map and fused multi-level).
//
// A per-RoI plan is built once: the batch index (checked), the level, and the
// sample lists of roi_align_math.h (row samples per output row, column
// samples per output column, invalid samples dropped).
//
// Results equal torchvision's bit for bit (fp32, fp64; forward and input
// gradient): each sample's value is w1 v1 + w2 v2 + w3 v3 + w4 v4 with the
// weights formed as torchvision forms them, added to the bin's sum in
// torchvision's sample order; gradients add grad * w / count tap by tap in
// torchvision's order. Samples outside the map are skipped (torchvision adds
// 0 * input[0] for them, which changes nothing unless input[0] is not finite;
// that case is reproduced as NaN). A separable form (rows interpolated
// first) rounds differently and measured no faster on a quiet machine, so
// there is one order.
//
// Work is split so that each thread owns what it writes (no atomics, the
// same result for any thread count):
//   NCHW maps, forward: a task is one (level, image, block of 16 channels);
//     it visits that image's RoIs in order. Where they read the window their
//     samples span several times over (the common case: hundreds of RoIs per
//     image), the window of the 16 planes is first copied into an interleaved
//     tile [row][col][16], so that each sample's weights serve 16 channels in
//     vector registers (per channel the same operations in the same order:
//     1.6-1.9x faster than one plane at a time for 2000 box RoIs and 200 mask RoIs
//     at 512 px). Few, scattered RoIs read the planes directly.
//   NCHW maps, backward: a task is one (level, image, channel) plane, which
//     stays in L2 while all its RoIs scatter into it.
//   channels-last maps: the forward takes (RoI, channel block) tasks whose
//     inner loop runs over contiguous channels (vectorised); the backward takes
//     (level, image, channel block) tasks scattering whole channel vectors.
// Reduced precision is read and written natively and accumulated in float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "common/huge_pages.h"
#include "roi_align/roi_align.h"

namespace detops {
namespace roi_align {
namespace {

constexpr int64_t kForwardChannelBlock = 64;   // channels-last forward: channels per task
constexpr int64_t kPlaneBlock = 16;            // NCHW forward: channels per interleaved tile
constexpr int64_t kBackwardChannelBlock = 16;  // channels-last backward: one cache line of floats per pixel

// Shape and memory layout of one feature map (or of its gradient).
struct MapMeta {
  int64_t N, C, H, W;
  bool channels_last;
  double scale;
};

template <typename T>
struct Plan {
  int64_t K = 0, PH = 0, PW = 0, num_keys = 0;
  std::vector<int64_t> level;                  // [K]
  std::vector<int64_t> batch;                  // [K]
  std::vector<T> count;                        // [K]: divisor of the bin average
  std::vector<int64_t> y_off, x_off;           // [K]: first sample slot of the RoI
  std::vector<int64_t> grid_h, grid_w;         // [K]: slots per bin (>= 0)
  std::vector<int64_t> y_n, x_n;               // [K*PH], [K*PW]: valid samples in the bin
  std::vector<AxisSample<T>> ys, xs;           // sample slots
  std::vector<int64_t> keys;                   // [K]: level * N + batch

  // The valid row samples of bin ph of RoI r, as [begin, end).
  const AxisSample<T>* y_begin(int64_t r, int64_t ph) const { return ys.data() + y_off[r] + ph * grid_h[r]; }
  const AxisSample<T>* y_end(int64_t r, int64_t ph) const { return y_begin(r, ph) + y_n[r * PH + ph]; }
  const AxisSample<T>* x_begin(int64_t r, int64_t pw) const { return xs.data() + x_off[r] + pw * grid_w[r]; }
  const AxisSample<T>* x_end(int64_t r, int64_t pw) const { return x_begin(r, pw) + x_n[r * PW + pw]; }
};

// Builds the plan; throws on a bad batch index or level (before any kernel reads).
template <typename T>
Plan<T> make_plan(const std::vector<MapMeta>& maps, const at::Tensor& rois_in, const at::Tensor& levels_in,
                  int64_t PH, int64_t PW, int64_t sampling_ratio, bool aligned) {
  Plan<T> p;
  const at::Tensor rois = rois_in.to(c10::CppTypeToScalarType<T>::value).contiguous();
  p.K = rois.size(0);
  p.PH = PH;
  p.PW = PW;
  const int64_t L = static_cast<int64_t>(maps.size()), N = maps[0].N;
  p.num_keys = L * N;
  const T* r5 = rois.const_data_ptr<T>();
  const int64_t* lv = nullptr;
  at::Tensor levels;
  if (levels_in.defined()) {
    levels = levels_in.contiguous();
    lv = levels.const_data_ptr<int64_t>();
  }
  p.level.resize(p.K);
  p.batch.resize(p.K);
  p.count.resize(p.K);
  p.y_off.resize(p.K);
  p.x_off.resize(p.K);
  p.grid_h.resize(p.K);
  p.grid_w.resize(p.K);
  p.keys.resize(p.K);
  std::vector<RoiGeometry<T>> geo(p.K);
  int64_t ny = 0, nx = 0;
  for (int64_t r = 0; r < p.K; ++r) {
    const T* b = r5 + 5 * r;
    const int64_t l = lv ? lv[r] : 0;
    TORCH_CHECK(l >= 0 && l < L, "levels[", r, "] must be in [0, ", L, "), got ", l);
    p.level[r] = l;
    p.batch[r] = roi_batch_index(b[0], N, r);
    p.keys[r] = l * N + p.batch[r];
    geo[r] = roi_geometry<T>(b[1], b[2], b[3], b[4], T(maps[l].scale), PH, PW, sampling_ratio, aligned);
    p.count[r] = geo[r].count;
    p.grid_h[r] = std::max<int64_t>(geo[r].grid_h, 0);
    p.grid_w[r] = std::max<int64_t>(geo[r].grid_w, 0);
    p.y_off[r] = ny;
    p.x_off[r] = nx;
    ny += PH * p.grid_h[r];
    nx += PW * p.grid_w[r];
  }
  p.ys.resize(ny);
  p.xs.resize(nx);
  p.y_n.assign(p.K * PH, 0);
  p.x_n.assign(p.K * PW, 0);
  at::parallel_for(0, p.K, grain_for(p.K, static_cast<double>(ny + nx) * 16), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const RoiGeometry<T>& g = geo[r];
      const MapMeta& m = maps[p.level[r]];
      const auto fill = [](T start, T bin, int64_t p_idx, int64_t grid, int64_t size, AxisSample<T>* out) {
        int64_t n = 0;
        for (int64_t i = 0; i < grid; ++i) {
          AxisSample<T> s;
          if (axis_sample(sample_pos(start, bin, p_idx, i, grid), size, s)) out[n++] = s;
        }
        return n;
      };
      for (int64_t ph = 0; ph < PH; ++ph) {
        const int64_t slot = p.y_off[r] + ph * p.grid_h[r];
        p.y_n[r * PH + ph] = fill(g.start_h, g.bin_h, ph, p.grid_h[r], m.H, p.ys.data() + slot);
      }
      for (int64_t pw = 0; pw < PW; ++pw) {
        const int64_t slot = p.x_off[r] + pw * p.grid_w[r];
        p.x_n[r * PW + pw] = fill(g.start_w, g.bin_w, pw, p.grid_w[r], m.W, p.xs.data() + slot);
      }
    }
  });
  return p;
}

// Elementary operations of a pass over all bins: 4 taps per valid sample
// pair, per channel (an estimate for choosing the parallel grain).
template <typename T>
double tap_work(const Plan<T>& p, int64_t C) {
  double samples = 0;
  for (int64_t r = 0; r < p.K; ++r) samples += static_cast<double>(p.grid_h[r]) * static_cast<double>(p.grid_w[r]);
  return 4.0 * samples * static_cast<double>(p.PH * p.PW) * static_cast<double>(C) + 1.0;
}

MapMeta meta_of(const at::Tensor& t, double scale) {
  return {t.size(0), t.size(1), t.size(2), t.size(3), is_channels_last(t), scale};
}

// ------------------------------------------------------------------ forward

// Whether bin (ph, pw) of RoI r drops samples that fall outside the map.
// torchvision adds them as 0 * input[0] each, which is 0 unless input[0] is
// not finite: then the bin is NaN.
template <typename T>
inline bool bin_drops_samples(const Plan<T>& p, int64_t r, int64_t ph, int64_t pw) {
  return p.y_n[r * p.PH + ph] * p.x_n[r * p.PW + pw] < p.grid_h[r] * p.grid_w[r];
}

// The sum over the valid samples of one bin of one NCHW plane, rows outer,
// each sample's four terms added as torchvision adds them. kGY / kGX: the
// sample counts when fixed at compile time (0: runtime ny / nx).
template <int kGY, int kGX, bool kUnitStride, typename scalar_t, typename T>
inline T plane_bin(const scalar_t* plane, int64_t sH, int64_t sW, const AxisSample<T>* ys, int64_t ny,
                         const AxisSample<T>* xs, int64_t nx) {
  const int64_t gy = kGY > 0 ? kGY : ny, gx = kGX > 0 ? kGX : nx;
  T acc = T(0);
  for (int64_t a = 0; a < gy; ++a) {
    const AxisSample<T>& y = ys[a];
    const scalar_t* rl = plane + y.low * sH;
    const scalar_t* rh = plane + y.high * sH;
    for (int64_t b = 0; b < gx; ++b) {
      const AxisSample<T>& x = xs[b];
      const int64_t xl = kUnitStride ? x.low : x.low * sW, xh = kUnitStride ? x.high : x.high * sW;
      const SampleWeights<T> w = sample_weights(y, x);
      acc += w.w1 * T(rl[xl]) + w.w2 * T(rl[xh]) + w.w3 * T(rh[xl]) + w.w4 * T(rh[xh]);
    }
  }
  return acc;
}

template <typename scalar_t, bool kUnitStride>
inline void forward_plane_roi(const Plan<at::opmath_type<scalar_t>>& p, int64_t r, const scalar_t* plane,
                                    int64_t sH, int64_t sW, scalar_t* out, int64_t oH, int64_t oW) {
  using T = at::opmath_type<scalar_t>;
  const T count = p.count[r];
  const bool poisoned = !std::isfinite(static_cast<double>(plane[0]));
  for (int64_t ph = 0; ph < p.PH; ++ph) {
    const AxisSample<T>* ys = p.y_begin(r, ph);
    const int64_t ny = p.y_n[r * p.PH + ph];
    for (int64_t pw = 0; pw < p.PW; ++pw) {
      const AxisSample<T>* xs = p.x_begin(r, pw);
      const int64_t nx = p.x_n[r * p.PW + pw];
      // Two samples per axis (sampling ratio 2, the detection default) unroll.
      T acc = ny == 2 && nx == 2 ? plane_bin<2, 2, kUnitStride>(plane, sH, sW, ys, 2, xs, 2)
                                 : plane_bin<0, 0, kUnitStride>(plane, sH, sW, ys, ny, xs, nx);
      if (poisoned && bin_drops_samples(p, r, ph, pw)) acc = std::numeric_limits<T>::quiet_NaN();
      out[ph * oH + pw * oW] = scalar_t(acc / count);
    }
  }
}

// The map pixels that the samples of one (level, image) bucket touch, as an
// inclusive window, and whether reading them through an interleaved tile pays.
struct BucketWindow {
  int64_t y0 = 0, y1 = -1, x0 = 0, x1 = -1;
  bool interleave = false;
  int64_t area() const { return (y1 - y0 + 1) * (x1 - x0 + 1); }
};

template <typename T>
std::vector<BucketWindow> bucket_windows(const Plan<T>& p, const RoiBuckets& buckets) {
  std::vector<BucketWindow> wins(p.num_keys);
  for (int64_t key = 0; key < p.num_keys; ++key) {
    BucketWindow& w = wins[key];
    w.y0 = w.x0 = std::numeric_limits<int64_t>::max();
    w.y1 = w.x1 = -1;
    double taps = 0;
    for (int64_t i = buckets.begin(key); i < buckets.end(key); ++i) {
      const int64_t r = buckets.rois[i];
      for (int64_t ph = 0; ph < p.PH; ++ph)
        for (const AxisSample<T>* y = p.y_begin(r, ph); y != p.y_end(r, ph); ++y) {
          w.y0 = std::min(w.y0, y->low);
          w.y1 = std::max(w.y1, y->high);
        }
      for (int64_t pw = 0; pw < p.PW; ++pw)
        for (const AxisSample<T>* x = p.x_begin(r, pw); x != p.x_end(r, pw); ++x) {
          w.x0 = std::min(w.x0, x->low);
          w.x1 = std::max(w.x1, x->high);
        }
      taps += 4.0 * static_cast<double>(p.grid_h[r] * p.grid_w[r] * p.PH * p.PW);
    }
    // Copying a pixel into the tile costs about what reading one tap
    // costs on the scalar path, and the tile's taps cost a fraction of that.
    w.interleave = w.y1 >= w.y0 && w.x1 >= w.x0 && static_cast<double>(w.area()) <= taps;
  }
  return wins;
}

// One RoI's bins for a block of channels stored interleaved: channel c of
// pixel (y, x) at values[(y - y0) * sH + (x - x0) * sW + c]. Serves
// channels-last maps (origin 0) and the NCHW path's tile (origin at its
// window). kWidth > 0: that many channels are computed (the tile pads to it),
// else nc; per channel, the same operations in the same order as plane_bin.
// first[c * first_stride] is channel c of the map's pixel (0, 0), whose
// non-finite value poisons bins that drop samples (as forward_plane_roi).
template <int64_t kWidth, typename scalar_t, typename V>
inline void forward_interleaved_roi(const Plan<at::opmath_type<scalar_t>>& p, int64_t r, const V* values,
                                    int64_t sH, int64_t sW, int64_t y0, int64_t x0, int64_t nc,
                                    const scalar_t* first, int64_t first_stride, scalar_t* out, int64_t oC,
                                    int64_t oH, int64_t oW) {
  using T = at::opmath_type<scalar_t>;
  constexpr int64_t kAcc = kWidth > 0 ? kWidth : kForwardChannelBlock;
  const int64_t width = kWidth > 0 ? kWidth : nc;
  const T count = p.count[r];
  T acc[kAcc];
  for (int64_t ph = 0; ph < p.PH; ++ph) {
    for (int64_t pw = 0; pw < p.PW; ++pw) {
      std::fill(acc, acc + width, T(0));
      for (const AxisSample<T>* y = p.y_begin(r, ph); y != p.y_end(r, ph); ++y) {
        const V* rl = values + (y->low - y0) * sH;
        const V* rh = values + (y->high - y0) * sH;
        for (const AxisSample<T>* x = p.x_begin(r, pw); x != p.x_end(r, pw); ++x) {
          const SampleWeights<T> w = sample_weights(*y, *x);
          const int64_t xl = (x->low - x0) * sW, xh = (x->high - x0) * sW;
          const V* __restrict__ p1 = rl + xl;
          const V* __restrict__ p2 = rl + xh;
          const V* __restrict__ p3 = rh + xl;
          const V* __restrict__ p4 = rh + xh;
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) {
            acc[c] += w.w1 * T(p1[c]) + w.w2 * T(p2[c]) + w.w3 * T(p3[c]) + w.w4 * T(p4[c]);
          }
        }
      }
      if (bin_drops_samples(p, r, ph, pw)) {
        for (int64_t c = 0; c < nc; ++c)
          if (!std::isfinite(static_cast<double>(first[c * first_stride]))) acc[c] = std::numeric_limits<T>::quiet_NaN();
      }
      for (int64_t c = 0; c < nc; ++c) out[c * oC + ph * oH + pw * oW] = scalar_t(acc[c] / count);
    }
  }
}

// The RoIs of one (level, image) bucket from its interleaved tile of
// kPlaneBlock channels (channel c0 of the block at out).
template <typename scalar_t>
struct TileRois {
  const Plan<at::opmath_type<scalar_t>>* p;
  const RoiBuckets* buckets;
  int64_t key;
  const at::opmath_type<scalar_t>* tile;
  int64_t tw;
  const BucketWindow* win;
  int64_t nc;
  const scalar_t* planes;
  int64_t sC;
  scalar_t* out;
  int64_t oK, oC, oH, oW;
};

template <typename scalar_t>
inline void tile_rois(const TileRois<scalar_t>& j) {
  for (int64_t i = j.buckets->begin(j.key); i < j.buckets->end(j.key); ++i) {
    const int64_t r = j.buckets->rois[i];
    forward_interleaved_roi<kPlaneBlock, scalar_t>(*j.p, r, j.tile, j.tw * kPlaneBlock, kPlaneBlock, j.win->y0,
                                                   j.win->x0, j.nc, j.planes, j.sC, j.out + r * j.oK, j.oC, j.oH,
                                                   j.oW);
  }
}

// The same loop built for wider vectors (a tile pixel's kPlaneBlock channels
// fill one AVX-512 register; 1.1-1.3x faster for 2000 box RoIs on one
// thread): per channel the same operations in the same order (no fused
// multiply-adds in this file), so the results are identical. The build is
// torch's (at::get_cpu_capability(), which ATEN_CPU_CAPABILITY lowers), so
// the tests can run each one.
#if defined(__x86_64__) && defined(__GNUC__)
template <typename scalar_t>
__attribute__((target("avx512f"), flatten)) void tile_rois_avx512(const TileRois<scalar_t>& j) {
  tile_rois(j);
}
template <typename scalar_t>
__attribute__((target("avx2"), flatten)) void tile_rois_avx2(const TileRois<scalar_t>& j) {
  tile_rois(j);
}
#endif

template <typename scalar_t>
void run_tile_rois(const TileRois<scalar_t>& j) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const std::string build = at::get_cpu_capability();
  if (build == "AVX512") return tile_rois_avx512(j);
  if (build == "AVX2") return tile_rois_avx2(j);
#endif
  tile_rois(j);
}

// out [K, C, PH, PW] (any strides) from maps; every output element is written.
template <typename scalar_t>
void forward_kernel(const std::vector<at::Tensor>& maps, const Plan<at::opmath_type<scalar_t>>& p,
                    at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t L = static_cast<int64_t>(maps.size()), N = maps[0].size(0), C = maps[0].size(1);
  const int64_t PH = p.PH, PW = p.PW;
  const int64_t oK = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  RoiBuckets buckets(p.keys, p.num_keys);
  const double work = tap_work(p, C);

  // NCHW maps: (channel block, level, image) tasks, channels outermost so
  // that the static split gives every thread all images (balanced across
  // batches). A bucket whose RoIs read its window several times over copies
  // the window of kPlaneBlock planes into an interleaved tile first, so that
  // each sample's weights serve kPlaneBlock channels in vector registers;
  // otherwise each plane is read directly, one channel at a time.
  std::vector<int64_t> plane_levels;
  for (int64_t l = 0; l < L; ++l)
    if (!is_channels_last(maps[l])) plane_levels.push_back(l);
  const int64_t per_block = static_cast<int64_t>(plane_levels.size()) * N;
  const int64_t plane_blocks = (C + kPlaneBlock - 1) / kPlaneBlock;
  if (per_block > 0) {
    const std::vector<BucketWindow> wins = bucket_windows(p, buckets);
    int64_t max_area = 0;
    for (const BucketWindow& w : wins)
      if (w.interleave) max_area = std::max(max_area, w.area());
    at::parallel_for(0, plane_blocks * per_block, grain_for(plane_blocks * per_block, work),
                     [&](int64_t begin, int64_t end) {
      std::vector<T> tile;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t c0 = (t / per_block) * kPlaneBlock, ln = t % per_block;
        const int64_t nc = std::min(kPlaneBlock, C - c0);
        const int64_t l = plane_levels[ln / N], n = ln % N;
        const int64_t key = l * N + n;
        if (buckets.begin(key) == buckets.end(key)) continue;
        const at::Tensor& m = maps[l];
        const int64_t sC = m.stride(1), sH = m.stride(2), sW = m.stride(3);
        const scalar_t* planes = m.const_data_ptr<scalar_t>() + n * m.stride(0) + c0 * sC;
        if (m.size(2) == 0 || m.size(3) == 0) {  // empty map: every sample is outside
          for (int64_t i = buckets.begin(key); i < buckets.end(key); ++i)
            for (int64_t c = c0; c < c0 + nc; ++c)
              for (int64_t ph = 0; ph < PH; ++ph)
                for (int64_t pw = 0; pw < PW; ++pw) o[buckets.rois[i] * oK + c * oC + ph * oH + pw * oW] = scalar_t(0);
          continue;
        }
        const BucketWindow& win = wins[key];
        if (win.interleave) {
          if (tile.empty()) tile.resize(max_area * kPlaneBlock);
          const int64_t tw = win.x1 - win.x0 + 1;
          // Pixel by pixel, so that each tile line is written once, whole
          // (a plane-by-plane fill rewrote every line kPlaneBlock times).
          for (int64_t y = win.y0; y <= win.y1; ++y) {
            T* dst = tile.data() + (y - win.y0) * tw * kPlaneBlock;
            const scalar_t* src = planes + y * sH + win.x0 * sW;
            for (int64_t x = 0; x < tw; ++x, dst += kPlaneBlock) {
              for (int64_t c = 0; c < nc; ++c) dst[c] = T(src[c * sC + x * sW]);
              std::fill(dst + nc, dst + kPlaneBlock, T(0));
            }
          }
          const TileRois<scalar_t> job{&p, &buckets, key, tile.data(), tw, &win, nc, planes, sC, o + c0 * oC, oK, oC, oH, oW};
          run_tile_rois(job);
          continue;
        }
        for (int64_t c = c0; c < c0 + nc; ++c) {
          const scalar_t* plane = planes + (c - c0) * sC;
          const auto run = [&](auto unit_stride) {
            constexpr bool kUnit = decltype(unit_stride)::value;
            for (int64_t i = buckets.begin(key); i < buckets.end(key); ++i) {
              const int64_t r = buckets.rois[i];
              forward_plane_roi<scalar_t, kUnit>(p, r, plane, sH, kUnit ? 1 : sW, o + r * oK + c * oC, oH, oW);
            }
          };
          if (sW == 1) {
            run(std::true_type{});
          } else {
            run(std::false_type{});
          }
        }
      }
    });
  }

  // Channels-last maps: (channel block, RoI) tasks, contiguous channel vectors.
  bool any_cl = false;
  for (int64_t l = 0; l < L; ++l) any_cl |= is_channels_last(maps[l]);
  if (!any_cl) return;
  const int64_t blocks = (C + kForwardChannelBlock - 1) / kForwardChannelBlock;
  at::parallel_for(0, blocks * p.K, grain_for(blocks * p.K, work), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t j = t / p.K, r = t % p.K;
      const at::Tensor& m = maps[p.level[r]];
      if (!is_channels_last(m)) continue;
      const int64_t c0 = j * kForwardChannelBlock, nc = std::min(kForwardChannelBlock, C - c0);
      const scalar_t* base = m.const_data_ptr<scalar_t>() + p.batch[r] * m.stride(0) + c0;
      forward_interleaved_roi<0, scalar_t>(p, r, base, m.stride(2), m.stride(3), 0, 0, nc, base, 1,
                                           o + r * oK + c0 * oC, oC, oH, oW);
    }
  });
}

at::Tensor forward_impl(const std::vector<at::Tensor>& maps, const at::Tensor& rois, const at::Tensor& levels,
                        const std::vector<double>& scales, int64_t PH, int64_t PW, int64_t sampling_ratio,
                        bool aligned) {
  const at::Tensor& first = maps[0];
  const int64_t K = rois.size(0), C = first.size(1);
  at::Tensor out = with_huge_pages(at::empty({K, C, PH, PW}, first.options(), format_of(is_channels_last(first))));
  if (out.numel() == 0) return out;
  std::vector<MapMeta> metas;
  for (size_t l = 0; l < maps.size(); ++l) metas.push_back(meta_of(maps[l], scales[l]));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "roi_align_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const Plan<T> plan = make_plan<T>(metas, rois, levels, PH, PW, sampling_ratio, aligned);
    forward_kernel<scalar_t>(maps, plan, out);
  });
  return out;
}

// ------------------------------------------------------------------ backward

// grad * w / count, as torchvision divides each tap's share. Dividing by a
// power of two equals multiplying by its inverse exactly (sampling ratios 1,
// 2 and 4 give counts 1, 4 and 16), which is cheaper.
template <typename T>
struct CountDivide {
  T count, inv;
  bool pow2;
  explicit CountDivide(T c) : count(c), inv(T(1) / c) {
    int e = 0;
    pow2 = std::frexp(static_cast<double>(c), &e) == 0.5;
  }
};

// Scatter of one RoI's gradient into one dense NCHW plane [H, W] in
// torchvision's order: bins, then valid samples (rows outer), then the four
// taps, each adding grad * w / count.
template <bool kPow2, typename scalar_t, typename T>
inline void backward_plane_roi(const Plan<T>& p, int64_t r, const scalar_t* grc, int64_t gH, int64_t gW,
                                     T* plane, int64_t W) {
  const CountDivide<T> d(p.count[r]);
  const auto share = [&](T g, T w) { return kPow2 ? g * w * d.inv : g * w / d.count; };
  for (int64_t ph = 0; ph < p.PH; ++ph) {
    for (int64_t pw = 0; pw < p.PW; ++pw) {
      const T go = T(grc[ph * gH + pw * gW]);
      if (go == T(0)) continue;  // adds +-0 only
      for (const AxisSample<T>* y = p.y_begin(r, ph); y != p.y_end(r, ph); ++y) {
        T* rl = plane + y->low * W;
        T* rh = plane + y->high * W;
        for (const AxisSample<T>* x = p.x_begin(r, pw); x != p.x_end(r, pw); ++x) {
          const SampleWeights<T> w = sample_weights(*y, *x);
          rl[x->low] += share(go, w.w1);
          rl[x->high] += share(go, w.w2);
          rh[x->low] += share(go, w.w3);
          rh[x->high] += share(go, w.w4);
        }
      }
    }
  }
}

// grads[l] (allocated, any content) receives the gradient of map l.
template <typename scalar_t>
void backward_kernel(const at::Tensor& grad, const std::vector<MapMeta>& metas,
                     const Plan<at::opmath_type<scalar_t>>& p, std::vector<at::Tensor>& grads) {
  using T = at::opmath_type<scalar_t>;
  const int64_t L = static_cast<int64_t>(metas.size()), N = metas[0].N, C = metas[0].C;
  const int64_t PH = p.PH, PW = p.PW;
  const int64_t gK = grad.stride(0), gC = grad.stride(1), gH = grad.stride(2), gW = grad.stride(3);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  RoiBuckets buckets(p.keys, p.num_keys);
  const int64_t blocks = (C + kBackwardChannelBlock - 1) / kBackwardChannelBlock;

  // Task t: (unit, level, image), unit = a channel (NCHW) or a channel block
  // (channels-last), unit outermost for balance. Each task owns its slab of
  // grads[level] and accumulates it in a dense float buffer.
  std::vector<int64_t> units(L);
  int64_t max_units = 0;
  for (int64_t l = 0; l < L; ++l) {
    units[l] = metas[l].channels_last ? blocks : C;
    max_units = std::max(max_units, units[l]);
  }
  at::parallel_for(0, max_units * L * N, grain_for(max_units * L * N, tap_work(p, C)), [&](int64_t begin, int64_t end) {
    std::vector<T> buf;
    std::vector<T> gv(kBackwardChannelBlock);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t u = t / (L * N), l = (t / N) % L, n = t % N;
      if (u >= units[l]) continue;
      const MapMeta& m = metas[l];
      at::Tensor& gl = grads[l];
      const int64_t H = m.H, W = m.W, key = l * N + n;
      scalar_t* dst = gl.mutable_data_ptr<scalar_t>() + n * gl.stride(0);
      const int64_t dH = gl.stride(2), dW = gl.stride(3), dC = gl.stride(1);
      if (!m.channels_last) {
        const int64_t c = u;
        // float/double into a dense plane: accumulate in place (saves a copy pass).
        T* plane = nullptr;
        bool in_place = false;
        if constexpr (std::is_same_v<scalar_t, T>) {
          if (dW == 1 && dH == W) {
            plane = dst + c * dC;
            std::fill(plane, plane + H * W, T(0));
            in_place = true;
          }
        }
        if (!in_place) {
          buf.assign(H * W, T(0));
          plane = buf.data();
        }
        for (int64_t i = buckets.begin(key); i < buckets.end(key); ++i) {
          const int64_t r = buckets.rois[i];
          const scalar_t* grc = g + r * gK + c * gC;
          if (CountDivide<T>(p.count[r]).pow2)
            backward_plane_roi<true>(p, r, grc, gH, gW, plane, W);
          else
            backward_plane_roi<false>(p, r, grc, gH, gW, plane, W);
        }
        if (!in_place) {
          scalar_t* out = dst + c * dC;
          for (int64_t h = 0; h < H; ++h)
            for (int64_t w = 0; w < W; ++w) out[h * dH + w * dW] = scalar_t(plane[h * W + w]);
        }
      } else {
        const int64_t c0 = u * kBackwardChannelBlock, nc = std::min(kBackwardChannelBlock, C - c0);
        buf.assign(H * W * nc, T(0));
        for (int64_t i = buckets.begin(key); i < buckets.end(key); ++i) {
          const int64_t r = buckets.rois[i];
          const scalar_t* grc = g + r * gK + c0 * gC;
          const CountDivide<T> d(p.count[r]);
          for (int64_t ph = 0; ph < PH; ++ph) {
            for (int64_t pw = 0; pw < PW; ++pw) {
              bool any = false;
              for (int64_t c = 0; c < nc; ++c) {
                gv[c] = T(grc[c * gC + ph * gH + pw * gW]);
                any |= gv[c] != T(0);
              }
              if (!any) continue;
              const T* __restrict__ gvp = gv.data();
              for (const AxisSample<T>* y = p.y_begin(r, ph); y != p.y_end(r, ph); ++y) {
                for (const AxisSample<T>* x = p.x_begin(r, pw); x != p.x_end(r, pw); ++x) {
                  const SampleWeights<T> w = sample_weights(*y, *x);
                  T* __restrict__ b1 = buf.data() + (y->low * W + x->low) * nc;
                  T* __restrict__ b2 = buf.data() + (y->low * W + x->high) * nc;
                  T* __restrict__ b3 = buf.data() + (y->high * W + x->low) * nc;
                  T* __restrict__ b4 = buf.data() + (y->high * W + x->high) * nc;
                  // b1..b4 may alias (clamped taps), so add them one after
                  // another; each adds grad * w / count, as torchvision does.
                  if (d.pow2) {
                    for (int64_t c = 0; c < nc; ++c) b1[c] += gvp[c] * w.w1 * d.inv;
                    for (int64_t c = 0; c < nc; ++c) b2[c] += gvp[c] * w.w2 * d.inv;
                    for (int64_t c = 0; c < nc; ++c) b3[c] += gvp[c] * w.w3 * d.inv;
                    for (int64_t c = 0; c < nc; ++c) b4[c] += gvp[c] * w.w4 * d.inv;
                  } else {
                    for (int64_t c = 0; c < nc; ++c) b1[c] += gvp[c] * w.w1 / d.count;
                    for (int64_t c = 0; c < nc; ++c) b2[c] += gvp[c] * w.w2 / d.count;
                    for (int64_t c = 0; c < nc; ++c) b3[c] += gvp[c] * w.w3 / d.count;
                    for (int64_t c = 0; c < nc; ++c) b4[c] += gvp[c] * w.w4 / d.count;
                  }
                }
              }
            }
          }
        }
        scalar_t* out = dst + c0 * dC;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) {
            const T* src = buf.data() + (h * W + w) * nc;
            scalar_t* o = out + h * dH + w * dW;
            for (int64_t c = 0; c < nc; ++c) o[c * dC] = scalar_t(src[c]);
          }
      }
    }
  });
}

std::vector<at::Tensor> backward_impl(const at::Tensor& grad_in, const std::vector<MapMeta>& metas,
                                      const at::TensorOptions& options, const at::Tensor& rois,
                                      const at::Tensor& levels, int64_t PH, int64_t PW, int64_t sampling_ratio,
                                      bool aligned) {
  const int64_t K = rois.size(0), C = metas[0].C;
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == K && grad_in.size(1) == C && grad_in.size(2) == PH &&
                  grad_in.size(3) == PW,
              "grad must have shape [", K, ", ", C, ", ", PH, ", ", PW, "], got ", grad_in.sizes());
  std::vector<at::Tensor> grads;
  for (const MapMeta& m : metas) {
    grads.push_back(K == 0 ? at::zeros({m.N, m.C, m.H, m.W}, options).contiguous(format_of(m.channels_last))
                           : with_huge_pages(at::empty({m.N, m.C, m.H, m.W}, options, format_of(m.channels_last))));
  }
  if (K == 0 || C == 0) return grads;
  const at::Tensor grad = grad_in.to(options.dtype()).contiguous(format_of(metas[0].channels_last));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const Plan<T> plan = make_plan<T>(metas, rois, levels, PH, PW, sampling_ratio, aligned);
    backward_kernel<scalar_t>(grad, metas, plan, grads);
  });
  return grads;
}

// ------------------------------------------------------------------ ops

void check_input(const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 4, "input must have shape [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(is_kernel_float(input.scalar_type()), "input must be float16, bfloat16, float32 or float64, got ",
              input.scalar_type());
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t PH,
                         int64_t PW, int64_t sampling_ratio, bool aligned) {
  check_input(input);
  check_rois_shape(rois);
  check_pool_args(PH, PW, spatial_scale);
  return forward_impl({input}, rois, at::Tensor(), {spatial_scale}, PH, PW, sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t PH,
                                  int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sampling_ratio,
                                  bool aligned, bool channels_last) {
  check_rois_shape(rois);
  check_pool_args(PH, PW, spatial_scale);
  TORCH_CHECK(is_kernel_float(grad.scalar_type()), "grad must be a floating tensor, got ", grad.scalar_type());
  const MapMeta meta{N, C, H, W, channels_last && C > 1, spatial_scale};
  return backward_impl(grad, {meta}, grad.options(), rois, at::Tensor(), PH, PW, sampling_ratio, aligned)[0];
}

at::Tensor multi_scale_cpu(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                           at::ArrayRef<double> scales, int64_t PH, int64_t PW, int64_t sampling_ratio, bool aligned) {
  check_multi_args(features, rois, levels, scales, PH, PW);
  return forward_impl(features.vec(), rois, levels, scales.vec(), PH, PW, sampling_ratio, aligned);
}

std::vector<at::Tensor> multi_scale_backward_cpu(const at::Tensor& grad, at::TensorList features,
                                                 const at::Tensor& rois, const at::Tensor& levels,
                                                 at::ArrayRef<double> scales, int64_t PH, int64_t PW,
                                                 int64_t sampling_ratio, bool aligned) {
  check_multi_args(features, rois, levels, scales, PH, PW);
  std::vector<MapMeta> metas;
  for (size_t l = 0; l < features.size(); ++l) metas.push_back(meta_of(features[l], scales[l]));
  return backward_impl(grad, metas, features[0].options(), rois, levels, PH, PW, sampling_ratio, aligned);
}

// Gather-form gradient, element by element through gather_roi_grad (the
// arithmetic of the deterministic CUDA backward), so that CPU tests check it.
// float32/float64, NCHW output; a reference, not a fast path.
at::Tensor backward_gather_cpu(const at::Tensor& grad_in, const at::Tensor& rois, double spatial_scale, int64_t PH,
                               int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sampling_ratio,
                               bool aligned) {
  check_rois_shape(rois);
  check_pool_args(PH, PW, spatial_scale);
  TORCH_CHECK(grad_in.scalar_type() == at::kFloat || grad_in.scalar_type() == at::kDouble,
              "grad must be float32 or float64, got ", grad_in.scalar_type());
  const int64_t K = rois.size(0);
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({K, C, PH, PW}), "grad must have shape [", K, ", ", C, ", ", PH,
              ", ", PW, "], got ", grad_in.sizes());
  at::Tensor out = at::zeros({N, C, H, W}, grad_in.options());
  if (out.numel() == 0 || K == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(grad_in.scalar_type(), "roi_align_backward_gather_cpu", [&] {
    using T = scalar_t;
    const at::Tensor grad = grad_in.contiguous();
    const at::Tensor r5 = rois.to(grad.scalar_type()).contiguous();
    const T* g = grad.const_data_ptr<T>();
    const T* rb = r5.const_data_ptr<T>();
    std::vector<RoiGeometry<T>> geo(K);
    for (int64_t r = 0; r < K; ++r) {
      roi_batch_index(rb[5 * r], N, r);  // clear error for a bad batch index
      geo[r] = roi_geometry<T>(rb[5 * r + 1], rb[5 * r + 2], rb[5 * r + 3], rb[5 * r + 4], T(spatial_scale), PH, PW,
                               sampling_ratio, aligned);
    }
    // The same tile lists as the CUDA kernel, so the tests cover them too.
    const TileLists tl = make_tile_lists(rois, at::Tensor(), {spatial_scale}, N, H, W, aligned);
    const int64_t* tile_rois = tl.rois.const_data_ptr<int64_t>();
    const int64_t* offsets = tl.offsets.const_data_ptr<int64_t>();
    T* o = out.mutable_data_ptr<T>();
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / C, c = t % C;
        for (int64_t y = 0; y < H; ++y) {
          for (int64_t x = 0; x < W; ++x) {
            const int64_t key = (n * tl.tiles_y + y / kTile) * tl.tiles_x + x / kTile;
            T acc = T(0);
            for (int64_t j = offsets[key]; j < offsets[key + 1]; ++j) {
              const int64_t r = tile_rois[j];
              acc += gather_roi_grad(geo[r], PH, PW, H, W, y, x, g + (r * C + c) * PH * PW, PW, int64_t(1));
            }
            o[(t * H + y) * W + x] = acc;
          }
        }
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace roi_align
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  using namespace detops::roi_align;
  m.impl("roi_align", &roi_align_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
  m.impl("multi_scale_roi_align", &multi_scale_cpu);
  m.impl("multi_scale_roi_align_backward", &multi_scale_backward_cpu);
  m.impl("_roi_align_backward_gather", &backward_gather_cpu);
}
