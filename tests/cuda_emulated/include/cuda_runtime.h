// The emulated test build maps the CUDA headers to the CPU emulator.
#pragma once
#include "common/cuda_emulator.h"
