// Per-pair arithmetic of the NMS family, shared by the CPU and CUDA kernels.
// Boxes are (x1, y1, x2, y2).
//
// Exact NMS must take the same decisions as torchvision, so its overlap test
// is copied operation for operation from torchvision's kernels:
//  * CPU: areas and intersection in the box type, `ovr > iou_threshold` with
//    the threshold as a double (std::max/std::min argument order kept, which
//    matters only for NaN);
//  * CUDA: `inter / (area_a + area_b - inter) > threshold` with the
//    threshold rounded to float.
// In both, `a` is the higher-scored (kept) box and `b` the candidate.
//
// A pair can suppress only when both boxes are "valid" (finite coordinates,
// x2 > x1, y2 > y1) and their interiors overlap on both axes: otherwise the
// intersection is 0 or the union is NaN/inf, so the ratio is 0, -0 or NaN,
// never > a threshold in [0, 1]. The CPU kernel uses this to skip pairs.
//
// Soft-NMS and Matrix NMS use the plain IoU in the compute type, with a
// non-positive union (degenerate boxes) or a NaN result read as IoU 0.
#pragma once

#include <math.h>

#include "common/macros.h"

namespace detops {
namespace nms {

// std::max / std::min exactly: with a NaN they return their first argument.
template <typename T>
DETOPS_HD T std_max(T a, T b) { return (a < b) ? b : a; }
template <typename T>
DETOPS_HD T std_min(T a, T b) { return (b < a) ? b : a; }

template <typename T>
DETOPS_HD T box_area(T x1, T y1, T x2, T y2) { return (x2 - x1) * (y2 - y1); }

// torchvision's CPU test: does kept box a suppress candidate b?
template <typename T>
DETOPS_HD bool suppresses_cpu(T ax1, T ay1, T ax2, T ay2, T aarea, T bx1, T by1, T bx2, T by2, T barea,
                              double iou_threshold) {
  const T xx1 = std_max(ax1, bx1);
  const T yy1 = std_max(ay1, by1);
  const T xx2 = std_min(ax2, bx2);
  const T yy2 = std_min(ay2, by2);
  const T w = std_max(T(0), xx2 - xx1);
  const T h = std_max(T(0), yy2 - yy1);
  const T inter = w * h;
  const T ovr = inter / (aarea + barea - inter);
  return static_cast<double>(ovr) > iou_threshold;
}

// torchvision's CUDA test (devIoU) in the compute type T; threshold is float.
template <typename T>
DETOPS_HD bool suppresses_cuda(T ax1, T ay1, T ax2, T ay2, T bx1, T by1, T bx2, T by2, float threshold) {
  const T left = max2(ax1, bx1), right = min2(ax2, bx2);
  const T top = max2(ay1, by1), bottom = min2(ay2, by2);
  const T width = max2(right - left, T(0)), height = max2(bottom - top, T(0));
  const T inter = width * height;
  const T area_a = (ax2 - ax1) * (ay2 - ay1);
  const T area_b = (bx2 - bx1) * (by2 - by1);
  return (inter / (area_a + area_b - inter)) > T(threshold);
}

// Whether a box can take part in suppression at all (see the header comment).
template <typename T>
DETOPS_HD bool is_valid_box(T x1, T y1, T x2, T y2) {
  return isfinite(x1) && isfinite(y1) && isfinite(x2) && isfinite(y2) && x2 > x1 && y2 > y1;
}

// Plain IoU for Soft-NMS and Matrix NMS: 0 for a non-positive union or NaN.
template <typename T>
DETOPS_HD T iou_or_zero(T ax1, T ay1, T ax2, T ay2, T bx1, T by1, T bx2, T by2) {
  const T w = max2(min2(ax2, bx2) - max2(ax1, bx1), T(0));
  const T h = max2(min2(ay2, by2) - max2(ay1, by1), T(0));
  const T inter = w * h;
  const T uni = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter;
  const T iou = inter / uni;
  return (uni > T(0) && iou == iou) ? iou : T(0);
}

enum class DecayMethod : int { kLinear = 0, kGaussian = 1 };

// Soft-NMS (Bodla et al. 2017): the factor a candidate's score is multiplied
// by when a box it overlaps by `iou` is selected. Linear: 1 - iou above the
// threshold (as mmcv); Gaussian: exp(-iou^2 / sigma) for every pair.
template <typename T>
DETOPS_HD T soft_nms_weight(DecayMethod method, T iou, T iou_threshold, T sigma) {
  if (method == DecayMethod::kLinear) return iou > iou_threshold ? T(1) - iou : T(1);
  return exp(-(iou * iou) / sigma);
}

template <typename T>
DETOPS_HD T matrix_nms_gaussian_exponent(T iou, T comp, T sigma) {
  return -sigma * (iou * iou - comp * comp);
}

// Matrix NMS (SOLOv2): the decay box j gets from a higher-scored box i, given
// their IoU and i's own largest IoU with a higher-scored box (compensation).
// Linear: (1 - iou) / (1 - comp), +inf (no effect) when 1 - comp <= 0;
// Gaussian: exp(-sigma * (iou^2 - comp^2)); as exp is monotone the kernels
// take exp of the smallest exponent instead of the smallest exp.
template <typename T>
DETOPS_HD T matrix_nms_decay(DecayMethod method, T iou, T comp, T sigma) {
  if (method == DecayMethod::kLinear) {
    const T denom = T(1) - comp;
    return denom > T(0) ? (T(1) - iou) / denom : T(INFINITY);
  }
  return exp(matrix_nms_gaussian_exponent(iou, comp, sigma));
}

}  // namespace nms
}  // namespace detops
