// detops_emu::_emulator_selftest(str name, Tensor out) -> int: runs one of
// emulator_selftest.cu's launches; returns the cudaGetLastError() code.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <string>

int64_t detops_emu_selftest(const char* name, int64_t* out, int64_t* counter);

namespace {

int64_t selftest(c10::string_view name, const at::Tensor& out) {
  TORCH_CHECK(out.scalar_type() == at::kLong && out.is_contiguous(), "out must be contiguous int64");
  at::Tensor counter = at::zeros({1}, out.options());
  return detops_emu_selftest(std::string(name).c_str(), out.mutable_data_ptr<int64_t>(),
                             counter.mutable_data_ptr<int64_t>());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detops, m) { m.def("_emulator_selftest(str name, Tensor(a!) out) -> int", &selftest); }
