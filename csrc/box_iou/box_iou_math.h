// Per-pair arithmetic of the IoU family, shared by the CPU and CUDA kernels.
//
// Two families of formulas, each copied operation for operation from
// torchvision so that results agree to rounding:
//  * "matrix" formulas: torchvision.ops.{box_iou, generalized_box_iou,
//    distance_box_iou, complete_box_iou} (clamped widths, no eps on the union);
//  * "loss" formulas: torchvision.ops.{generalized,distance,complete}_box_iou_loss
//    (strict-overlap mask, eps on the union, unclamped enclosing box).
// Backward functions follow PyTorch's autograd rules for each operation
// (ties of min/max split the gradient, clamp passes it at the bound, CIoU's
// alpha is a constant), so gradients match torchvision's autograd too.
// Boxes are (x1, y1, x2, y2).
#pragma once

#include <math.h>

#include "common/macros.h"

namespace detops {
namespace box_iou {

// kIoF is intersection over the first box's area (mmdetection's "iof"; the
// overlap COCO uses for crowd regions).
enum class Variant : int { kIoU = 0, kGIoU = 1, kDIoU = 2, kCIoU = 3, kIoF = 4 };

// Box formats the matrix and aligned forms read natively (IoU and IoF only):
// (x1, y1, x2, y2), (x, y, w, h) and (cx, cy, w, h). The area of the last two
// is w * h, as torchvision and pycocotools compute it, not (x2-x1) * (y2-y1).
enum class BoxFormat : int { kXYXY = 0, kXYWH = 1, kCXCYWH = 2 };

template <BoxFormat F>
struct FormatTag {
  static constexpr BoxFormat value = F;
};

template <Variant V>
struct VariantTag {
  static constexpr Variant value = V;
};

// CIoU's 4 / pi^2, rounded to T as PyTorch does for a Python scalar operand.
template <typename T>
DETOPS_HD T ciou_scale() { return T(0.40528473456935108578); }

template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

template <typename T>
struct BoxGrad {
  T x1 = T(0), y1 = T(0), x2 = T(0), y2 = T(0);
};

// Per-box quantities of the matrix formulas, computed once per box.
template <typename T>
struct BoxInfo {
  T x1, y1, x2, y2;
  T area;        // (x2 - x1) * (y2 - y1)
  T cx, cy;      // (x1 + x2) / 2, (y1 + y2) / 2
  T atan_ratio;  // atan(w / h), CIoU only
};

template <Variant V, typename T>
DETOPS_HD BoxInfo<T> make_info(T x1, T y1, T x2, T y2) {
  BoxInfo<T> info;
  info.x1 = x1;
  info.y1 = y1;
  info.x2 = x2;
  info.y2 = y2;
  info.area = (x2 - x1) * (y2 - y1);
  info.cx = (x1 + x2) / T(2);
  info.cy = (y1 + y2) / T(2);
  info.atan_ratio = V == Variant::kCIoU ? arctan((x2 - x1) / (y2 - y1)) : T(0);
  return info;
}

// The per-box quantities of a box given in format F, with torchvision's
// arithmetic for the corners (x + w; cx - w / 2, cx + w / 2).
template <Variant V, BoxFormat F, typename T>
DETOPS_HD BoxInfo<T> make_info_as(T p0, T p1, T p2, T p3) {
  if constexpr (F == BoxFormat::kXYXY) {
    return make_info<V>(p0, p1, p2, p3);
  } else {
    BoxInfo<T> info = F == BoxFormat::kXYWH
                          ? make_info<V>(p0, p1, p0 + p2, p1 + p3)
                          : make_info<V>(p0 - p2 / T(2), p1 - p3 / T(2), p0 + p2 / T(2), p1 + p3 / T(2));
    info.area = p2 * p3;
    return info;
  }
}

// ------------------------------------------------------------------ matrix

template <Variant V, typename T>
DETOPS_HD T matrix_forward(const BoxInfo<T>& a, const BoxInfo<T>& b, T eps) {
  const T w = max2(min2(a.x2, b.x2) - max2(a.x1, b.x1), T(0));
  const T h = max2(min2(a.y2, b.y2) - max2(a.y1, b.y1), T(0));
  const T inter = w * h;
  const T uni = a.area + b.area - inter;
  if constexpr (V == Variant::kIoF) {
    return inter / a.area;
  }
  const T iou = inter / uni;
  if constexpr (V == Variant::kIoU || V == Variant::kIoF) {
    return iou;
  } else {
    const T cw = max2(max2(a.x2, b.x2) - min2(a.x1, b.x1), T(0));
    const T ch = max2(max2(a.y2, b.y2) - min2(a.y1, b.y1), T(0));
    if constexpr (V == Variant::kGIoU) {
      const T area_c = cw * ch;
      return iou - (area_c - uni) / area_c;
    } else {
      const T diag = cw * cw + ch * ch + eps;
      const T dx = a.cx - b.cx;
      const T dy = a.cy - b.cy;
      const T diou = iou - (dx * dx + dy * dy) / diag;
      if constexpr (V == Variant::kDIoU) {
        return diou;
      } else {
        const T dt = a.atan_ratio - b.atan_ratio;
        const T v = ciou_scale<T>() * (dt * dt);
        const T alpha = v / (T(1) - iou + v + eps);
        return diou - alpha * v;
      }
    }
  }
}

// Accumulates d(value)/d(box) * g into ga and gb.
template <Variant V, typename T>
DETOPS_HD void matrix_backward(const Box<T>& a, const Box<T>& b, T eps, T g,
                               BoxGrad<T>& ga, BoxGrad<T>& gb) {
  const T wa = a.x2 - a.x1, ha = a.y2 - a.y1;
  const T wb = b.x2 - b.x1, hb = b.y2 - b.y1;
  const T area_a = wa * ha, area_b = wb * hb;
  const T ltx = max2(a.x1, b.x1), lty = max2(a.y1, b.y1);
  const T rbx = min2(a.x2, b.x2), rby = min2(a.y2, b.y2);
  const T dwi = rbx - ltx, dhi = rby - lty;
  const T w = max2(dwi, T(0)), h = max2(dhi, T(0));
  const T inter = w * h;
  const T uni = area_a + area_b - inter;
  const T iou = inter / uni;

  const T g_iou = g;
  T g_uni = T(0);
  T g_wa = T(0), g_ha = T(0), g_wb = T(0), g_hb = T(0);

  if constexpr (V == Variant::kIoF) {
    // value = inter / area_a
    const T g_inter_iof = g / area_a;
    g_wa -= g * inter / (area_a * area_a) * ha;
    g_ha -= g * inter / (area_a * area_a) * wa;
    const T g_dwi = dwi >= T(0) ? g_inter_iof * h : T(0);
    const T g_dhi = dhi >= T(0) ? g_inter_iof * w : T(0);
    min2_backward(a.x2, b.x2, g_dwi, ga.x2, gb.x2);
    max2_backward(a.x1, b.x1, -g_dwi, ga.x1, gb.x1);
    min2_backward(a.y2, b.y2, g_dhi, ga.y2, gb.y2);
    max2_backward(a.y1, b.y1, -g_dhi, ga.y1, gb.y1);
  } else if constexpr (V != Variant::kIoU) {
    const T cx1 = min2(a.x1, b.x1), cy1 = min2(a.y1, b.y1);
    const T cx2 = max2(a.x2, b.x2), cy2 = max2(a.y2, b.y2);
    const T dwc = cx2 - cx1, dhc = cy2 - cy1;
    const T cw = max2(dwc, T(0)), ch = max2(dhc, T(0));
    T g_cw, g_ch;
    if constexpr (V == Variant::kGIoU) {
      // value = iou - (area_c - uni) / area_c
      const T area_c = cw * ch;
      const T g_num = -g / area_c;
      const T g_area_c = g_num + g * (area_c - uni) / (area_c * area_c);
      g_uni -= g_num;
      g_cw = g_area_c * ch;
      g_ch = g_area_c * cw;
    } else {
      // value = iou - dist / diag  (- alpha * v for CIoU)
      const T diag = cw * cw + ch * ch + eps;
      const T dx = (a.x1 + a.x2) / T(2) - (b.x1 + b.x2) / T(2);
      const T dy = (a.y1 + a.y2) / T(2) - (b.y1 + b.y2) / T(2);
      const T dist = dx * dx + dy * dy;
      const T g_dist = -g / diag;
      const T g_diag = g * dist / (diag * diag);
      g_cw = T(2) * cw * g_diag;
      g_ch = T(2) * ch * g_diag;
      const T g_dx = T(2) * dx * g_dist / T(2);
      const T g_dy = T(2) * dy * g_dist / T(2);
      ga.x1 += g_dx; ga.x2 += g_dx; gb.x1 -= g_dx; gb.x2 -= g_dx;
      ga.y1 += g_dy; ga.y2 += g_dy; gb.y1 -= g_dy; gb.y2 -= g_dy;
      if constexpr (V == Variant::kCIoU) {
        const T ra = wa / ha, rb = wb / hb;
        const T dt = arctan(ra) - arctan(rb);
        const T v = ciou_scale<T>() * (dt * dt);
        const T alpha = v / (T(1) - iou + v + eps);
        const T g_v = -g * alpha;
        const T g_ta = ciou_scale<T>() * g_v * T(2) * dt;
        const T g_ra = g_ta / (ra * ra + T(1));
        const T g_rb = -g_ta / (rb * rb + T(1));
        g_wa += g_ra / ha;
        g_ha -= g_ra * wa / (ha * ha);
        g_wb += g_rb / hb;
        g_hb -= g_rb * wb / (hb * hb);
      }
    }
    const T g_dwc = dwc >= T(0) ? g_cw : T(0);
    const T g_dhc = dhc >= T(0) ? g_ch : T(0);
    max2_backward(a.x2, b.x2, g_dwc, ga.x2, gb.x2);
    min2_backward(a.x1, b.x1, -g_dwc, ga.x1, gb.x1);
    max2_backward(a.y2, b.y2, g_dhc, ga.y2, gb.y2);
    min2_backward(a.y1, b.y1, -g_dhc, ga.y1, gb.y1);
  }

  if constexpr (V != Variant::kIoF) {
    // iou = inter / uni, uni = area_a + area_b - inter
    g_uni -= g_iou * inter / (uni * uni);
    const T g_inter = g_iou / uni - g_uni;
    g_wa += g_uni * ha;
    g_ha += g_uni * wa;
    g_wb += g_uni * hb;
    g_hb += g_uni * wb;
    const T g_dwi = dwi >= T(0) ? g_inter * h : T(0);
    const T g_dhi = dhi >= T(0) ? g_inter * w : T(0);
    min2_backward(a.x2, b.x2, g_dwi, ga.x2, gb.x2);
    max2_backward(a.x1, b.x1, -g_dwi, ga.x1, gb.x1);
    min2_backward(a.y2, b.y2, g_dhi, ga.y2, gb.y2);
    max2_backward(a.y1, b.y1, -g_dhi, ga.y1, gb.y1);
  }

  ga.x2 += g_wa; ga.x1 -= g_wa; ga.y2 += g_ha; ga.y1 -= g_ha;
  gb.x2 += g_wb; gb.x1 -= g_wb; gb.y2 += g_hb; gb.y1 -= g_hb;
}

// ------------------------------------------------------------------ loss

// eps enters CIoU twice in torchvision: its DIoU part always uses 1e-7, the
// alpha term uses the caller's eps.
template <typename T>
DETOPS_HD T loss_default_eps() { return T(1e-7); }

// atan(w / h) of a box: CIoU's aspect term.
template <typename T>
DETOPS_HD T aspect_ratio(const Box<T>& b) {
  return (b.x2 - b.x1) / (b.y2 - b.y1);
}

// The loss of one pair; CIoU reads atan_p = atan(aspect_ratio(p)) and atan_t
// likewise, which the caller computes (the CPU kernels with torch's own atan).
template <Variant V, typename T>
DETOPS_HD T loss_forward(const Box<T>& p, const Box<T>& t, T eps, T atan_p, T atan_t) {
  const T xk1 = max2(p.x1, t.x1), yk1 = max2(p.y1, t.y1);
  const T xk2 = min2(p.x2, t.x2), yk2 = min2(p.y2, t.y2);
  const T inter = (yk2 > yk1 && xk2 > xk1) ? (xk2 - xk1) * (yk2 - yk1) : T(0);
  const T uni = (p.x2 - p.x1) * (p.y2 - p.y1) + (t.x2 - t.x1) * (t.y2 - t.y1) - inter;
  const T iou_eps = V == Variant::kCIoU ? loss_default_eps<T>() : eps;
  const T iou = inter / (uni + iou_eps);
  const T dxc = max2(p.x2, t.x2) - min2(p.x1, t.x1);
  const T dyc = max2(p.y2, t.y2) - min2(p.y1, t.y1);
  if constexpr (V == Variant::kGIoU) {
    const T area_c = dxc * dyc;
    return T(1) - (iou - ((area_c - uni) / (area_c + eps)));
  } else {
    const T diag = dxc * dxc + dyc * dyc + iou_eps;
    const T dx = (p.x2 + p.x1) / T(2) - (t.x1 + t.x2) / T(2);
    const T dy = (p.y2 + p.y1) / T(2) - (t.y1 + t.y2) / T(2);
    const T diou_loss = T(1) - iou + (dx * dx + dy * dy) / diag;
    if constexpr (V == Variant::kDIoU) {
      return diou_loss;
    } else {
      const T dt = atan_t - atan_p;
      const T v = ciou_scale<T>() * (dt * dt);
      const T alpha = v / (T(1) - iou + v + eps);
      return diou_loss + alpha * v;
    }
  }
}

template <Variant V, typename T>
DETOPS_HD T loss_forward(const Box<T>& p, const Box<T>& t, T eps) {
  const bool ciou = V == Variant::kCIoU;
  return loss_forward<V>(p, t, eps, ciou ? arctan(aspect_ratio(p)) : T(0), ciou ? arctan(aspect_ratio(t)) : T(0));
}

template <Variant V, typename T>
DETOPS_HD void loss_backward(const Box<T>& p, const Box<T>& t, T eps, T g,
                             BoxGrad<T>& gp, BoxGrad<T>& gt) {
  const T xk1 = max2(p.x1, t.x1), yk1 = max2(p.y1, t.y1);
  const T xk2 = min2(p.x2, t.x2), yk2 = min2(p.y2, t.y2);
  const bool overlap = yk2 > yk1 && xk2 > xk1;
  const T dxk = xk2 - xk1, dyk = yk2 - yk1;
  const T inter = overlap ? dxk * dyk : T(0);
  const T wp = p.x2 - p.x1, hp = p.y2 - p.y1;
  const T wt = t.x2 - t.x1, ht = t.y2 - t.y1;
  const T uni = wp * hp + wt * ht - inter;
  const T iou_eps = V == Variant::kCIoU ? loss_default_eps<T>() : eps;
  const T den_iou = uni + iou_eps;
  const T iou = inter / den_iou;
  const T dxc = max2(p.x2, t.x2) - min2(p.x1, t.x1);
  const T dyc = max2(p.y2, t.y2) - min2(p.y1, t.y1);

  T g_iou, g_uni = T(0), g_dxc, g_dyc;
  T g_wp = T(0), g_hp = T(0), g_wt = T(0), g_ht = T(0);
  if constexpr (V == Variant::kGIoU) {
    // loss = 1 - (iou - (area_c - uni) / (area_c + eps))
    const T area_c = dxc * dyc;
    const T den = area_c + eps;
    g_iou = -g;
    const T g_num = g / den;
    const T g_area_c = g_num - g * (area_c - uni) / (den * den);
    g_uni -= g_num;
    g_dxc = g_area_c * dyc;
    g_dyc = g_area_c * dxc;
  } else {
    // loss = 1 - iou + dist / diag  (+ alpha * v for CIoU)
    const T diag = dxc * dxc + dyc * dyc + iou_eps;
    const T dx = (p.x2 + p.x1) / T(2) - (t.x1 + t.x2) / T(2);
    const T dy = (p.y2 + p.y1) / T(2) - (t.y1 + t.y2) / T(2);
    const T dist = dx * dx + dy * dy;
    g_iou = -g;
    const T g_dist = g / diag;
    const T g_diag = -g * dist / (diag * diag);
    g_dxc = T(2) * dxc * g_diag;
    g_dyc = T(2) * dyc * g_diag;
    const T g_dx = T(2) * dx * g_dist / T(2);
    const T g_dy = T(2) * dy * g_dist / T(2);
    gp.x1 += g_dx; gp.x2 += g_dx; gt.x1 -= g_dx; gt.x2 -= g_dx;
    gp.y1 += g_dy; gp.y2 += g_dy; gt.y1 -= g_dy; gt.y2 -= g_dy;
    if constexpr (V == Variant::kCIoU) {
      const T rt = wt / ht, rp = wp / hp;
      const T dt = arctan(rt) - arctan(rp);
      const T v = ciou_scale<T>() * (dt * dt);
      const T alpha = v / (T(1) - iou + v + eps);
      const T g_dt = ciou_scale<T>() * (g * alpha) * T(2) * dt;
      const T g_rt = g_dt / (rt * rt + T(1));
      const T g_rp = -g_dt / (rp * rp + T(1));
      g_wt += g_rt / ht;
      g_ht -= g_rt * wt / (ht * ht);
      g_wp += g_rp / hp;
      g_hp -= g_rp * wp / (hp * hp);
    }
  }
  max2_backward(p.x2, t.x2, g_dxc, gp.x2, gt.x2);
  min2_backward(p.x1, t.x1, -g_dxc, gp.x1, gt.x1);
  max2_backward(p.y2, t.y2, g_dyc, gp.y2, gt.y2);
  min2_backward(p.y1, t.y1, -g_dyc, gp.y1, gt.y1);

  // iou = inter / (uni + eps), uni = area_p + area_t - inter
  g_uni -= g_iou * inter / (den_iou * den_iou);
  const T g_inter = g_iou / den_iou - g_uni;
  g_wp += g_uni * hp;
  g_hp += g_uni * wp;
  g_wt += g_uni * ht;
  g_ht += g_uni * wt;
  const T g_dxk = overlap ? g_inter * dyk : T(0);
  const T g_dyk = overlap ? g_inter * dxk : T(0);
  min2_backward(p.x2, t.x2, g_dxk, gp.x2, gt.x2);
  max2_backward(p.x1, t.x1, -g_dxk, gp.x1, gt.x1);
  min2_backward(p.y2, t.y2, g_dyk, gp.y2, gt.y2);
  max2_backward(p.y1, t.y1, -g_dyk, gp.y1, gt.y1);
  gp.x2 += g_wp; gp.x1 -= g_wp; gp.y2 += g_hp; gp.y1 -= g_hp;
  gt.x2 += g_wt; gt.x1 -= g_wt; gt.y2 += g_ht; gt.y1 -= g_ht;
}

}  // namespace box_iou
}  // namespace detops

namespace detops {
namespace box_iou {

// Calls f(std::integral_constant<Variant, V>{}) for the runtime variant, so
// kernels are compiled once per variant with the branches folded away.
template <typename F>
inline void dispatch_variant(Variant v, F&& f) {
  switch (v) {
    case Variant::kIoU: f(VariantTag<Variant::kIoU>{}); break;
    case Variant::kGIoU: f(VariantTag<Variant::kGIoU>{}); break;
    case Variant::kDIoU: f(VariantTag<Variant::kDIoU>{}); break;
    case Variant::kCIoU: f(VariantTag<Variant::kCIoU>{}); break;
    case Variant::kIoF: f(VariantTag<Variant::kIoF>{}); break;
  }
}

// Calls f(FormatTag<F>{}) for the runtime format; variants other than IoU and
// IoF are compiled for (x1, y1, x2, y2) only (callers check the format).
template <Variant V, typename F>
inline void dispatch_format(BoxFormat fmt, F&& f) {
  if constexpr (V == Variant::kIoU || V == Variant::kIoF) {
    switch (fmt) {
      case BoxFormat::kXYXY: f(FormatTag<BoxFormat::kXYXY>{}); break;
      case BoxFormat::kXYWH: f(FormatTag<BoxFormat::kXYWH>{}); break;
      case BoxFormat::kCXCYWH: f(FormatTag<BoxFormat::kCXCYWH>{}); break;
    }
  } else {
    f(FormatTag<BoxFormat::kXYXY>{});
  }
}

}  // namespace box_iou
}  // namespace detops
