// The extension module detops._C: the operator library's root and the build
// report. Each op family adds its schemas with TORCH_LIBRARY_FRAGMENT in
// csrc/<op>/<op>.cpp; loading this module runs those registrations.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "conv_transpose2d/conv_transpose2d_eager.h"

TORCH_LIBRARY(detops, m) {}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef DETOPS_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["cuda_archs"] = std::string(DETOPS_CUDA_ARCHS);
  info["torch_version"] = std::string(DETOPS_TORCH_VERSION);
  info["compiler"] = std::string(
#if defined(__clang__)
      "clang " __clang_version__
#elif defined(__GNUC__)
      "gcc " __VERSION__
#else
      "unknown"
#endif
  );
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "detops compiled kernels (ops are reached through torch.ops.detops)";
  m.def("build_info", &build_info, "What this build of detops._C compiled");
  m.def("conv_transpose2d_eager", &detops::conv_transpose2d::eager_forward,
        "detops.conv_transpose2d's CPU fast path: the output, or None where the Python function must run");
}
