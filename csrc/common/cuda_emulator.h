// CUDA semantics on the CPU, for tests only: lets the unchanged *_cuda.cu
// sources compile with the host compiler (tests/cuda_emulated builds them with
// -DDETOPS_CUDA_EMULATED and ASan/UBSan, and its include/ folder maps
// <cuda_runtime.h>, <cuda_fp16.h>, ... here). Never part of the wheel.
//
// Model: a launch (detops::launch in cuda_utils.cuh) checks sm_90's launch
// limits, then runs the grid's blocks one after another in a shuffled order
// (a kernel relying on block order fails). A block's threads are ucontext
// fibers; a fiber runs until it reaches a barrier or a warp operation, so
// every __syncthreads / __syncwarp / shuffle is a real rendezvous:
//   * __syncthreads(_or/_and/_count) waits for every thread of the block that
//     has not exited (Volta+ semantics);
//   * warp operations (__syncwarp, __shfl*_sync, __ballot_sync, __any/__all_sync)
//     wait for every lane named in the mask, which must all reach the same kind
//     of operation; a mask naming an exited or missing lane is an error;
//   * a block whose live threads all wait but can never be released (a
//     barrier in divergent code) is a deadlock error naming the kernel.
// __shared__ is static thread_local: blocks run sequentially on the launching
// thread, so it is per-block storage (uninitialised from the kernel's view:
// it keeps whatever the previous block left). Atomics go through
// std::atomic_ref. A device-side assertion (assert, DETOPS_KERNEL_CHECK)
// throws cuda_emu::DeviceError naming the kernel, block and thread; launch
// errors (bad configuration) are returned by cudaGetLastError() as CUDA does.
//
// What it cannot show: data races between threads that no barrier orders
// (fibers are not preempted, so a non-atomic read-modify-write between two
// threads still sums correctly), registers, occupancy and speed. The resource
// gate (scripts/cuda_resource_gate.py) and the GPU suite cover those.
#pragma once

#include <assert.h>
#include <math.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

// ------------------------------------------------------------------ runtime API types

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorAssert = 710,
};
using cudaError = cudaError_t;

struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace cuda_emu {

// sm_90 (H100 / H200) limits.
constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr unsigned int kMaxBlockDim[3] = {1024, 1024, 64};
constexpr unsigned int kMaxGridDim[3] = {2147483647u, 65535u, 65535u};
constexpr size_t kMaxSharedPerBlock = 227 * 1024;
constexpr int kWarpSize = 32;

// Launch errors are sticky until read, as cudaGetLastError() reads them.
inline thread_local cudaError_t last_error = cudaSuccess;

struct DeviceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class State { kReady, kBlockWait, kWarpWait, kDone };
enum class WarpOp { kSync, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot };

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  int linear = 0;
  State state = State::kReady;
  // __syncthreads_or/and/count: this thread's predicate, then the result.
  int pred = 0, pred_kind = 0, block_result = 0;
  // The pending warp operation: kind, mask, operand (raw bytes), lane argument, width.
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = kWarpSize;
  char* stack = nullptr;
  void* fake_stack = nullptr;
};

struct Block {
  const char* kernel = "";
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  std::vector<Fiber> fibers;
  Fiber* self = nullptr;
  ucontext_t scheduler;
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
  void* scheduler_fake_stack = nullptr;
  std::exception_ptr error;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
};

inline thread_local Block* current = nullptr;

inline Fiber& self() { return *current->self; }

inline std::string where() {
  const Block& b = *current;
  const Fiber& f = *b.self;
  char buf[160];
  snprintf(buf, sizeof(buf), " block (%u, %u, %u) thread (%u, %u, %u)", b.block_idx.x, b.block_idx.y,
           b.block_idx.z, f.tid.x, f.tid.y, f.tid.z);
  return std::string("kernel ") + b.kernel + buf;
}

[[noreturn]] inline void fail(const std::string& what) {
  throw DeviceError("CUDA emulator: " + what + " in " + (current != nullptr ? where() : std::string("?")));
}

// ------------------------------------------------------------------ fibers

// Stacks are reused across launches: 1024 fibers x 256 KiB of address space,
// touched lazily, with a guard page below each.
constexpr size_t kStackBytes = 256 * 1024;

inline char* fiber_stack(int i) {
  static thread_local std::vector<char*> stacks;
  while (static_cast<int>(stacks.size()) <= i) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("CUDA emulator: cannot map a fiber stack");
    mprotect(p, page, PROT_NONE);
    stacks.push_back(static_cast<char*>(p) + page);
  }
  return stacks[i];
}

// Switch from the running fiber back to the block's scheduler.
inline void yield_to_scheduler(bool exiting = false) {
  Block& b = *current;
  Fiber& f = *b.self;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake_stack, b.scheduler_stack, b.scheduler_stack_size);
#endif
  swapcontext(&f.ctx, &b.scheduler);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(f.fake_stack, &b.scheduler_stack, &b.scheduler_stack_size);
#endif
  (void)exiting;
}

inline void fiber_main() {
  Block& b = *current;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &b.scheduler_stack, &b.scheduler_stack_size);
#endif
  try {
    b.body(b.body_arg);
  } catch (...) {
    if (!b.error) b.error = std::current_exception();
  }
  b.self->state = State::kDone;
  yield_to_scheduler(/*exiting=*/true);
  std::abort();  // a finished fiber is never resumed
}

inline void resume(Block& b, Fiber& f) {
  b.self = &f;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(&b.scheduler_fake_stack, f.stack, kStackBytes);
#endif
  swapcontext(&b.scheduler, &f.ctx);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(b.scheduler_fake_stack, nullptr, nullptr);
#endif
}

// ------------------------------------------------------------------ barriers

// kind: 0 = or, 1 = and, 2 = count (the reduction __syncthreads_* returns).
inline int block_barrier(int pred, int kind) {
  Fiber& f = self();
  f.pred = pred != 0;
  f.pred_kind = kind;
  f.state = State::kBlockWait;
  yield_to_scheduler();
  return f.block_result;
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp operand of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
inline T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

inline uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width) {
  Fiber& f = self();
  const int lane = f.linear % kWarpSize;
  if (((mask >> lane) & 1u) == 0) fail("a warp operation whose mask does not name the calling lane");
  if (width <= 0 || width > kWarpSize || (width & (width - 1)) != 0) fail("a shuffle width that is not a power of 2 <= 32");
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  f.state = State::kWarpWait;
  yield_to_scheduler();
  return f.result;
}

// Releases the warp operations whose masks are complete; true if any was.
inline bool release_warps(Block& b) {
  bool released = false;
  const int n = static_cast<int>(b.fibers.size());
  for (int w0 = 0; w0 < n; w0 += kWarpSize) {
    for (int l = 0; l < kWarpSize && w0 + l < n; ++l) {
      Fiber& f = b.fibers[w0 + l];
      if (f.state != State::kWarpWait) continue;
      bool complete = true;
      for (int m = 0; m < kWarpSize; ++m) {
        if (((f.mask >> m) & 1u) == 0) continue;
        if (w0 + m >= n) {
          b.self = &f;
          fail("a warp mask naming a lane beyond blockDim");
        }
        Fiber& g = b.fibers[w0 + m];
        if (g.state == State::kDone) {
          b.self = &f;
          fail("a warp mask naming an exited lane");
        }
        if (g.state != State::kWarpWait) {
          complete = false;
          break;
        }
        if (g.op != f.op || g.mask != f.mask) {
          b.self = &f;
          fail("lanes of one mask at different warp operations (divergent __syncwarp / shuffle)");
        }
      }
      if (!complete) continue;
      uint64_t ballot = 0;
      for (int m = 0; m < kWarpSize; ++m) {
        if (((f.mask >> m) & 1u) != 0 && b.fibers[w0 + m].value != 0) ballot |= 1ull << m;
      }
      for (int m = 0; m < kWarpSize; ++m) {
        if (((f.mask >> m) & 1u) == 0) continue;
        Fiber& g = b.fibers[w0 + m];
        const int width = g.width, base = m - m % width, pos = m % width;
        int src = m;
        switch (g.op) {
          case WarpOp::kSync: break;
          case WarpOp::kShflIdx: src = base + ((g.arg % width) + width) % width; break;
          case WarpOp::kShflUp: src = pos - g.arg >= 0 ? m - g.arg : m; break;
          case WarpOp::kShflDown: src = pos + g.arg < width ? m + g.arg : m; break;
          case WarpOp::kShflXor: src = (pos ^ g.arg) < width ? base + (pos ^ g.arg) : m; break;
          case WarpOp::kBallot: break;
        }
        if (g.op == WarpOp::kBallot) {
          g.result = ballot;
        } else {
          if (((f.mask >> src) & 1u) == 0) {
            b.self = &g;
            fail("a shuffle reading a lane outside its mask");
          }
          g.result = b.fibers[w0 + src].value;
        }
      }
      for (int m = 0; m < kWarpSize; ++m) {
        if (((f.mask >> m) & 1u) != 0) b.fibers[w0 + m].state = State::kReady;
      }
      released = true;
    }
  }
  return released;
}

// Runs one block to completion.
inline void run_block(Block& b) {
  const int n = static_cast<int>(b.fibers.size());
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f = Fiber{};
    f.linear = i;
    f.tid = uint3{i % b.block_dim.x, (i / b.block_dim.x) % b.block_dim.y, i / (b.block_dim.x * b.block_dim.y)};
    f.stack = fiber_stack(i);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, &fiber_main, 0);
  }
  while (true) {
    bool ran = false;
    for (Fiber& f : b.fibers) {
      if (f.state != State::kReady) continue;
      resume(b, f);
      ran = true;
      if (b.error) return;
    }
    int live = 0, at_block = 0, count = 0, all = 1, any = 0;
    for (Fiber& f : b.fibers) {
      if (f.state == State::kDone) continue;
      ++live;
      if (f.state == State::kBlockWait) {
        ++at_block;
        count += f.pred != 0;
        any |= f.pred != 0;
        all &= f.pred != 0;
      }
    }
    if (live == 0) return;
    bool released = false;
    try {
      released = release_warps(b);
    } catch (...) {
      b.error = std::current_exception();
      return;
    }
    if (!released && at_block == live) {
      for (Fiber& f : b.fibers) {
        if (f.state != State::kBlockWait) continue;
        f.block_result = f.pred_kind == 2 ? count : (f.pred_kind == 1 ? all : any);
        f.state = State::kReady;
      }
      released = true;
    }
    if (!released && !ran) {
      for (Fiber& f : b.fibers) {
        if (f.state != State::kDone) {
          b.self = &f;
          break;
        }
      }
      try {
        fail("deadlock: live threads wait at barriers that can never complete (__syncthreads in divergent code, or a "
             "warp mask naming a lane at __syncthreads)");
      } catch (...) {
        b.error = std::current_exception();
      }
      return;
    }
  }
}

inline std::mt19937_64& block_order_rng() {
  static thread_local std::mt19937_64 rng([] {
    const char* s = std::getenv("DETOPS_EMU_SEED");
    return s != nullptr ? std::strtoull(s, nullptr, 10) : 0x5eedULL;
  }());
  return rng;
}

template <auto Kernel>
const char* kernel_name() {
  // "... [with auto Kernel = detops::nms::{anonymous}::mask_kernel<float>]".
  // __PRETTY_FUNCTION__ is read here, not inside the lambda (whose own name,
  // "kernel_name<...>()::<lambda()>", has no "Kernel = ").
  static const std::string name = [](const std::string_view pretty) {
    const size_t at = pretty.find("Kernel = ");
    std::string_view n = at == std::string_view::npos ? pretty : pretty.substr(at + 9);
    const size_t end = n.rfind(']');
    if (end != std::string_view::npos) n = n.substr(0, end);
    return std::string(n);
  }(__PRETTY_FUNCTION__);
  return name.c_str();
}

// Kernels launched so far and their largest block: DETOPS_EMU_LAUNCH_LOG names
// a file that each launch appends "kernel<TAB>threads<TAB>dynamic smem" to
// (scripts/cuda_resource_gate.py reads it to check register fit).
inline void log_launch(const char* kernel, const dim3& block, size_t shared_bytes) {
  static const char* path = std::getenv("DETOPS_EMU_LAUNCH_LOG");
  if (path == nullptr) return;
  if (FILE* f = std::fopen(path, "a")) {
    std::fprintf(f, "%s\t%u\t%zu\n", kernel, block.x * block.y * block.z, shared_bytes);
    std::fclose(f);
  }
}

inline cudaError_t check_config(const dim3& grid, const dim3& block, size_t shared_bytes) {
  const unsigned int g[3] = {grid.x, grid.y, grid.z}, t[3] = {block.x, block.y, block.z};
  for (int d = 0; d < 3; ++d) {
    if (g[d] == 0 || g[d] > kMaxGridDim[d] || t[d] == 0 || t[d] > kMaxBlockDim[d]) return cudaErrorInvalidConfiguration;
  }
  if (static_cast<uint64_t>(block.x) * block.y * block.z > kMaxThreadsPerBlock) return cudaErrorInvalidConfiguration;
  if (shared_bytes > kMaxSharedPerBlock) return cudaErrorInvalidValue;
  return cudaSuccess;
}

template <auto Kernel, typename... Args>
void launch_kernel(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t, Args&&... args) {
  const char* name = kernel_name<Kernel>();
  const cudaError_t status = check_config(grid, block, shared_bytes);
  if (status != cudaSuccess) {
    last_error = status;
    return;
  }
  log_launch(name, block, shared_bytes);
  auto call = [&]() { Kernel(args...); };
  using Call = decltype(call);
  Block b;
  b.kernel = name;
  b.block_dim = block;
  b.grid_dim = grid;
  b.fibers.resize(static_cast<size_t>(block.x) * block.y * block.z);
  b.body = [](void* p) { (*static_cast<Call*>(p))(); };
  b.body_arg = &call;
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), block_order_rng());
  Block* const outer = current;
  current = &b;
  for (const uint64_t i : order) {
    b.block_idx = uint3{static_cast<unsigned int>(i % grid.x), static_cast<unsigned int>((i / grid.x) % grid.y),
                        static_cast<unsigned int>(i / (static_cast<uint64_t>(grid.x) * grid.y))};
    run_block(b);
    if (b.error) break;
  }
  current = outer;
  if (b.error) std::rethrow_exception(b.error);
}

[[noreturn]] inline void device_assert(const char* msg, const char* file, unsigned int line, const char* func) {
  char buf[64];
  snprintf(buf, sizeof(buf), ":%u", line);
  fail(std::string("device-side assert triggered: Assertion `") + msg + "` failed at " + file + buf + " in " + func +
       "()");
}

}  // namespace cuda_emu

// ------------------------------------------------------------------ runtime API

static inline cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_emu::last_error;
  cuda_emu::last_error = cudaSuccess;
  return e;
}

static inline cudaError_t cudaPeekAtLastError() { return cuda_emu::last_error; }

static inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorAssert: return "device-side assert triggered";
  }
  return "unknown error";
}

static inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  if (bytes != 0 && p == nullptr) return cudaErrorInvalidValue;
  if (bytes != 0) std::memset(p, value, bytes);
  return cudaSuccess;
}

static inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, int = 0, cudaStream_t = nullptr) {
  if (bytes != 0) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

// ------------------------------------------------------------------ reduced precision

// Storage types with CUDA's round-to-nearest-even conversions.
struct __half {
  uint16_t bits = 0;
};
struct __nv_bfloat16 {
  uint16_t bits = 0;
};

static inline float __half2float(__half h) {
  const uint32_t sign = (h.bits & 0x8000u) << 16, exp = (h.bits >> 10) & 0x1f, man = h.bits & 0x3ffu;
  uint32_t f;
  if (exp == 0x1f) {
    f = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    f = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    f = sign;
  } else {  // subnormal: value = man * 2^-24
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    std::memcpy(&f, &v, 4);
    f |= sign;
  }
  float out;
  std::memcpy(&out, &f, 4);
  return out;
}

static inline __half __float2half(float x) {
  uint32_t f;
  std::memcpy(&f, &x, 4);
  const uint16_t sign = static_cast<uint16_t>((f >> 16) & 0x8000u);
  const uint32_t a = f & 0x7fffffffu;
  __half h;
  if (a > 0x7f800000u) {  // NaN
    h.bits = sign | 0x7e00u;
  } else if (a >= 0x477ff000u) {  // rounds to >= 65520: infinity
    h.bits = sign | 0x7c00u;
  } else if (a < 0x38800000u) {  // below 2^-14: subnormal, one rounding in float
    float v;
    std::memcpy(&v, &a, 4);
    const float scaled = v * 16777216.0f;  // units of 2^-24, exact
    h.bits = sign | static_cast<uint16_t>(std::nearbyint(scaled));
  } else {
    const uint32_t mant = a + 0xfffu + ((a >> 13) & 1u);  // round half to even at bit 13
    h.bits = sign | static_cast<uint16_t>((mant - 0x38000000u) >> 13);
  }
  return h;
}

static inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t f = static_cast<uint32_t>(h.bits) << 16;
  float out;
  std::memcpy(&out, &f, 4);
  return out;
}

static inline __nv_bfloat16 __float2bfloat16(float x) {
  uint32_t f;
  std::memcpy(&f, &x, 4);
  __nv_bfloat16 h;
  if ((f & 0x7fffffffu) > 0x7f800000u) {
    h.bits = static_cast<uint16_t>((f >> 16) | 0x40u);
  } else {
    h.bits = static_cast<uint16_t>((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
  }
  return h;
}

// ------------------------------------------------------------------ kernel language

// Only the .cu translation units (compiled with DETOPS_CUDA_EMULATED_DEVICE)
// get the kernel language; the host glue (*_cuda.cpp) sees only the runtime API.
#if defined(DETOPS_CUDA_EMULATED_DEVICE)

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static thread_local

#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900
#endif

#define threadIdx (::cuda_emu::self().tid)
#define blockIdx (::cuda_emu::current->block_idx)
#define blockDim (static_cast<const dim3&>(::cuda_emu::current->block_dim))
#define gridDim (static_cast<const dim3&>(::cuda_emu::current->grid_dim))
#define warpSize 32

// glibc declares __assert_fail noexcept; device asserts must throw instead.
#define __assert_fail(msg, file, line, func) ::cuda_emu::device_assert(msg, file, line, func)

static inline void __syncthreads() { cuda_emu::block_barrier(0, 0); }
static inline int __syncthreads_count(int pred) { return cuda_emu::block_barrier(pred, 2); }
static inline int __syncthreads_and(int pred) { return cuda_emu::block_barrier(pred, 1); }
static inline int __syncthreads_or(int pred) { return cuda_emu::block_barrier(pred, 0); }
static inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
  cuda_emu::warp_op(cuda_emu::WarpOp::kSync, mask, 0, 0, 32);
}

template <typename T>
static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return cuda_emu::from_bits<T>(cuda_emu::warp_op(cuda_emu::WarpOp::kShflIdx, mask, cuda_emu::to_bits(v), src, width));
}
template <typename T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return cuda_emu::from_bits<T>(
      cuda_emu::warp_op(cuda_emu::WarpOp::kShflUp, mask, cuda_emu::to_bits(v), static_cast<int>(delta), width));
}
template <typename T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return cuda_emu::from_bits<T>(
      cuda_emu::warp_op(cuda_emu::WarpOp::kShflDown, mask, cuda_emu::to_bits(v), static_cast<int>(delta), width));
}
template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return cuda_emu::from_bits<T>(cuda_emu::warp_op(cuda_emu::WarpOp::kShflXor, mask, cuda_emu::to_bits(v), lane_mask, width));
}
static inline unsigned __ballot_sync(unsigned mask, int pred) {
  return static_cast<unsigned>(cuda_emu::warp_op(cuda_emu::WarpOp::kBallot, mask, pred != 0, 0, 32));
}
static inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
static inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }

// Atomics: the types the kernels use. The fibers of a block never run at the
// same time, but atomic_ref keeps the operations honest if blocks ever do.
template <typename T>
static inline T atomicAdd(T* p, std::type_identity_t<T> v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
template <typename T>
static inline T atomicSub(T* p, std::type_identity_t<T> v) {
  return std::atomic_ref<T>(*p).fetch_sub(v);
}
template <typename T>
static inline T atomicOr(T* p, std::type_identity_t<T> v) {
  return std::atomic_ref<T>(*p).fetch_or(v);
}
template <typename T>
static inline T atomicAnd(T* p, std::type_identity_t<T> v) {
  return std::atomic_ref<T>(*p).fetch_and(v);
}
template <typename T>
static inline T atomicExch(T* p, std::type_identity_t<T> v) {
  return std::atomic_ref<T>(*p).exchange(v);
}
template <typename T>
static inline T atomicCAS(T* p, std::type_identity_t<T> expected, std::type_identity_t<T> desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
  return expected;  // the old value either way
}
template <typename T>
static inline T atomicMax(T* p, std::type_identity_t<T> v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <typename T>
static inline T atomicMin(T* p, std::type_identity_t<T> v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}

// Bit intrinsics.
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
static inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}

// Device math overloads that host C++ lacks in the global namespace.
template <typename A, typename B>
static inline std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <typename A, typename B>
static inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}
template <typename T>
static inline T __ldg(const T* p) {
  return *p;
}
static inline float __fdividef(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }

#endif  // DETOPS_CUDA_EMULATED_DEVICE
