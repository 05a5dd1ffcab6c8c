// CUDA kernel of mask pasting: one thread per output pixel, zero outside the
// mask's window. Only indexing, loads and stores live here; the arithmetic is
// paste_masks_math.h, which the CPU tests exercise (with fused multiply-adds,
// as torch's AVX2/AVX512 CPU resize rounds).
#include "common/cuda_utils.cuh"
#include "paste_masks/paste_masks_cuda.h"
#include "paste_masks/paste_masks_math.h"

namespace detops {
namespace paste_masks {
namespace {

constexpr int kThreads = 256;

template <typename T, typename S>
struct Load {
  const S* mask;
  __device__ __forceinline__ T operator()(int64_t i) const { return convert<T>(mask[i]); }
};

template <typename S, typename I>
__global__ void paste_kernel(const S* __restrict__ masks, const int64_t* __restrict__ boxes,
                             const int64_t* __restrict__ image_sizes, S* __restrict__ out, I total, int64_t in_h,
                             int64_t in_w, int64_t height, int64_t width, int64_t padding) {
  using T = opmath_t<S>;
  const I H = static_cast<I>(height), W = static_cast<I>(width);
  for (I i = grid_first<I>(); i < total; i += grid_stride<I>()) {
    const int64_t x = static_cast<int64_t>(i % W);
    const int64_t y = static_cast<int64_t>((i / W) % H);
    const int64_t n = static_cast<int64_t>(i / (W * H));
    const Placement p = place(boxes + 4 * n, image_sizes + 2 * n, height, width);
    T value = T(0);
    if (inside(p, y, x)) {
      const Tap<T> ty = axis_tap<T, true>(y - p.y0, in_h + 2 * padding, p.h);
      const Tap<T> tx = axis_tap<T, true>(x - p.x0, in_w + 2 * padding, p.w);
      value = resized_pixel<T, true>(Load<T, S>{masks + n * in_h * in_w}, in_h, in_w, padding, ty, tx, p.small_box);
    }
    out[i] = convert<S>(value);
  }
}

}  // namespace

cudaError_t paste_masks_cuda(DType dtype, const void* masks, const int64_t* boxes, const int64_t* image_sizes,
                             void* out, int64_t N, int64_t in_h, int64_t in_w, int64_t height, int64_t width,
                             int64_t padding, cudaStream_t stream) {
  const int64_t total = N * height * width;
  if (total == 0) return cudaSuccess;
  dispatch_dtype(dtype, [&](auto s) {
    using S = decltype(s);
    dispatch_grid(total, kThreads, [&](auto index, unsigned int blocks) {
      using I = decltype(index);
      launch<paste_kernel<S, I>>(blocks, kThreads, 0, stream, static_cast<const S*>(masks), boxes, image_sizes,
                                 static_cast<S*>(out), I(total), in_h, in_w, height, width, padding);
    });
  });
  return cudaGetLastError();
}

}  // namespace paste_masks
}  // namespace detops
