// CUDA kernel of anchor generation: one thread per anchor of the whole batch,
// every level in one launch (the level table is a kernel argument). Only
// indexing, loads and stores live here; locate() and shifted() are
// anchor_generator_math.h, which the CPU tests exercise.
#include "anchor_generator/anchor_generator_cuda.h"
#include "common/cuda_utils.cuh"

namespace detops {
namespace anchor_generator {
namespace {

constexpr int kThreads = 256;

template <typename S, typename I>
__global__ void grid_anchors_kernel(const LevelTable table, const S* __restrict__ cell_anchors, S* __restrict__ out,
                                    I total) {
  using T = opmath_t<S>;
  for (I i = grid_first<I>(); i < total; i += grid_stride<I>()) {
    const AnchorSite site = locate(table, i % static_cast<I>(table.anchors_per_image));
    // torch converts the integer shifts to the anchors' dtype before the add.
    const T shift_x = convert<T>(convert<S>(T(site.x * table.stride_w[site.level])));
    const T shift_y = convert<T>(convert<S>(T(site.y * table.stride_h[site.level])));
    const S* cell = cell_anchors + 4 * site.cell;
    S* dst = out + 4 * int64_t(i);
    dst[0] = convert<S>(shifted(shift_x, convert<T>(cell[0])));
    dst[1] = convert<S>(shifted(shift_y, convert<T>(cell[1])));
    dst[2] = convert<S>(shifted(shift_x, convert<T>(cell[2])));
    dst[3] = convert<S>(shifted(shift_y, convert<T>(cell[3])));
  }
}

}  // namespace

cudaError_t grid_anchors_cuda(DType dtype, const LevelTable& table, const void* cell_anchors, void* out,
                              int64_t num_images, cudaStream_t stream) {
  const int64_t total = num_images * table.anchors_per_image;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<grid_anchors_kernel<S, I>>(blocks, kThreads, 0, stream,
          table, static_cast<const S*>(cell_anchors), static_cast<S*>(out), I(total));
    });
  });
  return cudaGetLastError();
}

}  // namespace anchor_generator
}  // namespace detops
