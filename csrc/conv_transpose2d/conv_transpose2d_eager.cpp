// detops.conv_transpose2d's eager entry on CPU: its argument checks and its
// size routing (ours or torch's deconvolution) in one C++ call.
//
// Why C++: the Python wrapper's checks and routing read a dozen tensor
// attributes, at 0.2-0.6 us each from Python, and cost 20-30 us next to a
// 150 us oneDNN call (U-Net 256->128 at 4x4 and 8x8 read 0.81-0.93x against
// torch's own call). Here they cost what torch's own binding costs.
//
// The entry only takes the common case: plain CPU tensors (torch.Tensor or
// nn.Parameter, no TorchFunctionMode active), float16/bfloat16/float32/float64,
// valid shapes and ints. For anything else, including every invalid
// argument, it returns None and the Python function runs, which raises
// detops' documented error. The Python function's _torch_is_faster is the
// same rule for TorchScript and torch.compile, which do not reach this entry;
// tests run both entries on both sides of each crossover.
#include "conv_transpose2d/conv_transpose2d_eager.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/conv_transpose2d.h>
#include <ATen/ops/relu.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "common/checks.h"
#include "common/memory_format.h"

namespace detops {
namespace conv_transpose2d {

namespace {

using Pair = std::array<int64_t, 2>;

// A torch.Tensor or nn.Parameter (not a subclass, whose __torch_function__ must
// see the call) on the CPU, in a dtype the kernels read.
std::optional<at::Tensor> plain_cpu_tensor(PyObject* obj) {
  if (!THPVariable_CheckExact(obj)) return std::nullopt;
  const at::Tensor& t = THPVariable_Unpack(obj);
  if (!t.defined() || !t.is_cpu() || t.layout() != at::kStrided || !is_kernel_float(t.scalar_type())) {
    return std::nullopt;
  }
  return t;
}

// Stride, padding and the like within +-2**24, and map sizes below 2**31, keep
// the output size arithmetic below 2**58. Larger values (and bools) go to the
// Python function, whose integers cannot overflow.
constexpr int64_t kMaxArgument = int64_t{1} << 24;
constexpr int64_t kMaxMapSize = INT32_MAX;

std::optional<int64_t> exact_int(PyObject* obj) {
  if (!PyLong_CheckExact(obj)) return std::nullopt;
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
  if (overflow != 0 || v < -kMaxArgument || v > kMaxArgument) return std::nullopt;
  return static_cast<int64_t>(v);
}

// An int or a list/tuple of one or two ints, each >= min_value (the Python _pair).
std::optional<Pair> int_pair(PyObject* obj, int64_t min_value) {
  Pair pair{};
  if (auto v = exact_int(obj)) {
    pair = {*v, *v};
  } else if (PyList_CheckExact(obj) || PyTuple_CheckExact(obj)) {
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
    if (n != 1 && n != 2) return std::nullopt;
    PyObject** items = PySequence_Fast_ITEMS(obj);
    auto first = exact_int(items[0]);
    auto second = exact_int(items[n - 1]);
    if (!first || !second) return std::nullopt;
    pair = {*first, *second};
  } else {
    return std::nullopt;
  }
  if (pair[0] < min_value || pair[1] < min_value) return std::nullopt;
  return pair;
}

// None, "none" -> 0; "relu" -> 1.
std::optional<int64_t> activation_code(PyObject* obj) {
  if (obj == Py_None) return 0;
  if (!PyUnicode_CheckExact(obj)) return std::nullopt;
  Py_ssize_t size = 0;
  const char* text = PyUnicode_AsUTF8AndSize(obj, &size);
  if (text == nullptr) {
    PyErr_Clear();
    return std::nullopt;
  }
  const std::string_view name(text, static_cast<size_t>(size));
  if (name == "none") return 0;
  if (name == "relu") return 1;
  return std::nullopt;
}

bool records_grad(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  return at::GradMode::is_enabled() &&
         (input.requires_grad() || weight.requires_grad() || (bias.has_value() && bias->requires_grad()));
}

at::Tensor run_detops_kernel(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             Pair stride, Pair offset, Pair output_size, int64_t groups, int64_t activation) {
  // Through the dispatcher, so that autograd, the profiler and any mode see the op.
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("detops::conv_transpose2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef, c10::SymIntArrayRef,
                            at::IntArrayRef, int64_t, int64_t)>();
  const std::array<c10::SymInt, 2> size{c10::SymInt(output_size[0]), c10::SymInt(output_size[1])};
  const Pair no_offset{0, 0};
  return op.call(input, weight, bias, std::nullopt, stride, offset, size, no_offset, groups, activation);
}

}  // namespace

bool onednn_native(at::ScalarType dtype) {
  if (const char* forced = std::getenv("DETOPS_CT_ONEDNN_NATIVE")) return std::string_view(forced) == "1";
  static const bool bf16 = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("mkldnn::_is_mkldnn_bf16_supported", "")
                               .typed<bool()>()
                               .call();
  static const bool fp16 = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("mkldnn::_is_mkldnn_fp16_supported", "")
                               .typed<bool()>()
                               .call();
  return dtype == at::kBFloat16 ? bf16 : dtype == at::kHalf && fp16;
}

bool torch_is_faster(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     Pair stride, int64_t groups, int64_t activation) {
  if (!input.is_cpu() || groups != 1) return false;
  if (weight.size(2) != stride[0] || weight.size(3) != stride[1]) return false;
  const at::ScalarType dtype = input.scalar_type();
  if (dtype == at::kBFloat16 || dtype == at::kHalf) {
    const int64_t map_pixels = input.size(2) * input.size(3);
    return onednn_native(dtype) &&
           map_pixels < (dtype == at::kBFloat16 ? kOnednnBf16MaxMapPixels : kOnednnFp16MaxMapPixels);
  }
  if (dtype != at::kFloat) return false;
  const int64_t pixels = input.size(0) * input.size(2) * input.size(3);
  const bool grad = records_grad(input, weight, bias);
  if (is_channels_last(input)) {
    if (grad) return pixels < kChannelsLastBackwardMinPixels;
    return activation == 0 || pixels < kDenseCpuMinPixels;
  }
  if (grad) return pixels < kDenseCpuMinPixels;
  // In double: an expanded (stride 0) input can make the product overflow 64 bits.
  const double macs = static_cast<double>(pixels) * static_cast<double>(input.size(1)) *
                      static_cast<double>(weight.size(1) * weight.size(2) * weight.size(3));
  return macs < static_cast<double>(kDenseCpuMinMacs);
}

pybind11::object eager_forward(pybind11::handle input_obj, pybind11::handle weight_obj, pybind11::handle bias_obj,
                               pybind11::handle stride_obj, pybind11::handle padding_obj,
                               pybind11::handle output_padding_obj, pybind11::handle groups_obj,
                               pybind11::handle dilation_obj, pybind11::handle activation_obj) {
  const pybind11::object decline = pybind11::none();
  if (at::impl::torch_function_mode_enabled()) return decline;  // the mode must see the call
  auto input = plain_cpu_tensor(input_obj.ptr());
  auto weight = plain_cpu_tensor(weight_obj.ptr());
  if (!input || !weight) return decline;
  std::optional<at::Tensor> bias;
  if (!bias_obj.is_none()) {
    bias = plain_cpu_tensor(bias_obj.ptr());
    if (!bias) return decline;
  }
  const auto stride = int_pair(stride_obj.ptr(), 1);
  const auto padding = int_pair(padding_obj.ptr(), 0);
  const auto output_padding = int_pair(output_padding_obj.ptr(), 0);
  const auto dilation = int_pair(dilation_obj.ptr(), 1);
  const auto groups = exact_int(groups_obj.ptr());
  const auto activation = activation_code(activation_obj.ptr());
  if (!stride || !padding || !output_padding || !dilation || !groups || !activation || *groups < 1) return decline;

  const bool unbatched = input->dim() == 3;
  at::Tensor x = unbatched ? input->unsqueeze(0) : *input;
  const at::Tensor& w = *weight;
  if (x.dim() != 4 || w.dim() != 4 || x.numel() == 0 || w.numel() == 0) return decline;
  for (int i = 2; i < 4; ++i) {
    if (x.size(i) > kMaxMapSize || w.size(i) > kMaxMapSize) return decline;
  }
  const at::ScalarType dtype = x.scalar_type();
  if (w.scalar_type() != dtype || (bias && bias->scalar_type() != dtype)) return decline;
  const int64_t cin = x.size(1);
  if (w.size(0) != cin || cin % *groups != 0) return decline;
  if (bias && (bias->dim() != 1 || bias->size(0) != w.size(1) * *groups)) return decline;
  Pair out_size{};
  for (int i = 0; i < 2; ++i) {
    if ((*output_padding)[i] >= (*stride)[i] && (*output_padding)[i] >= (*dilation)[i]) return decline;
    out_size[i] = (x.size(2 + i) - 1) * (*stride)[i] - 2 * (*padding)[i] + (*dilation)[i] * (w.size(2 + i) - 1) +
                  (*output_padding)[i] + 1;
    if (out_size[i] < 1) return decline;
  }

  // The Python function's _uses_kernels, then the size crossovers.
  const bool dense = *groups == 1 && w.size(2) == (*stride)[0] && w.size(3) == (*stride)[1];
  const bool uses_kernels = dense || (cin / *groups) * w.size(1) <= kMaxGatherChannelPairs;
  const bool ours = (*dilation)[0] == 1 && (*dilation)[1] == 1 && uses_kernels &&
                    !torch_is_faster(x, w, bias, *stride, *groups, *activation);
  at::Tensor out;
  HANDLE_TH_ERRORS  // torch's error types and Python warnings, as torch's own bindings give them
  {
    pybind11::gil_scoped_release no_gil;
    if (ours) {
      out = run_detops_kernel(x, w, bias, *stride, *padding, out_size, *groups, *activation);
    } else {
      out = at::conv_transpose2d(x, w, bias, *stride, *padding, *output_padding, *groups, *dilation);
      if (*activation == 1) out = at::relu(out);
    }
  }
  END_HANDLE_TH_ERRORS_PYBIND
  if (unbatched) out = out.squeeze(0);
  return pybind11::reinterpret_steal<pybind11::object>(THPVariable_Wrap(std::move(out)));
}

}  // namespace conv_transpose2d
}  // namespace detops
