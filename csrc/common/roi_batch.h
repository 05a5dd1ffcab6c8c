// Host helpers shared by the RoI ops (roi_align, roi_pool): reading the batch
// index of each RoI with a clear error instead of an out-of-bounds read, and
// grouping RoIs by (level, image) so that CPU kernels can hand each feature
// plane to one thread (no atomics, deterministic) and visit its RoIs in order.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <cstdint>
#include <vector>

namespace detops {

// rois: [K, 5] (batch_index, x1, y1, x2, y2). Batch indices are truncated
// toward zero as torchvision does ((int) of the float value).
inline void check_rois_shape(const at::Tensor& rois) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5,
              "rois must have shape [K, 5] (batch_index, x1, y1, x2, y2), got ", rois.sizes());
  TORCH_CHECK(rois.scalar_type() == at::kFloat || rois.scalar_type() == at::kDouble ||
                  rois.scalar_type() == at::kHalf || rois.scalar_type() == at::kBFloat16,
              "rois must be a floating tensor, got ", rois.scalar_type());
}

template <typename T>
inline int64_t roi_batch_index(T value, int64_t batch_size, int64_t roi) {
  const double v = static_cast<double>(value);
  TORCH_CHECK(std::isfinite(v) && v > -1.0 && v < static_cast<double>(batch_size),
              "rois[", roi, ", 0] (the batch index) must be in [0, ", batch_size, "), got ", v);
  return static_cast<int64_t>(v);
}

// Grain (tasks per parallel chunk) so that every chunk carries at least
// min_work elementary operations: small problems then run on the calling
// thread, where waking a thread pool would cost more than the work (and on a
// busy machine, a scheduler slice).
inline int64_t grain_for(int64_t tasks, double total_work, double min_work = 4e6) {
  if (tasks <= 0 || total_work <= min_work) return tasks > 0 ? tasks : 1;
  const double g = static_cast<double>(tasks) * min_work / total_work;
  return g < 1.0 ? 1 : static_cast<int64_t>(g);
}

// RoIs grouped by key = level * batch_size + batch, each group in RoI order.
struct RoiBuckets {
  std::vector<int64_t> offsets;  // [num_keys + 1]
  std::vector<int64_t> rois;     // [K]

  RoiBuckets(const std::vector<int64_t>& keys, int64_t num_keys) : offsets(num_keys + 1, 0), rois(keys.size()) {
    for (int64_t k : keys) ++offsets[k + 1];
    for (int64_t i = 0; i < num_keys; ++i) offsets[i + 1] += offsets[i];
    std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
    for (int64_t r = 0; r < static_cast<int64_t>(keys.size()); ++r) rois[fill[keys[r]]++] = r;
  }
  int64_t begin(int64_t key) const { return offsets[key]; }
  int64_t end(int64_t key) const { return offsets[key + 1]; }
};

// The RoIs of each image in RoI order, computed with tensor ops on the rois'
// device (no host sync), for the gather-form (deterministic) CUDA backwards:
// (order [K] int64, offsets [N + 1] int64), image n's RoIs being
// order[offsets[n] : offsets[n + 1]]. RoIs with a batch index outside [0, N)
// are left out (the forward has already rejected them).
inline std::pair<at::Tensor, at::Tensor> rois_by_image(const at::Tensor& rois, int64_t batch_size) {
  const at::Tensor batch = rois.select(1, 0);
  const at::Tensor valid = batch.gt(-1).logical_and(batch.lt(batch_size));
  const at::TensorOptions longs = rois.options().dtype(at::kLong);
  const at::Tensor keys = at::where(valid, batch.to(at::kLong), at::full({}, batch_size, longs));
  auto [sorted, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor offsets = at::searchsorted(sorted, at::arange(batch_size + 1, longs)).contiguous();
  return {order.contiguous(), offsets};
}

// RoI lists per spatial tile, for the gather-form (deterministic) backwards of
// RoIAlign and RoIPool: each map element visits only the RoIs whose samples
// (RoIAlign) or bins (RoIPool, with aligned = false: its rounded corners and
// bins lie within the margin) may reach its tile.
// Built with tensor ops on the RoIs' device (no host sync).
constexpr int64_t kTile = 16;  // tile side in map elements (kTileSide in roi_align_cuda.h and roi_pool_cuda.h)

struct TileLists {
  at::Tensor rois;     // [P] int64: RoI indices, grouped by key, ascending RoI order within a key
  at::Tensor offsets;  // [num_levels * N * tiles_y * tiles_x + 1] int64
  int64_t tiles_y = 0, tiles_x = 0;
};

// key of element (level, n, y, x) = ((level * N + n) * tiles_y + y / kTile) * tiles_x + x / kTile.
// rois: [K, 5] floating; levels: [K] int64 or undefined (all level 0). RoIs
// with a batch index outside [0, N) or a bad level are left out.
inline TileLists make_tile_lists(const at::Tensor& rois_in, const at::Tensor& levels_in, at::ArrayRef<double> scales,
                                 int64_t N, int64_t max_height, int64_t max_width, bool aligned) {
  const int64_t K = rois_in.size(0), L = static_cast<int64_t>(scales.size());
  TileLists t;
  t.tiles_y = std::max<int64_t>(1, (max_height + kTile - 1) / kTile);
  t.tiles_x = std::max<int64_t>(1, (max_width + kTile - 1) / kTile);
  const int64_t tiles = t.tiles_y * t.tiles_x, num_keys = L * N * tiles;
  const at::Tensor rois = rois_in.to(at::kDouble);
  const at::TensorOptions long_opts = rois.options().dtype(at::kLong);
  const at::Tensor lv = levels_in.defined() ? levels_in : at::zeros({K}, long_opts);
  const at::Tensor batch = rois.select(1, 0);
  const at::Tensor valid = batch.gt(-1).logical_and(batch.lt(N)).logical_and(lv.ge(0)).logical_and(lv.lt(L));
  at::Tensor scale = at::zeros({K}, rois.options());
  for (int64_t l = 0; l < L; ++l) scale = at::where(lv.eq(l), at::full({}, scales[l], rois.options()), scale);
  // Extent of the samples along one axis (roi_geometry's corners, in double,
  // with a margin of 3 elements for the taps and any rounding), as tile indices.
  const double offset = aligned ? 0.5 : 0.0;
  const auto tile_range = [&](int64_t lo_col, int64_t hi_col, int64_t tiles) {
    const at::Tensor start = rois.select(1, lo_col).mul(scale).sub(offset);
    at::Tensor end = rois.select(1, hi_col).mul(scale).sub(offset);
    if (!aligned) end = start.add(end.sub(start).clamp_min(1.0));
    const double last = static_cast<double>(tiles * kTile - 1);
    const at::Tensor lo = start.minimum(end).sub(3.0).clamp(0.0, last).div(double(kTile)).floor().to(at::kLong);
    const at::Tensor hi = start.maximum(end).add(3.0).clamp(0.0, last).div(double(kTile)).floor().to(at::kLong);
    return std::make_pair(lo, hi);
  };
  const auto [y0, y1] = tile_range(2, 4, t.tiles_y);
  const auto [x0, x1] = tile_range(1, 3, t.tiles_x);
  const at::Tensor ty = at::arange(t.tiles_y, long_opts).view({1, -1, 1});
  const at::Tensor tx = at::arange(t.tiles_x, long_opts).view({1, 1, -1});
  const at::Tensor hit = ty.ge(y0.view({-1, 1, 1}))
                             .logical_and(ty.le(y1.view({-1, 1, 1})))
                             .logical_and(tx.ge(x0.view({-1, 1, 1})))
                             .logical_and(tx.le(x1.view({-1, 1, 1})))
                             .logical_and(valid.view({-1, 1, 1}));
  const at::Tensor base = lv.mul(N).add(batch.clamp(0.0, double(std::max<int64_t>(N - 1, 0))).to(at::kLong));
  const at::Tensor keys = base.view({-1, 1, 1}).mul(t.tiles_y).add(ty).mul(t.tiles_x).add(tx);
  const at::Tensor flat = at::where(hit, keys, at::full({}, num_keys, long_opts)).reshape({-1});
  // Stable sort of the (RoI, tile) pairs, flattened RoI-major: RoI order is kept within each key.
  auto [sorted, order] = at::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  t.rois = order.div(tiles, "floor").contiguous();
  t.offsets = at::searchsorted(sorted, at::arange(num_keys + 1, long_opts)).contiguous();
  return t;
}


}  // namespace detops
