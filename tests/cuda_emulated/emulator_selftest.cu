// Kernels that test the emulator itself (csrc/common/cuda_emulator.h): launch
// limits, warp operations, barrier reductions, deadlock and assert reports,
// block order. Exposed as detops_emu::_emulator_selftest(name) -> int64 tensor
// (tests/cuda_emulated/test_cuda_emulated.py checks the values).
#include "common/cuda_utils.cuh"

namespace detops {
namespace emulator_selftest {

__global__ void noop_kernel() {}

// 64 threads, 8 values each: shuffles, ballot and the barrier reductions.
__global__ void warp_ops_kernel(int64_t* out) {
  const int t = threadIdx.x, lane = t % 32;
  int64_t* o = out + 8 * t;
  o[0] = __shfl_down_sync(0xffffffffu, lane, 1);
  o[1] = __shfl_xor_sync(0xffffffffu, lane, 5);
  o[2] = __shfl_sync(0xffffffffu, lane * 10 + t / 32, 3);
  o[3] = __shfl_up_sync(0xffffffffu, lane, 2, 8);
  o[4] = __ballot_sync(0xffffffffu, lane % 2 == 1);
  o[5] = __syncthreads_count(t < 10);
  o[6] = __syncthreads_and(t < 64) * 10 + __syncthreads_or(t == 63);
  o[7] = __any_sync(0xffffffffu, t == 40) * 10 + __all_sync(0xffffffffu, lane < 31);
}

// Threads 0-15 wait at __syncthreads, 16-31 at a warp barrier naming them all.
__global__ void deadlock_kernel() {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncwarp();
  }
}

__global__ void assert_kernel(int64_t value) { DETOPS_KERNEL_CHECK(value < 0, "value must be negative"); }

// Shared memory is per block: each block stages its index, syncs, and reads
// its neighbour thread's slot; out[block] = the order the block ran in.
__global__ void shared_and_order_kernel(int64_t* out, int64_t* counter) {
  __shared__ int64_t slot[32];
  slot[threadIdx.x] = blockIdx.x * 100 + threadIdx.x;
  __syncthreads();
  const int64_t neighbour = slot[(threadIdx.x + 1) % 32];
  if (threadIdx.x == 0) out[2 * blockIdx.x] = atomicAdd(reinterpret_cast<unsigned long long*>(counter), 1ull);
  if (threadIdx.x == 31) out[2 * blockIdx.x + 1] = neighbour;
}

}  // namespace emulator_selftest
}  // namespace detops

// The host side: no ATen in a .cu, so the registration lives in
// emulator_selftest.cpp, which calls this.
int64_t detops_emu_selftest(const char* name, int64_t* out, int64_t* counter) {
  using namespace detops;
  using namespace detops::emulator_selftest;
  const std::string n = name;
  if (n == "zero_grid") {
    launch<noop_kernel>(dim3(0), 32, 0, nullptr);
  } else if (n == "block_1025") {
    launch<noop_kernel>(1, 1025, 0, nullptr);
  } else if (n == "block_z_65") {
    launch<noop_kernel>(1, dim3(1, 1, 65), 0, nullptr);
  } else if (n == "grid_y_65536") {
    launch<noop_kernel>(dim3(1, 65536), 32, 0, nullptr);
  } else if (n == "shared_228k") {
    launch<noop_kernel>(1, 32, 228 * 1024, nullptr);
  } else if (n == "grid_max_ok") {  // the largest grid.y: 65535 one-thread blocks
    launch<noop_kernel>(dim3(1, 65535, 1), dim3(1), 0, nullptr);
  } else if (n == "block_max_ok") {  // the largest block and shared memory (one block: 65535 x 1024 fibers take minutes)
    launch<noop_kernel>(dim3(1), dim3(1024), 227 * 1024, nullptr);
  } else if (n == "warp_ops") {
    launch<warp_ops_kernel>(1, 64, 0, nullptr, out);
  } else if (n == "deadlock") {
    launch<deadlock_kernel>(1, 32, 0, nullptr);
  } else if (n == "assert") {
    launch<assert_kernel>(3, 64, 0, nullptr, int64_t(5));
  } else if (n == "shared_and_order") {
    launch<shared_and_order_kernel>(64, 32, 0, nullptr, out, counter);
  }
  return static_cast<int64_t>(cudaGetLastError());
}
