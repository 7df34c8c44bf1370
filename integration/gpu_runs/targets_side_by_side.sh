#!/usr/bin/env bash
# One GPU: the performance-target cases (targets.sh: bench_core --targets --profile) of this tree
# and of another revision, alternately in fresh processes (ROUNDS times each, default 2), then one
# table of both (integration/benchmarks/side_by_side.py) in $OUT/targets_side_by_side.md.
#
#   git archive <commit> | (mkdir -p .base && tar -x -C .base)     # the revision to compare with
#   source .gpubundle/activate && BASE=.base bash integration/gpu_runs/targets_side_by_side.sh
#   (device call: carry [".gpubundle", ".gpudeps", ".base"])
#
# Each round takes about a minute on an H100 (the reference field's fit, then the cases).
# SMOKE=1: the same on the CPU at toy sizes (bench_core --quick; a check of the script).
set -u
# a packed PyTorch3D, where the machine has none
[[ ${SMOKE:-0} != 1 && -f .gpubundle/activate ]] && source .gpubundle/activate
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none
BASE=${BASE:?BASE=<folder with the tree of the other revision>}
[[ -d $BASE/dvr_plugin ]] || { echo "BASE=$BASE holds no dvr_plugin/ tree"; exit 2; }
BASE=$(cd "$BASE" && pwd); HEAD=$PWD
OUT=${OUT:-outputs/gpu_runs}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
ROUNDS=${ROUNDS:-2}
export PYTHONUNBUFFERED=1
BENCH=(--device cuda --targets --profile)
if [[ ${SMOKE:-0} == 1 ]]; then BENCH=(--device cpu --quick --targets --profile); else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1; fi
RUNS=()
for round in $(seq 1 "$ROUNDS"); do
  for label in base head; do
    tree=$HEAD; [[ $label == base ]] && tree=$BASE
    dir=$OUT/targets_${label}_$round
    printf '[%4ds] %s round %s\n' "$SECONDS" "$label" "$round"
    (cd "$tree" && PYTHONPATH=$tree:${PYTHONPATH:-} python -m integration.benchmarks.bench_core \
      "${BENCH[@]}" --out "$dir" > "$dir.log" 2>&1) \
      || { echo "$label round $round failed:"; tail -5 "$dir.log"; }
    [[ -f $dir/bench_core.json ]] && RUNS+=(--run "$label=$dir")
  done
done
(( ${#RUNS[@]} )) || { echo "no round finished: nothing to compare (see the logs in $OUT)"; exit 1; }
PYTHONPATH=$HEAD:${PYTHONPATH:-} python -m integration.benchmarks.side_by_side "${RUNS[@]}" \
  --out "$OUT/targets_side_by_side.md"
