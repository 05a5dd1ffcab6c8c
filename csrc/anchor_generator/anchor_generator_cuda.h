// Launcher of the anchor generation CUDA kernel. Type-erased (raw pointers and
// a DType) so that anchor_generator_cuda.cu needs no ATen headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "anchor_generator/anchor_generator_math.h"
#include "common/dtype.h"

namespace detops {
namespace anchor_generator {

// cell_anchors: [sum_l A_l, 4] on the device; out: [num_images, table.anchors_per_image, 4].
// One launch for every level and image. Returns the launch status.
cudaError_t grid_anchors_cuda(DType dtype, const LevelTable& table, const void* cell_anchors, void* out,
                              int64_t num_images, cudaStream_t stream);

}  // namespace anchor_generator
}  // namespace detops
