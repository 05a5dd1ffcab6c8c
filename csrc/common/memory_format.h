// The one rule every op uses to tell a channels-last 4-D tensor from an NCHW
// one (the Python fakes mirror it in detops.ops._common.is_channels_last).
#pragma once

#include <ATen/core/Tensor.h>

namespace detops {

// True when a [N, C, H, W] tensor is stored channels-last (stride 1 along C)
// and kernels should walk channels innermost.
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.size(1) > 1 && t.stride(1) == 1 && !t.is_contiguous();
}

inline at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace detops
