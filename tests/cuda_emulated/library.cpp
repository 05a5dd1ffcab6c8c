// The operator library of the emulated CUDA kernels; each op's schema file
// adds its schemas to it (the build renames detops -> detops_emu).
#include <torch/library.h>

TORCH_LIBRARY(detops, m) {}
