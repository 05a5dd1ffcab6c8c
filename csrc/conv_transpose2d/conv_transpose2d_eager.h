// detops.conv_transpose2d's eager CPU entry (conv_transpose2d_eager.cpp): the
// Python function's argument checks and size routing in one C++ call, bound as
// detops._C.conv_transpose2d_eager.
#pragma once

#include <ATen/core/Tensor.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <optional>

namespace detops {
namespace conv_transpose2d {

// Gather costs ceil(k/s)^2 * (Cin/groups) multiply-adds per output and reuses
// nothing across channels; past this many channel pairs per group torch's
// matrix-product form wins.
constexpr int64_t kMaxGatherChannelPairs = 16;
// torch's oneDNN deconvolution serves float32 CPU dense layers below these
// sizes faster than detops' kernels (measured: detops.ops.conv_transpose2d's
// _torch_is_faster docstring).
constexpr int64_t kDenseCpuMinPixels = 1024;  // N * H * W: NCHW layers that record a gradient, channels-last ReLU
constexpr int64_t kDenseCpuMinMacs = 1 << 24;  // N * H * W * Cin * Cout * kH * kW: NCHW forwards without one
constexpr int64_t kChannelsLastBackwardMinPixels = 4096;  // N * H * W: channels-last layers that record one
// bfloat16/float16 where oneDNN computes them natively: torch's below these
// input map sizes H * W (one image's), ours from there.
constexpr int64_t kOnednnBf16MaxMapPixels = 7168;
constexpr int64_t kOnednnFp16MaxMapPixels = 2048;

// Whether torch's oneDNN convolution computes this reduced-precision dtype
// natively on this CPU (bfloat16: AVX512-BF16 or AMX; float16: AVX512-FP16 or
// AMX-FP16), as torch.ops.mkldnn._is_mkldnn_bf16/fp16_supported report.
// DETOPS_CT_ONEDNN_NATIVE = "1" or "0" overrides the CPU's answer.
bool onednn_native(at::ScalarType dtype);

// Whether torch's own conv_transpose2d serves this CPU dense layer (kernel ==
// stride, one group) faster than detops' kernel: float32 by the size
// crossovers above, bfloat16/float16 where oneDNN computes them natively.
bool torch_is_faster(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     std::array<int64_t, 2> stride, int64_t groups, int64_t activation);

// detops.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation,
// activation) for plain CPU tensors and valid arguments; None for anything else (the
// Python function then runs and raises detops' error for a bad argument).
pybind11::object eager_forward(pybind11::handle input, pybind11::handle weight, pybind11::handle bias,
                               pybind11::handle stride, pybind11::handle padding, pybind11::handle output_padding,
                               pybind11::handle groups, pybind11::handle dilation, pybind11::handle activation);

}  // namespace conv_transpose2d
}  // namespace detops
