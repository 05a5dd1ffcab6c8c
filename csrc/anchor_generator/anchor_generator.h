// Anchor generation entry points, shared by the schema file and the CPU and
// CUDA registrations.
#pragma once

#include <ATen/core/Tensor.h>

#include "anchor_generator/anchor_generator_math.h"
#include "common/checks.h"

namespace detops {
namespace anchor_generator {

// Checks the arguments of grid_anchors and builds the level table.
LevelTable make_table(const at::Tensor& cell_anchors, at::IntArrayRef num_cell_anchors, at::IntArrayRef grid_sizes,
                      at::IntArrayRef strides, int64_t num_images);

}  // namespace anchor_generator
}  // namespace detops
