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
#include <c10/util/Exception.h>

#include <utility>

#include <cmath>
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

}  // namespace detops
