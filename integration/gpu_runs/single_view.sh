#!/usr/bin/env bash
[[ -f .gpubundle/activate ]] && source .gpubundle/activate  # a packed PyTorch3D, where the machine has none
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
export PYTHONPATH=$PWD:$PYTHONPATH
DATA=${DVR_DATA_DIR:-../shared/data}
# Single-view reconstruction on one GPU (H100 / H200), from the repository root, in about 7 min:
#   1. generate a category in code: chairs, tables, lamps; 100 train / 4 val / 17 test objects
#      per class (300 / 12 / 51), 20 views of 64x64 each, rendered with PyTorch3D on the GPU;
#   2. train encoder + conditioned field for about 3.5 minutes (train.time_budget_s);
#   3. evaluate the 51 held-out objects (input view 0) against retrieval baselines;
#   4. copy 4 files to $OUT: results.md, results.json, figure.png, curves.png.
# Generated data and runs go to /tmp/single_view (never into the repository).
#
#   bash integration/gpu_runs/single_view.sh            # the GPU run
#   SUPERVISION=rgb bash integration/gpu_runs/single_view.sh   # rgb | depth | both (default both)
#   PYTHON=.venv/bin/python bash integration/gpu_runs/single_view.sh --tiny   # CPU check, ~1 min
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/single_view_out}
W=${WORK:-/tmp/single_view}
SUPERVISION=${SUPERVISION:-both}
mkdir -p "$OUT"
rm -rf "$W" && mkdir -p "$W"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

if [[ "${1:-}" == "--tiny" ]]; then
  export PYTHONPATH=$PWD  # the local environment, not the GPU bundle
  DEVICE=cpu
  GEN=(--train 4 --val 1 --test 2 --views 4 --image-size 32 --workers 2)
  FIT=(train.iterations=60 train.time_budget_s=120 train.objects_per_batch=4
       train.rays_per_image=96 model.hidden_size=32 model.n_blocks=2 encoder.latent_size=32
       'train.step_milestones={0: 16}' 'optim.lr_milestones=[]' optim.lr=2e-3
       eval.validate_every=30 eval.checkpoint_every=30 eval.max_objects=3 eval.n_steps=32)
  EVAL=(--resolution 32 --points 2000)
  LIMITS=(300 300 300)
else
  DEVICE=cuda
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  GEN=(--train 100 --val 4 --test 17 --views 20 --image-size 64 --workers 12)
  FIT=(train.iterations=4000 train.time_budget_s=205 'optim.lr_milestones=[2800, 3500]'
       data.workers=12 train.objects_per_batch=32 train.rays_per_image=1024 model.hidden_size=256
       'train.step_milestones={0: 32}' eval.validate_every=500 eval.checkpoint_every=500
       eval.max_objects=6 eval.n_steps=128)
  EVAL=(--resolution 128 --points 30000)
  LIMITS=(110 290 120)
fi

stamp "make-category"
timeout "${LIMITS[0]}" "$PY" -m dvr_plugin.cli make-category --out "$W/data" --device "$DEVICE" \
  --quiet "${GEN[@]}" 2>&1 | tail -5
stamp "fit --task single-view (supervision: $SUPERVISION)"
timeout "${LIMITS[1]}" "$PY" -m dvr_plugin.cli fit --task single-view --data "$W/data" \
  --out "$W/fit" --device "$DEVICE" --quiet train.supervision="$SUPERVISION" "${FIT[@]}" \
  2>&1 | tail -12
stamp "eval-category"
timeout "${LIMITS[2]}" "$PY" -m dvr_plugin.cli eval-category "$W/fit/checkpoint.pt" \
  --out "$W/eval" --device "$DEVICE" --quiet "${EVAL[@]}" 2>&1 | tail -40
stamp "done"
python_summary() {
  "$PY" - "$W" <<'PYEOF' || true
import json, sys
w = sys.argv[1]
try:
    s = json.load(open(f"{w}/fit/summary.json"))
    t = s["train"]
    print(f"train: {t['iterations']} it in {t['seconds']:.0f} s "
          f"({1000 * t['seconds_per_iteration']:.0f} ms/it), data {s['timing']['data_seconds']:.0f} s")
    r = json.load(open(f"{w}/eval/results.json"))
    print("eval timing:", {k: round(v, 1) for k, v in r["timing"].items()})
except Exception as error:  # noqa: BLE001
    print("no summary:", error)
PYEOF
}
python_summary
cp "$W/eval/results.md" "$OUT/single_view_results.md" 2>/dev/null
cp "$W/eval/results.json" "$OUT/single_view_results.json" 2>/dev/null
cp "$W/eval/figure.png" "$OUT/single_view_figure.png" 2>/dev/null
cp "$W/fit/curves.png" "$OUT/single_view_curves.png" 2>/dev/null
ls -la "$OUT"
