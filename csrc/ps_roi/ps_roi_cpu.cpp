// CPU kernels of the position-sensitive RoI ops.
//
// Forward: output channel c of bin (ph, pw) reads input channel
// (c * PH + ph) * PW + pw (ps_roi_math.h). NCHW maps: a task is one (image,
// input channel) plane and visits its image's RoIs in order, each reading one
// bin of it (the plane stays in cache); channels-last maps: a task is one
// (RoI, output channel). The geometry (ps_roi_align's valid row and column
// samples, ps_roi_pool's bins) is worked out once per RoI, not once per
// output element as in torchvision, and maps are read in place.
//
// Backward: a task is one (image, input channel) plane. That channel belongs
// to one output channel and one bin, so the plane visits its image's RoIs in
// order and adds their gradient shares: no atomics, the same result for any
// thread count, and (ps_roi_align) torchvision's order of additions.
//
// Results equal torchvision's bit for bit in float32 and float64: the bins
// sum their samples (ps_roi_align: w1 v1 + w2 v2 + w3 v3 + w4 v4 per sample)
// or pixels in torchvision's order and divide as it does; this file is built
// without FMA contraction. One deliberate difference: torchvision's
// ps_roi_pool backward clips bins to [0, size] where its forward clips to
// [0, size - 1] (and rounds float64 corners through float), so its gradient
// is not its forward's where a bin reaches the map's last row or column.
// Here the backward is the forward's gradient (gradcheck holds everywhere);
// elsewhere it equals torchvision's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/huge_pages.h"
#include "common/memory_format.h"
#include "ps_roi/ps_roi.h"

namespace detops {
namespace ps_roi {
namespace {

using roi_align::sample_weights;
using roi_align::SampleWeights;

std::vector<int64_t> batch_indices(const at::Tensor& rois, int64_t N) {
  const at::Tensor r = rois.to(at::kDouble).contiguous();
  const double* r5 = r.const_data_ptr<double>();
  std::vector<int64_t> batch(rois.size(0));
  for (int64_t i = 0; i < rois.size(0); ++i) batch[i] = roi_batch_index(r5[5 * i], N, i);
  return batch;
}

// ps_roi_align: per RoI, the valid samples of each output row (ph) and column
// (pw) in sample order; a sample outside the map adds nothing in torchvision.
template <typename T>
struct AlignPlan {
  int64_t PH = 0, PW = 0;
  std::vector<int64_t> batch;
  std::vector<T> count;
  std::vector<int64_t> y_off, x_off;  // [K * PH + 1], [K * PW + 1]
  std::vector<AxisSample<T>> ys, xs;

  const AxisSample<T>* y_begin(int64_t r, int64_t ph) const { return ys.data() + y_off[r * PH + ph]; }
  const AxisSample<T>* y_end(int64_t r, int64_t ph) const { return ys.data() + y_off[r * PH + ph + 1]; }
  const AxisSample<T>* x_begin(int64_t r, int64_t pw) const { return xs.data() + x_off[r * PW + pw]; }
  const AxisSample<T>* x_end(int64_t r, int64_t pw) const { return xs.data() + x_off[r * PW + pw + 1]; }
};

template <typename T>
void add_axis_samples(T start, T bin, int64_t p, int64_t grid, int64_t size, std::vector<AxisSample<T>>& out,
                      std::vector<int64_t>& off) {
  for (int64_t i = 0; i < grid; ++i) {
    AxisSample<T> s;
    if (roi_align::axis_sample(roi_align::sample_pos(start, bin, p, i, grid), size, s)) out.push_back(s);
  }
  off.push_back(static_cast<int64_t>(out.size()));
}

template <typename T>
AlignPlan<T> align_plan(const at::Tensor& rois_in, int64_t N, int64_t H, int64_t W, double spatial_scale, int64_t PH,
                        int64_t PW, int64_t sampling_ratio) {
  AlignPlan<T> p;
  p.PH = PH;
  p.PW = PW;
  p.batch = batch_indices(rois_in, N);
  const at::Tensor rois = rois_in.to(c10::CppTypeToScalarType<T>::value).contiguous();
  const int64_t K = rois.size(0);
  const T* r5 = rois.const_data_ptr<T>();
  p.count.resize(K);
  p.y_off.assign(1, 0);
  p.x_off.assign(1, 0);
  for (int64_t r = 0; r < K; ++r) {
    const T* b = r5 + 5 * r;
    const RoiGeometry<T> g = align_geometry<T>(b[1], b[2], b[3], b[4], T(spatial_scale), PH, PW, sampling_ratio);
    p.count[r] = g.count;
    for (int64_t ph = 0; ph < PH; ++ph) add_axis_samples(g.start_h, g.bin_h, ph, g.grid_h, H, p.ys, p.y_off);
    for (int64_t pw = 0; pw < PW; ++pw) add_axis_samples(g.start_w, g.bin_w, pw, g.grid_w, W, p.xs, p.x_off);
  }
  return p;
}

template <typename T>
double align_work(const AlignPlan<T>& p, int64_t C_out) {
  return 4.0 * static_cast<double>(p.ys.size()) * static_cast<double>(p.xs.size()) /
             std::max<double>(1.0, static_cast<double>(p.batch.size())) * static_cast<double>(C_out) +
         1.0;
}

// ps_roi_pool: the batch index and the clipped bins of every RoI.
struct PoolPlan {
  std::vector<int64_t> batch;
  std::vector<PoolBin> bins;  // [K * PH * PW]
};

template <typename T>
PoolPlan pool_plan(const at::Tensor& rois_in, int64_t N, int64_t H, int64_t W, double spatial_scale, int64_t PH,
                   int64_t PW) {
  PoolPlan p;
  p.batch = batch_indices(rois_in, N);
  const at::Tensor rois = rois_in.to(c10::CppTypeToScalarType<T>::value).contiguous();
  const int64_t K = rois.size(0);
  const T* r5 = rois.const_data_ptr<T>();
  p.bins.resize(K * PH * PW);
  for (int64_t r = 0; r < K; ++r) {
    const T* b = r5 + 5 * r;
    const PoolRoi<T> g = pool_geometry<T>(b[1], b[2], b[3], b[4], T(spatial_scale), PH, PW);
    for (int64_t ph = 0; ph < PH; ++ph)
      for (int64_t pw = 0; pw < PW; ++pw) p.bins[(r * PH + ph) * PW + pw] = ps_pool_bin(g, ph, pw, H, W);
  }
  return p;
}

double pool_work(const PoolPlan& p, int64_t C_out) {
  double pixels = 1.0;
  for (const PoolBin& b : p.bins)
    if (!b.empty()) pixels += static_cast<double>((b.hend - b.hstart) * (b.wend - b.wstart));
  return pixels * static_cast<double>(C_out);
}

struct Strides {
  int64_t n, c, h, w;
};

Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// ------------------------------------------------------------------ forward

// Calls bin(r, ph, pw, plane, strides) -> value for every output element and
// writes the output and channel_mapping. NCHW maps: a task is one (image,
// input channel) plane, which visits its image's RoIs in order (each RoI
// reads one bin of it), so the plane stays in cache; channels-last maps: a
// task is one (RoI, output channel), whose bins read nearby channels of the
// same pixels.
template <typename scalar_t, typename Bin>
void forward_tasks(const at::Tensor& input, const std::vector<int64_t>& batch, int64_t C_out, int64_t PH, int64_t PW,
                   double work, at::Tensor& out, at::Tensor& mapping, const Bin& bin) {
  const int64_t K = static_cast<int64_t>(batch.size()), N = input.size(0), C = input.size(1);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const Strides s = strides_of(input);
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  int32_t* m = mapping.mutable_data_ptr<int32_t>();
  if (!is_channels_last(input)) {
    std::vector<int64_t> keys(batch);
    const RoiBuckets buckets(keys, N);
    // Channel outermost, so the static split gives every thread all images.
    at::parallel_for(0, C * N, grain_for(C * N, work), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t c_in = t / N, n = t % N;
        const int64_t c = c_in / (PH * PW), ph = (c_in / PW) % PH, pw = c_in % PW;
        const scalar_t* plane = in + n * s.n + c_in * s.c;
        for (int64_t i = buckets.begin(n); i < buckets.end(n); ++i) {
          const int64_t r = buckets.rois[i];
          const int64_t idx = ((r * C_out + c) * PH + ph) * PW + pw;
          o[idx] = scalar_t(bin(r, ph, pw, plane, s));
          m[idx] = static_cast<int32_t>(c_in);
        }
      }
    });
    return;
  }
  at::parallel_for(0, K * C_out, grain_for(K * C_out, work), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / C_out, c = t % C_out;
      const scalar_t* image = in + batch[r] * s.n;
      for (int64_t ph = 0; ph < PH; ++ph) {
        for (int64_t pw = 0; pw < PW; ++pw) {
          const int64_t c_in = input_channel(c, ph, pw, PH, PW);
          const int64_t idx = (t * PH + ph) * PW + pw;
          o[idx] = scalar_t(bin(r, ph, pw, image + c_in * s.c, s));
          m[idx] = static_cast<int32_t>(c_in);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> allocate_outputs(const at::Tensor& input, int64_t K, int64_t C_out, int64_t PH,
                                                    int64_t PW) {
  return {with_huge_pages(at::empty({K, C_out, PH, PW}, input.options())),
          with_huge_pages(at::empty({K, C_out, PH, PW}, input.options().dtype(at::kInt)))};
}

std::tuple<at::Tensor, at::Tensor> ps_roi_align_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                    double spatial_scale, int64_t PH, int64_t PW,
                                                    int64_t sampling_ratio) {
  const int64_t C_out = check_forward_args(input, rois, spatial_scale, PH, PW);
  auto [out, mapping] = allocate_outputs(input, rois.size(0), C_out, PH, PW);
  if (out.numel() == 0) return {out, mapping};
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ps_roi_align_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const AlignPlan<T> p = align_plan<T>(rois, N, H, W, spatial_scale, PH, PW, sampling_ratio);
    forward_tasks<scalar_t>(input, p.batch, C_out, PH, PW, align_work(p, C_out), out, mapping,
                            [&](int64_t r, int64_t ph, int64_t pw, const scalar_t* plane, const Strides& s) {
                              T acc = T(0);
                              for (const AxisSample<T>* y = p.y_begin(r, ph); y != p.y_end(r, ph); ++y) {
                                const scalar_t* rl = plane + y->low * s.h;
                                const scalar_t* rh = plane + y->high * s.h;
                                for (const AxisSample<T>* x = p.x_begin(r, pw); x != p.x_end(r, pw); ++x) {
                                  const int64_t xl = x->low * s.w, xh = x->high * s.w;
                                  const SampleWeights<T> w = sample_weights(*y, *x);
                                  acc += w.w1 * T(rl[xl]) + w.w2 * T(rl[xh]) + w.w3 * T(rh[xl]) + w.w4 * T(rh[xh]);
                                }
                              }
                              return acc / p.count[r];
                            });
  });
  return {out, mapping};
}

std::tuple<at::Tensor, at::Tensor> ps_roi_pool_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                   double spatial_scale, int64_t PH, int64_t PW) {
  const int64_t C_out = check_forward_args(input, rois, spatial_scale, PH, PW);
  auto [out, mapping] = allocate_outputs(input, rois.size(0), C_out, PH, PW);
  if (out.numel() == 0) return {out, mapping};
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ps_roi_pool_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const PoolPlan p = pool_plan<T>(rois, N, H, W, spatial_scale, PH, PW);
    forward_tasks<scalar_t>(input, p.batch, C_out, PH, PW, pool_work(p, C_out), out, mapping,
                            [&](int64_t r, int64_t ph, int64_t pw, const scalar_t* plane, const Strides& s) {
                              const PoolBin& b = p.bins[(r * PH + ph) * PW + pw];
                              if (b.empty()) return T(0);
                              T acc = T(0);
                              for (int64_t h = b.hstart; h < b.hend; ++h)
                                for (int64_t w = b.wstart; w < b.wend; ++w) acc += T(plane[h * s.h + w * s.w]);
                              return acc / bin_area<T>(b);
                            });
  });
  return {out, mapping};
}

// ------------------------------------------------------------------ backward

// grad_input [N, C, H, W] (contiguous): plane (n, c_in) is the sum, over the
// RoIs of image n in order, of add(r, g, plane) with g the gradient of the
// output element that read the plane (zero gradients add nothing and are
// skipped; a plane starts at +0, so no sign of zero changes).
template <typename scalar_t, typename Add>
at::Tensor backward_tasks(const at::Tensor& grad, const std::vector<int64_t>& batch, int64_t PH, int64_t PW,
                          int64_t N, int64_t C, int64_t H, int64_t W, double work, const Add& add) {
  using T = at::opmath_type<scalar_t>;
  at::Tensor grad_input = with_huge_pages(at::empty({N, C, H, W}, grad.options()));
  std::vector<int64_t> keys(batch);
  const RoiBuckets buckets(keys, N);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const Strides gs = strides_of(grad);
  scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
  const int64_t HW = H * W;
  // Channel outermost, so the static split gives every thread all images.
  at::parallel_for(0, C * N, grain_for(C * N, work + static_cast<double>(N * C * HW)), [&](int64_t begin,
                                                                                           int64_t end) {
    std::vector<T> buf;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c_in = t / N, n = t % N;
      const int64_t c = c_in / (PH * PW), ph = (c_in / PW) % PH, pw = c_in % PW;
      scalar_t* dst = gi + (n * C + c_in) * HW;
      T* plane;
      if constexpr (std::is_same_v<scalar_t, T>) {
        plane = dst;
      } else {
        buf.resize(HW);
        plane = buf.data();
      }
      std::fill(plane, plane + HW, T(0));
      for (int64_t i = buckets.begin(n); i < buckets.end(n); ++i) {
        const int64_t r = buckets.rois[i];
        const T go = T(g[r * gs.n + c * gs.c + ph * gs.h + pw * gs.w]);
        if (go != T(0)) add(r, ph, pw, go, plane);
      }
      if constexpr (!std::is_same_v<scalar_t, T>) {
        for (int64_t j = 0; j < HW; ++j) dst[j] = scalar_t(plane[j]);
      }
    }
  });
  return grad_input;
}

at::Tensor ps_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& mapping,
                                     double spatial_scale, int64_t PH, int64_t PW, int64_t sampling_ratio, int64_t N,
                                     int64_t C, int64_t H, int64_t W) {
  const int64_t C_out = check_backward_args(grad, rois, mapping, spatial_scale, PH, PW, N, C, H, W);
  if (grad.numel() == 0 || N * C * H * W == 0) return at::zeros({N, C, H, W}, grad.options());
  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ps_roi_align_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const AlignPlan<T> p = align_plan<T>(rois, N, H, W, spatial_scale, PH, PW, sampling_ratio);
    grad_input = backward_tasks<scalar_t>(
        grad, p.batch, PH, PW, N, C, H, W, align_work(p, C_out),
        [&](int64_t r, int64_t ph, int64_t pw, T go, T* plane) {
          // torchvision's order: samples (rows outer), then the four taps,
          // each adding grad * w / count.
          const T count = p.count[r];
          for (const AxisSample<T>* y = p.y_begin(r, ph); y != p.y_end(r, ph); ++y) {
            T* rl = plane + y->low * W;
            T* rh = plane + y->high * W;
            for (const AxisSample<T>* x = p.x_begin(r, pw); x != p.x_end(r, pw); ++x) {
              const SampleWeights<T> w = sample_weights(*y, *x);
              rl[x->low] += go * w.w1 / count;
              rl[x->high] += go * w.w2 / count;
              rh[x->low] += go * w.w3 / count;
              rh[x->high] += go * w.w4 / count;
            }
          }
        });
  });
  return grad_input;
}

at::Tensor ps_roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& mapping,
                                    double spatial_scale, int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H,
                                    int64_t W) {
  const int64_t C_out = check_backward_args(grad, rois, mapping, spatial_scale, PH, PW, N, C, H, W);
  if (grad.numel() == 0 || N * C * H * W == 0) return at::zeros({N, C, H, W}, grad.options());
  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ps_roi_pool_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const PoolPlan p = pool_plan<T>(rois, N, H, W, spatial_scale, PH, PW);
    grad_input = backward_tasks<scalar_t>(
        grad, p.batch, PH, PW, N, C, H, W, pool_work(p, C_out),
        [&](int64_t r, int64_t ph, int64_t pw, T go, T* plane) {
          const PoolBin& b = p.bins[(r * PH + ph) * PW + pw];
          if (b.empty()) return;
          const T diff = go / bin_area<T>(b);
          for (int64_t h = b.hstart; h < b.hend; ++h)
            for (int64_t w = b.wstart; w < b.wend; ++w) plane[h * W + w] += diff;
        });
  });
  return grad_input;
}

}  // namespace
}  // namespace ps_roi
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  using namespace detops::ps_roi;
  m.impl("ps_roi_align", &ps_roi_align_cpu);
  m.impl("ps_roi_align_backward", &ps_roi_align_backward_cpu);
  m.impl("ps_roi_pool", &ps_roi_pool_cpu);
  m.impl("ps_roi_pool_backward", &ps_roi_pool_backward_cpu);
}
