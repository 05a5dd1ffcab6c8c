#!/usr/bin/env bash
# Opt-in proof that the emulated CUDA tests bite: each mutation breaks one
# kernel the way a first GPU run would (a barrier removed, a thread index
# shifted, an atomic dropped, a shuffle offset wrong), rebuilds the emulated
# library, and expects its test to FAIL; the source is restored afterwards
# (also on Ctrl-C). Slow (one rebuild per mutation): not part of CI.
#
#   bash scripts/cuda_emulated_mutations.sh [NAME...]   # default: all
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${DETOPS_VENV:-.venv}/bin/python

# name | file | exact text | replacement | test selection (-k)
MUTATIONS=(
  "nms-barrier|csrc/nms/nms_cuda.cu|    col_cls[t] = cls != nullptr ? cls[col_first + t] : 0;
  }
  __syncthreads();|    col_cls[t] = cls != nullptr ? cls[col_first + t] : 0;
  }|test_nms"
  "roi_align-index|csrc/roi_align/roi_align_cuda.cu|    const int64_t r = e.n, c = e.c, ph = e.h, pw = e.w;
    const Roi<T> roi = load_roi(rois, levels, r, maps, pool);
    T acc = T(0);|    const int64_t r = e.n, c = e.c, ph = e.w % pool.PH, pw = e.h % pool.PW;
    const Roi<T> roi = load_roi(rois, levels, r, maps, pool);
    T acc = T(0);|test_roi_align_forward"
  "roi_pool-atomic|csrc/roi_pool/roi_pool_cuda.cu|    atomicAdd(accum + n * m.sN + c * m.sC + h * m.sH + w * m.sW, A(convert<T>(grad[off])));|    accum[n * m.sN + c * m.sC + h * m.sH + w * m.sW] = A(convert<T>(grad[off]));|test_roi_pool_backward"
  "ps_roi-atomic|csrc/ps_roi/ps_roi_cuda.cu|      for (int64_t w = bin.wstart; w < bin.wend; ++w) atomicAdd(plane + h * m.sH + w * m.sW, diff);|      for (int64_t w = bin.wstart; w < bin.wend; ++w) plane[h * m.sH + w * m.sW] = diff;|test_ps_roi_backward"
  "ps_roi-gather|csrc/ps_roi/ps_roi_cuda.cu|      acc += go * wy * wx / g.count;|      acc += go * wy * wx;|test_ps_roi_backward"
  "box_iou-barrier|csrc/box_iou/box_iou_cuda.cu|      for (int c = 0; c < 4; ++c) shared[c][tid] += shared[c][tid + stride];
    }
    __syncthreads();|      for (int c = 0; c < 4; ++c) shared[c][tid] += shared[c][tid + stride];
    }|test_box_iou_matrix_backward"
  "box_iou-split|csrc/box_iou/box_iou_cuda.cu|for (int64_t s = 0; s < splits; ++s)|for (int64_t s = 1; s < splits; ++s)|test_box_iou_matrix_backward_split"
  "conv_transpose2d-shuffle|csrc/conv_transpose2d/conv_transpose2d_cuda.cu|v += __shfl_down_sync(0xffffffffu, v, o);|v += __shfl_down_sync(0xffffffffu, v, o + 1);|test_conv_transpose2d_depthwise"
  "box_coder-index|csrc/box_coder/box_coder_cuda.cu|blockIdx.x * int64_t(blockDim.x) + threadIdx.x;|blockIdx.x * int64_t(blockDim.x) + threadIdx.x + 1;|test_box_coder"
  "anchor_generator-index|csrc/anchor_generator/anchor_generator_cuda.cu|grid_first<I>();|grid_first<I>() + 1;|test_grid_anchors"
  "corner_pool-index|csrc/corner_pool/corner_pool_cuda.cu|grid_first<I>();|grid_first<I>() + 1;|test_corner_pool"
)

wanted=" $* "
results=()
status=0
for m in "${MUTATIONS[@]}"; do
  # -d '': the whole entry (texts span lines; a plain read stops at the first
  # newline, which silently turned multi-line mutations into deletions).
  IFS='|' read -r -d '' name file old new sel <<<"$m" || true
  sel=${sel%$'\n'}
  if [ $# -gt 0 ] && [[ "$wanted" != *" $name "* ]]; then continue; fi
  cp "$file" "$file.orig"
  trap 'mv -f "'"$file"'.orig" "'"$file"'"; exit 130' INT TERM
  if ! "$PY" - "$file" "$old" "$new" <<'EOF'
import sys
path, old, new = sys.argv[1:]
src = open(path).read()
if old not in src:
    sys.exit(f"mutation text not found in {path}")
open(path, "w").write(src.replace(old, new))
EOF
  then
    mv -f "$file.orig" "$file"; results+=("$name: NOT APPLIED (source changed?)"); status=1; continue
  fi
  if bash scripts/test_cuda_emulated.sh -x -q -k "$sel" >"build/mutation-$name.log" 2>&1; then
    results+=("$name: tests PASSED -- the mutation was NOT caught"); status=1
  elif ! grep -q "== emulated CUDA tests" "build/mutation-$name.log"; then
    results+=("$name: the mutated source did not BUILD (not a test result)"); status=1
  else
    results+=("$name: caught ($(grep -m1 -oE '[0-9]+ failed|Error|AddressSanitizer|runtime error' "build/mutation-$name.log" || echo failed))")
  fi
  mv -f "$file.orig" "$file"
  touch "$file"  # the restored copy is older than the mutated object: make ninja rebuild it
  trap - INT TERM
done
printf '%s\n' "${results[@]}"
# Rebuild the unmutated library so later runs start clean.
bash scripts/test_cuda_emulated.sh -q -k emulator_launch_limits >/dev/null 2>&1 || true
exit $status
