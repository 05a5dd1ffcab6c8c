// CPU kernels of the NMS family.
//
// Exact greedy NMS (nms, batched_nms, multiclass_nms) asks, for each box in
// decreasing score order, whether a box already kept suppresses it; that is
// the same decision torchvision takes (it suppresses with each kept box in
// turn), made with the same arithmetic (nms_math.h), so the keep sets are
// identical. Kept boxes go into uniform grids keyed on their (x1, y1)
// corner, one grid per binade of box area, so a candidate is only tested
// against kept boxes of comparable area (IoU <= min area / max area) whose
// cell could hold an overlapping box, and the test stops at the first
// suppressor. Boxes much larger than their grid's cells live in a separate
// list per grid. For one large set, candidates are taken in blocks: first, in
// parallel, each is tested against the boxes kept before the block; then,
// in order, the survivors are tested against the boxes kept inside the block.
// Classes (batched_nms) and (image, class) pairs (multiclass_nms) run in
// parallel with dynamic scheduling.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "nms/nms.h"

namespace detops {
namespace nms {
namespace {

// Boxes of one NMS problem in processing order, one array per field.
template <typename T>
struct BoxArrays {
  std::vector<T> x1, y1, x2, y2, area;

  void resize(int64_t n) {
    x1.resize(n); y1.resize(n); x2.resize(n); y2.resize(n); area.resize(n);
  }
  template <typename S>
  void set(int64_t p, const S* box) {
    x1[p] = T(box[0]); y1[p] = T(box[1]); x2[p] = T(box[2]); y2[p] = T(box[3]);
    // torchvision computes the areas in the box type, as here.
    area[p] = box_area(x1[p], y1[p], x2[p], y2[p]);
  }
};

constexpr int64_t kNone = -1;

// Below these sizes everything runs on the calling thread. A parallel region
// costs a thread wake-up and a barrier, and on a machine shared with other
// processes a descheduled worker stalls the whole region (measured: 20k-box
// nms 2x slower with 2 threads than with 1 on a loaded 2-core machine), so
// only problems of tens of milliseconds go parallel.
constexpr int64_t kParallelBoxes = 32768;  // boxes in one NMS problem / in all tasks
constexpr int64_t kParallelBlock = 8192;   // candidates tested in parallel at a time
constexpr int64_t kParallelPairs = 1 << 23;   // IoU pairs (Matrix NMS)
constexpr int64_t kParallelScores = 1 << 22;  // (image, box, class) scores scanned (multiclass)

// Problems with fewer boxes put all sizes in one grid.
constexpr int64_t kLevelsMinBoxes = 1024;

// Greedy NMS over boxes already in processing order. Sets keep[p] = 1 for the
// kept positions and returns how many were kept; stops once max_keep boxes are
// kept (max_keep < 0: no limit).
//
// Kept boxes are filed by the binade of their area (one "level" per power of
// two), each level with its own grid sized to its boxes. IoU <= min(area) /
// max(area), and the computed ratio obeys the same bound to within a few
// rounding errors (the computed intersection never exceeds either computed
// area), so a candidate only visits the levels whose areas lie within a
// factor 1 / (0.9999 * iou_threshold) of its own: boxes of very different
// sizes are never compared.
template <typename T>
class GreedyNms {
 public:
  GreedyNms(const BoxArrays<T>& b, int64_t n, double iou_threshold)
      : b_(b), n_(n), thr_(iou_threshold), area_ratio_(iou_threshold * (1 - 1e-4)) {}

  int64_t run(int64_t max_keep, bool parallel, uint8_t* keep) {
    std::fill(keep, keep + n_, uint8_t(0));
    if (n_ == 0 || max_keep == 0) return 0;
    build_levels();
    std::vector<uint8_t> suppressed(n_, 0);
    // Blocks only pay off when candidates can be tested in parallel, and a
    // parallel region costs a thread wake-up (milliseconds on a loaded
    // machine), so only large sets use them.
    const int64_t block = (parallel && n_ >= kParallelBoxes && at::get_num_threads() > 1) ? kParallelBlock : n_;
    int64_t kept = 0;
    for (int64_t start = 0; start < n_; start += block) {
      const int64_t end = std::min(n_, start + block);
      if (start > 0) {
        // Against the boxes kept before this block; the levels are read only here.
        at::parallel_for(start, end, 64, [&](int64_t lo, int64_t hi) {
          for (int64_t p = lo; p < hi; ++p) {
            if (level_of_[p] != kNone && suppressed_by_kept(p, 0)) suppressed[p] = 1;
          }
        });
      }
      for (int64_t p = start; p < end; ++p) {
        if (level_of_[p] != kNone) {
          if (suppressed[p] || suppressed_by_kept(p, start)) continue;
          insert(p);
        }
        keep[p] = 1;
        if (++kept == max_keep) return kept;
      }
    }
    return kept;
  }

 private:
  // A kept box, packed so that a list walk reads one cache line per box.
  struct Node {
    T x1, y1, x2, y2, area;
    int64_t next;  // the previous kept box of the same cell (or list)
  };

  // A uniform grid over the boxes of one area binade, keyed on the (x1, y1)
  // corner. Boxes over 8 cells wide or high are "big": kept in their own list
  // so the query window (the largest non-big box) stays a few cells.
  struct Level {
    double min_x = 0, min_y = 0, inv_x = 0, inv_y = 0, reach_x = 0, reach_y = 0;
    int64_t gx = 1, gy = 1;
    std::vector<int64_t> head, big_kept;
    std::vector<T> cell_min_x1, cell_min_y1, cell_max_x2, cell_max_y2;
  };

  // Whether a box can take part in suppression (nms_math.h; a zero or
  // infinite computed area cannot either), and then its area binade.
  bool takes_part(int64_t p) const {
    const double area = double(b_.area[p]);
    return is_valid_box(b_.x1[p], b_.y1[p], b_.x2[p], b_.y2[p]) && area > 0 && std::isfinite(area);
  }

  void build_levels() {
    level_of_.assign(n_, kNone);
    std::vector<int64_t> binade(n_, 0);
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
    // Small problems use one grid for all sizes: building a grid per binade
    // costs more than it saves there.
    single_level_ = n_ < kLevelsMinBoxes;
    for (int64_t p = 0; p < n_; ++p) {
      if (!takes_part(p)) continue;
      binade[p] = single_level_ ? 0 : std::ilogb(double(b_.area[p]));
      lo = std::min(lo, binade[p]);
      hi = std::max(hi, binade[p]);
    }
    levels_.clear();
    if (lo > hi) return;
    first_binade_ = lo;
    levels_.resize(hi - lo + 1);
    std::vector<std::vector<int64_t>> members(levels_.size());
    for (int64_t p = 0; p < n_; ++p) {
      if (takes_part(p)) {
        level_of_[p] = binade[p] - lo;
        members[level_of_[p]].push_back(p);
      }
    }
    for (size_t l = 0; l < levels_.size(); ++l) build_grid(levels_[l], members[l]);
    is_big_.assign(n_, 0);
    for (size_t l = 0; l < levels_.size(); ++l) {
      const Level& lv = levels_[l];
      const double big_w = lv.gx > 1 ? 8.0 / lv.inv_x : INFINITY, big_h = lv.gy > 1 ? 8.0 / lv.inv_y : INFINITY;
      for (int64_t p : members[l]) {
        const double w = double(b_.x2[p]) - double(b_.x1[p]), h = double(b_.y2[p]) - double(b_.y1[p]);
        is_big_[p] = w > big_w || h > big_h;
      }
    }
    nodes_.resize(n_);
  }

  void build_grid(Level& lv, const std::vector<int64_t>& members) const {
    const int64_t count = static_cast<int64_t>(members.size());
    if (count == 0) return;
    double min_x = INFINITY, min_y = INFINITY, max_x = -INFINITY, max_y = -INFINITY, sum_w = 0, sum_h = 0;
    for (int64_t p : members) {
      min_x = std::min(min_x, double(b_.x1[p]));
      max_x = std::max(max_x, double(b_.x1[p]));
      min_y = std::min(min_y, double(b_.y1[p]));
      max_y = std::max(max_y, double(b_.y1[p]));
      sum_w += double(b_.x2[p]) - double(b_.x1[p]);
      sum_h += double(b_.y2[p]) - double(b_.y1[p]);
    }
    lv.min_x = min_x;
    lv.min_y = min_y;
    // Cells of half the mean box size (finer cells let the per-cell bounds
    // skip more kept boxes), at most ~4 cells per box.
    const double range_x = max_x - min_x, range_y = max_y - min_y;
    auto cells_along = [&](double range, double mean) -> int64_t {
      if (!(range > 0) || !(mean > 0) || !std::isfinite(range / mean)) return 1;
      return std::min<int64_t>(int64_t(2 * range / mean) + 1, 4096);
    };
    lv.gx = cells_along(range_x, sum_w / count);
    lv.gy = cells_along(range_y, sum_h / count);
    while (lv.gx * lv.gy > 4 * count + 16) {
      lv.gx = (lv.gx + 1) / 2;
      lv.gy = (lv.gy + 1) / 2;
    }
    lv.inv_x = lv.gx > 1 ? double(lv.gx) / range_x : 0.0;
    lv.inv_y = lv.gy > 1 ? double(lv.gy) / range_y : 0.0;
    if (!std::isfinite(lv.inv_x) || !(lv.inv_x > 0)) { lv.gx = 1; lv.inv_x = 0.0; }
    if (!std::isfinite(lv.inv_y) || !(lv.inv_y > 0)) { lv.gy = 1; lv.inv_y = 0.0; }
    const double big_w = lv.gx > 1 ? 8.0 / lv.inv_x : INFINITY, big_h = lv.gy > 1 ? 8.0 / lv.inv_y : INFINITY;
    double max_w = 0, max_h = 0;
    for (int64_t p : members) {
      const double w = double(b_.x2[p]) - double(b_.x1[p]), h = double(b_.y2[p]) - double(b_.y1[p]);
      if (!(w > big_w || h > big_h)) {
        max_w = std::max(max_w, w);
        max_h = std::max(max_h, h);
      }
    }
    // Slack so that rounding in the window bound never drops a true neighbour.
    lv.reach_x = max_w * (1 + 1e-9);
    lv.reach_y = max_h * (1 + 1e-9);
    const int64_t cells = lv.gx * lv.gy;
    lv.head.assign(cells, kNone);
    lv.cell_min_x1.assign(cells, T(INFINITY));
    lv.cell_min_y1.assign(cells, T(INFINITY));
    lv.cell_max_x2.assign(cells, T(-INFINITY));
    lv.cell_max_y2.assign(cells, T(-INFINITY));
  }

  // Monotone in v, so a < b implies cell(a) <= cell(b).
  static int64_t cell_of(double v, double origin, double inv, int64_t g) {
    const double c = (v - origin) * inv;
    if (!(c > 0)) return 0;
    if (c >= double(g - 1)) return g - 1;
    return int64_t(c);
  }

  static double lower_bound(double v, double reach) {
    const double lo = v - reach;
    return lo - std::fabs(lo) * 1e-12;
  }

  bool pair_suppresses(const Node& k, int64_t p) const {
    const T px1 = b_.x1[p], py1 = b_.y1[p], px2 = b_.x2[p], py2 = b_.y2[p];
    // Interiors must overlap for the ratio to be positive (nms_math.h).
    if (!(k.x1 < px2 && k.x2 > px1 && k.y1 < py2 && k.y2 > py1)) return false;
    return suppresses_cpu(k.x1, k.y1, k.x2, k.y2, k.area, px1, py1, px2, py2, b_.area[p], thr_);
  }

  bool level_suppresses(const Level& lv, int64_t p, int64_t from) const {
    for (auto it = lv.big_kept.rbegin(); it != lv.big_kept.rend() && *it >= from; ++it) {
      if (pair_suppresses(nodes_[*it], p)) return true;
    }
    if (lv.head.empty()) return false;
    const T px1 = b_.x1[p], py1 = b_.y1[p], px2 = b_.x2[p], py2 = b_.y2[p];
    const int64_t cx0 = cell_of(lower_bound(px1, lv.reach_x), lv.min_x, lv.inv_x, lv.gx);
    const int64_t cx1 = cell_of(px2, lv.min_x, lv.inv_x, lv.gx);
    const int64_t cy0 = cell_of(lower_bound(py1, lv.reach_y), lv.min_y, lv.inv_y, lv.gy);
    const int64_t cy1 = cell_of(py2, lv.min_y, lv.inv_y, lv.gy);
    for (int64_t cy = cy0; cy <= cy1; ++cy) {
      for (int64_t cx = cx0; cx <= cx1; ++cx) {
        const int64_t c = cy * lv.gx + cx;
        if (lv.head[c] < from) continue;
        if (!(lv.cell_max_x2[c] > px1 && lv.cell_min_x1[c] < px2 && lv.cell_max_y2[c] > py1 &&
              lv.cell_min_y1[c] < py2)) {
          continue;
        }
        for (int64_t k = lv.head[c]; k >= from; k = nodes_[k].next) {
          if (pair_suppresses(nodes_[k], p)) return true;
        }
      }
    }
    return false;
  }

  // Whether a kept box at a position >= from suppresses candidate p. Lists run
  // newest first, so each walk stops below `from`.
  bool suppressed_by_kept(int64_t p, int64_t from) const {
    const int64_t last = static_cast<int64_t>(levels_.size()) - 1;
    int64_t lo = 0, hi = last;
    if (area_ratio_ > 0 && !single_level_) {
      const double area = double(b_.area[p]);
      const double below = area * area_ratio_, above = area / area_ratio_;
      if (below > 0) lo = std::max<int64_t>(lo, int64_t(std::ilogb(below)) - first_binade_);
      if (std::isfinite(above)) hi = std::min<int64_t>(hi, int64_t(std::ilogb(above)) - first_binade_);
    }
    for (int64_t l = lo; l <= hi; ++l) {
      if (level_suppresses(levels_[l], p, from)) return true;
    }
    return false;
  }

  void insert(int64_t p) {
    nodes_[p] = Node{b_.x1[p], b_.y1[p], b_.x2[p], b_.y2[p], b_.area[p], kNone};
    Level& lv = levels_[level_of_[p]];
    if (is_big_[p]) {
      lv.big_kept.push_back(p);
      return;
    }
    const int64_t c = cell_of(b_.y1[p], lv.min_y, lv.inv_y, lv.gy) * lv.gx + cell_of(b_.x1[p], lv.min_x, lv.inv_x, lv.gx);
    nodes_[p].next = lv.head[c];
    lv.head[c] = p;
    lv.cell_min_x1[c] = std::min(lv.cell_min_x1[c], b_.x1[p]);
    lv.cell_min_y1[c] = std::min(lv.cell_min_y1[c], b_.y1[p]);
    lv.cell_max_x2[c] = std::max(lv.cell_max_x2[c], b_.x2[p]);
    lv.cell_max_y2[c] = std::max(lv.cell_max_y2[c], b_.y2[p]);
  }

  const BoxArrays<T>& b_;
  const int64_t n_;
  const double thr_;
  const double area_ratio_;  // pairs whose area ratio is below this cannot suppress
  std::vector<int64_t> level_of_;  // level index of each box, kNone if it takes no part
  std::vector<uint8_t> is_big_;
  int64_t first_binade_ = 0;
  bool single_level_ = false;
  std::vector<Level> levels_;
  std::vector<Node> nodes_;
};

// Positions sorted by decreasing score, equal scores by lower index (a stable
// descending sort; NaN scores first, as torch.sort places them).
std::vector<int64_t> descending_order(const at::Tensor& scores) {
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const int64_t* o = order.const_data_ptr<int64_t>();
  return std::vector<int64_t>(o, o + order.numel());
}

// Runs work(task) for task in [0, count) on all threads, largest tasks first
// when sizes are given, each thread taking the next task when it is free.
template <typename F>
void for_each_task(int64_t count, const std::vector<int64_t>& sizes, bool parallel, const F& work) {
  std::vector<int64_t> tasks(count);
  std::iota(tasks.begin(), tasks.end(), int64_t(0));
  if (!sizes.empty()) {
    std::stable_sort(tasks.begin(), tasks.end(), [&](int64_t a, int64_t b) { return sizes[a] > sizes[b]; });
  }
  std::atomic<int64_t> next{0};
  const int64_t workers = parallel ? std::min<int64_t>(count, at::get_num_threads()) : 1;
  at::parallel_for(0, std::max<int64_t>(workers, 1), 1, [&](int64_t, int64_t) {
    for (int64_t t = next++; t < count; t = next++) work(tasks[t]);
  });
}

at::Tensor empty_indices(const at::Tensor& like) { return at::empty({0}, like.options().dtype(at::kLong)); }

// ------------------------------------------------------------------ nms

at::Tensor nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores, double iou_threshold) {
  check_nms_args(boxes_in, scores, iou_threshold);
  const int64_t n = boxes_in.size(0);
  if (n == 0) return empty_indices(boxes_in);
  const at::Tensor boxes = boxes_in.contiguous();
  const std::vector<int64_t> order = descending_order(scores);
  std::vector<uint8_t> keep(n);
  int64_t kept = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    BoxArrays<T> sorted;
    sorted.resize(n);
    for (int64_t p = 0; p < n; ++p) sorted.set(p, b + 4 * order[p]);
    kept = GreedyNms<T>(sorted, n, iou_threshold).run(-1, /*parallel=*/true, keep.data());
  });
  at::Tensor out = at::empty({kept}, boxes.options().dtype(at::kLong));
  int64_t* o = out.mutable_data_ptr<int64_t>();
  for (int64_t p = 0, k = 0; p < n; ++p) {
    if (keep[p]) o[k++] = order[p];
  }
  return out;
}

// ------------------------------------------------------------------ batched_nms

at::Tensor batched_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores, const at::Tensor& idxs_in,
                           double iou_threshold) {
  check_batched_args(boxes_in, scores, idxs_in, iou_threshold);
  const int64_t n = boxes_in.size(0);
  if (n == 0) return empty_indices(boxes_in);
  const at::Tensor boxes = boxes_in.contiguous(), idxs_t = idxs_in.contiguous();
  const int64_t* idxs = idxs_t.const_data_ptr<int64_t>();
  const std::vector<int64_t> order = descending_order(scores);

  // Group the score order by class, keeping the score order inside a class.
  std::vector<int64_t> grouped(n);
  const auto [lo_it, hi_it] = std::minmax_element(idxs, idxs + n);
  const int64_t lo = *lo_it, hi = *hi_it;
  const bool dense = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) < static_cast<uint64_t>(4 * n + 1024);
  if (dense) {  // counting sort
    std::vector<int64_t> start(static_cast<size_t>(hi - lo) + 2, 0);
    for (int64_t i = 0; i < n; ++i) ++start[idxs[i] - lo + 1];
    std::partial_sum(start.begin(), start.end(), start.begin());
    for (int64_t p = 0; p < n; ++p) grouped[start[idxs[order[p]] - lo]++] = order[p];
  } else {
    grouped = order;
    std::stable_sort(grouped.begin(), grouped.end(), [&](int64_t a, int64_t b) { return idxs[a] < idxs[b]; });
  }
  std::vector<int64_t> seg_start{0};
  for (int64_t p = 1; p < n; ++p) {
    if (idxs[grouped[p]] != idxs[grouped[p - 1]]) seg_start.push_back(p);
  }
  const int64_t segments = static_cast<int64_t>(seg_start.size());
  seg_start.push_back(n);
  std::vector<int64_t> seg_size(segments);
  for (int64_t s = 0; s < segments; ++s) seg_size[s] = seg_start[s + 1] - seg_start[s];

  std::vector<uint8_t> keep_grouped(n, 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "batched_nms_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    for_each_task(segments, seg_size, n >= kParallelBoxes, [&](int64_t s) {
      const int64_t first = seg_start[s], m = seg_size[s];
      BoxArrays<T> seg;
      seg.resize(m);
      for (int64_t p = 0; p < m; ++p) seg.set(p, b + 4 * grouped[first + p]);
      GreedyNms<T>(seg, m, iou_threshold).run(-1, /*parallel=*/segments == 1, keep_grouped.data() + first);
    });
  });
  std::vector<uint8_t> keep_by_index(n, 0);
  int64_t kept = 0;
  for (int64_t p = 0; p < n; ++p) {
    if (keep_grouped[p]) {
      keep_by_index[grouped[p]] = 1;
      ++kept;
    }
  }
  at::Tensor out = at::empty({kept}, boxes.options().dtype(at::kLong));
  int64_t* o = out.mutable_data_ptr<int64_t>();
  for (int64_t p = 0, k = 0; p < n; ++p) {
    if (keep_by_index[order[p]]) o[k++] = order[p];
  }
  return out;
}

// ------------------------------------------------------------------ multiclass_nms

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_cpu(
    const at::Tensor& boxes_in, const at::Tensor& scores_in, double score_threshold, double iou_threshold,
    int64_t max_per_class, int64_t max_detections) {
  check_multiclass_args(boxes_in, scores_in, iou_threshold, max_per_class, max_detections);
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const int64_t B = scores.size(0), N = scores.size(1), C = scores.size(2), D = max_detections;
  const bool per_class_boxes = boxes.dim() == 4;
  at::Tensor out_boxes = at::zeros({B, D, 4}, boxes.options());
  at::Tensor out_scores = at::zeros({B, D}, scores.options());
  at::Tensor out_labels = at::full({B, D}, -1, scores.options().dtype(at::kLong));
  at::Tensor out_count = at::zeros({B}, scores.options().dtype(at::kLong));
  if (B == 0 || N == 0 || C == 0) return {out_boxes, out_scores, out_labels, out_count};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "multiclass_nms_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    const scalar_t* s = scores.const_data_ptr<scalar_t>();
    auto box_ptr = [&](int64_t img, int64_t box, int64_t cls) {
      return per_class_boxes ? b + ((img * N + box) * C + cls) * 4 : b + (img * N + box) * 4;
    };
    struct Detection {
      T score;
      int64_t flat;  // box * C + class: the tie order
    };
    const bool parallel = B * N * C >= kParallelScores;
    // Candidates above the score threshold, bucketed by (image, class) in one
    // contiguous pass over each image's scores (ascending box index).
    std::vector<std::vector<Detection>> candidates(B * C);
    at::parallel_for(0, B, parallel ? 1 : B, [&](int64_t img_lo, int64_t img_hi) {
      for (int64_t img = img_lo; img < img_hi; ++img) {
        const scalar_t* row = s + img * N * C;
        std::vector<Detection>* buckets = candidates.data() + img * C;
        const T threshold = T(score_threshold);
        for (int64_t i = 0; i < N; ++i) {
          for (int64_t c = 0; c < C; ++c) {
            const T score = T(row[i * C + c]);
            if (score > threshold) buckets[c].push_back({score, i * C + c});
          }
        }
      }
    });
    // Per (image, class): exact greedy NMS over the candidates, stopped after
    // max_per_class kept boxes.
    std::vector<std::vector<Detection>> kept_per_task(B * C);
    for_each_task(B * C, {}, parallel, [&](int64_t task) {
      const int64_t img = task / C, cls = task % C;
      std::vector<Detection>& cand = candidates[task];
      std::stable_sort(cand.begin(), cand.end(), [](const Detection& x, const Detection& y) { return x.score > y.score; });
      const int64_t m = static_cast<int64_t>(cand.size());
      BoxArrays<T> arr;
      arr.resize(m);
      for (int64_t p = 0; p < m; ++p) arr.set(p, box_ptr(img, cand[p].flat / C, cls));
      std::vector<uint8_t> keep(m);
      GreedyNms<T>(arr, m, iou_threshold).run(max_per_class, /*parallel=*/false, keep.data());
      auto& kept = kept_per_task[task];
      for (int64_t p = 0; p < m; ++p) {
        if (keep[p]) kept.push_back(cand[p]);
      }
      std::vector<Detection>().swap(cand);
    });
    // Per image: the max_detections best over all classes.
    scalar_t* ob = out_boxes.mutable_data_ptr<scalar_t>();
    scalar_t* os = out_scores.mutable_data_ptr<scalar_t>();
    int64_t* ol = out_labels.mutable_data_ptr<int64_t>();
    int64_t* oc = out_count.mutable_data_ptr<int64_t>();
    at::parallel_for(0, B, parallel ? 1 : B, [&](int64_t img_lo, int64_t img_hi) {
      for (int64_t img = img_lo; img < img_hi; ++img) {
        std::vector<Detection> all;
        for (int64_t cls = 0; cls < C; ++cls) {
          const auto& kept = kept_per_task[img * C + cls];
          all.insert(all.end(), kept.begin(), kept.end());
        }
        const int64_t count = std::min<int64_t>(D, static_cast<int64_t>(all.size()));
        std::partial_sort(all.begin(), all.begin() + count, all.end(), [](const Detection& x, const Detection& y) {
          return x.score > y.score || (x.score == y.score && x.flat < y.flat);
        });
        for (int64_t d = 0; d < count; ++d) {
          const int64_t box = all[d].flat / C, cls = all[d].flat % C;
          const scalar_t* src = box_ptr(img, box, cls);
          std::copy(src, src + 4, ob + (img * D + d) * 4);
          os[img * D + d] = s[(img * N + box) * C + cls];
          ol[img * D + d] = cls;
        }
        oc[img] = count;
      }
    });
  });
  return {out_boxes, out_scores, out_labels, out_count};
}

// ------------------------------------------------------------------ soft_nms

std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                                                double iou_threshold, double sigma, double score_threshold,
                                                c10::string_view method_name) {
  check_soft_args(boxes_in, scores_in, iou_threshold, sigma);
  const DecayMethod method = parse_method(method_name);
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const int64_t n = boxes.size(0);
  const at::ScalarType out_type = compute_dtype(boxes.scalar_type());
  std::vector<int64_t> keep;
  at::Tensor out_scores;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "soft_nms_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    const scalar_t* s_in = scores.const_data_ptr<scalar_t>();
    BoxArrays<T> arr;
    arr.resize(n);
    std::vector<T> s(n);
    std::vector<int64_t> alive;  // ascending index, so ties pick the lower index
    for (int64_t i = 0; i < n; ++i) {
      arr.set(i, b + 4 * i);
      s[i] = T(s_in[i]);
      if (s[i] >= T(score_threshold)) alive.push_back(i);  // NaN scores drop out here
    }
    std::vector<T> kept_scores;
    const T thr = T(iou_threshold), sig = T(sigma), min_score = T(score_threshold);
    while (!alive.empty()) {
      size_t best = 0;
      for (size_t a = 1; a < alive.size(); ++a) {
        if (s[alive[a]] > s[alive[best]]) best = a;
      }
      const int64_t i = alive[best];
      keep.push_back(i);
      kept_scores.push_back(s[i]);
      size_t out = 0;
      for (size_t a = 0; a < alive.size(); ++a) {
        const int64_t j = alive[a];
        if (j == i) continue;
        const T iou = iou_or_zero(arr.x1[i], arr.y1[i], arr.x2[i], arr.y2[i], arr.x1[j], arr.y1[j], arr.x2[j], arr.y2[j]);
        s[j] *= soft_nms_weight(method, iou, thr, sig);
        if (s[j] >= min_score) alive[out++] = j;
      }
      alive.resize(out);
    }
    out_scores = at::empty({static_cast<int64_t>(kept_scores.size())}, boxes.options().dtype(out_type));
    std::copy(kept_scores.begin(), kept_scores.end(), out_scores.mutable_data_ptr<T>());
  });
  at::Tensor out_keep = at::empty({static_cast<int64_t>(keep.size())}, boxes.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), out_keep.mutable_data_ptr<int64_t>());
  return {out_keep, out_scores};
}

// ------------------------------------------------------------------ matrix_nms

std::tuple<at::Tensor, at::Tensor> matrix_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                                                  const c10::optional<at::Tensor>& idxs_in,
                                                  c10::string_view method_name, double sigma,
                                                  double score_threshold) {
  check_matrix_args(boxes_in, scores_in, idxs_in, sigma);
  const DecayMethod method = parse_method(method_name);
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  at::Tensor idxs_t;
  if (idxs_in.has_value()) idxs_t = idxs_in->contiguous();
  const int64_t* idxs = idxs_in.has_value() ? idxs_t.const_data_ptr<int64_t>() : nullptr;
  const at::ScalarType out_type = compute_dtype(boxes.scalar_type());
  std::vector<int64_t> order = descending_order(scores);
  std::vector<int64_t> keep;
  at::Tensor out_scores;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "matrix_nms_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    const scalar_t* s_in = scores.const_data_ptr<scalar_t>();
    // NaN scores sort first; they take no part.
    order.erase(std::remove_if(order.begin(), order.end(), [&](int64_t i) { return std::isnan(T(s_in[i])); }),
                order.end());
    const int64_t n = static_cast<int64_t>(order.size());
    BoxArrays<T> arr;
    arr.resize(n);
    for (int64_t p = 0; p < n; ++p) arr.set(p, b + 4 * order[p]);
    // Classes in score order (all 0 without idxs), so the inner loops are
    // branch-free over plain arrays and vectorise.
    std::vector<int64_t> cls(n, 0);
    if (idxs != nullptr) {
      for (int64_t p = 0; p < n; ++p) cls[p] = idxs[order[p]];
    }
    const T* __restrict__ x1 = arr.x1.data();
    const T* __restrict__ y1 = arr.y1.data();
    const T* __restrict__ x2 = arr.x2.data();
    const T* __restrict__ y2 = arr.y2.data();
    const int64_t* __restrict__ c = cls.data();
    // comp[j]: the largest IoU of j with a higher-scored box of its class.
    std::vector<T> comp(n, T(0)), decayed(n);
    const int64_t grain = n * n / 2 >= kParallelPairs ? 64 : std::max<int64_t>(n, 1);
    at::parallel_for(0, n, grain, [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) {
        T m = T(0);
        for (int64_t i = 0; i < j; ++i) {
          const T v = iou_or_zero(x1[i], y1[i], x2[i], y2[i], x1[j], y1[j], x2[j], y2[j]);
          m = (c[i] == c[j] && v > m) ? v : m;
        }
        comp[j] = m;
      }
    });
    const T sig = T(sigma);
    const T* __restrict__ cp = comp.data();
    at::parallel_for(0, n, grain, [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) {
        T decay = T(1);
        if (method == DecayMethod::kLinear) {
          for (int64_t i = 0; i < j; ++i) {
            const T v = iou_or_zero(x1[i], y1[i], x2[i], y2[i], x1[j], y1[j], x2[j], y2[j]);
            const T term = matrix_nms_decay(DecayMethod::kLinear, v, cp[i], sig);
            decay = (c[i] == c[j] && term < decay) ? term : decay;
          }
        } else {
          // exp is monotone: the smallest factor is exp of the smallest exponent.
          T lowest = T(0);
          for (int64_t i = 0; i < j; ++i) {
            const T v = iou_or_zero(x1[i], y1[i], x2[i], y2[i], x1[j], y1[j], x2[j], y2[j]);
            const T e = matrix_nms_gaussian_exponent(v, cp[i], sig);
            lowest = (c[i] == c[j] && e < lowest) ? e : lowest;
          }
          decay = std::exp(lowest);
        }
        decayed[j] = T(s_in[order[j]]) * decay;
      }
    });
    std::vector<int64_t> pos;
    for (int64_t p = 0; p < n; ++p) {
      if (decayed[p] >= T(score_threshold)) pos.push_back(p);
    }
    std::stable_sort(pos.begin(), pos.end(), [&](int64_t x, int64_t y) { return decayed[x] > decayed[y]; });
    out_scores = at::empty({static_cast<int64_t>(pos.size())}, boxes.options().dtype(out_type));
    T* os = out_scores.mutable_data_ptr<T>();
    for (size_t k = 0; k < pos.size(); ++k) {
      keep.push_back(order[pos[k]]);
      os[k] = decayed[pos[k]];
    }
  });
  at::Tensor out_keep = at::empty({static_cast<int64_t>(keep.size())}, boxes.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), out_keep.mutable_data_ptr<int64_t>());
  return {out_keep, out_scores};
}

}  // namespace
}  // namespace nms
}  // namespace detops

TORCH_LIBRARY_IMPL(detops, CPU, m) {
  using namespace detops::nms;
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("multiclass_nms", &multiclass_nms_cpu);
  m.impl("soft_nms", &soft_nms_cpu);
  m.impl("matrix_nms", &matrix_nms_cpu);
}
