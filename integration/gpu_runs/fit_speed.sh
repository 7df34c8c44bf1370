#!/usr/bin/env bash
# Time to quality on ONE GPU (integration/benchmarks/bench_fit.py): DVR with the packaged
# config's CUDA settings, the same with the hash-grid field (dvr-hash), its dense reference-style mode, PyTorch3D's volume renderer on the same
# network and an Instant-NGP-style model on nerfacc 0.5.3, trained ONE AFTER ANOTHER on the cow
# (50 views 128x128, 8192 rays per step for every method) for BUDGET seconds of training time
# each, evaluated at fixed checkpoints with the clock stopped (held-out PSNR / mask IoU, mesh
# Chamfer-L1 / F@1% / normal consistency); then the DTU-like cow (`dvr make-scene`, observed
# region scores) when the time left allows it.
#
#   source .gpubundle/activate && DVR_DATA_DIR=$PWD/.gpudata bash integration/gpu_runs/fit_speed.sh
#   (device call: carry [".gpubundle", ".gpudeps", ".gpudata", ".whl"]; .whl holds the nerfacc wheel:
#    pip download --no-deps nerfacc==0.5.3 -d .whl)
#
# Time (one H100): the nerfacc CUDA extension is compiled just in time on first use (4 .cu files
# and one .cpp in parallel: about 1.5-2.5 minutes; cached in ~/.cache/torch_extensions while the
# machine stays up), then the cow: 5 methods x (BUDGET + 6 evaluations of 1-3 s + construction),
# about 6 minutes at BUDGET=45. Under 9 minutes in all. The DTU-like scene (5 x DTU_BUDGET +
# the scene generation, about 4 minutes at 45 s) only runs when MAX_SECONDS leaves room for it;
# else run it in a second call: SCENES=dtu-like bash integration/gpu_runs/fit_speed.sh
#
# Env: BUDGET (default 45 s) for the cow, CHECKPOINTS (default: those of 5 10 20 30 45 60 90 ...
# below BUDGET, then BUDGET), DTU_BUDGET (45) / DTU_CHECKPOINTS, SCENES ("cow dtu-like"),
# MAX_SECONDS (530: the wall-clock budget of the whole script; a method that would pass it is
# skipped), BUILD_TIMEOUT (300 s for the nerfacc build), METHODS (default: all five), SMOKE=1
# (this script on the CPU at toy sizes), PROFILE (1: end with the phase profile of our training
# step, integration/benchmarks/profile_train_step.py). Outputs in $OUT (default
# outputs/gpu_runs/fit_speed): bench_fit_<scene>.md / .json / .png, nerfacc_build.log,
# nerfacc_status.json, <scene>.log, profile_train_step.md / .json.
set -u
# a packed PyTorch3D, where the machine has none
[[ ${SMOKE:-0} != 1 && -f .gpubundle/activate ]] && source .gpubundle/activate
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-15}
OUT=${OUT:-outputs/gpu_runs/fit_speed}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python}
MAX_SECONDS=${MAX_SECONDS:-530}
# the checkpoints: 5 10 20 30 45 60 90 120 ... below the budget, then the budget
checkpoints_below() { local out=""; for c in 5 10 20 30 45 60 90 120 180 240; do
  (( c < $1 )) && out+="$c "; done; echo "$out$1"; }
BUDGET=${BUDGET:-45}; CHECKPOINTS=${CHECKPOINTS:-$(checkpoints_below "$BUDGET")}
DTU_BUDGET=${DTU_BUDGET:-45}; DTU_CHECKPOINTS=${DTU_CHECKPOINTS:-$(checkpoints_below "$DTU_BUDGET")}
SCENES=${SCENES:-"cow dtu-like"}
METHODS=${METHODS:-"dvr dvr-hash dvr-dense pytorch3d-volume nerfacc"}
DEVICE=cuda; EXTRA=()
if [[ ${SMOKE:-0} == 1 ]]; then  # a check of this script on the CPU at toy sizes
  DEVICE=cpu; EXTRA=(--quick); CHECKPOINTS=${SMOKE_CHECKPOINTS:-"1 2"}; DTU_CHECKPOINTS=$CHECKPOINTS
fi
stamp() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }
left() { echo $((MAX_SECONDS - SECONDS)); }

[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1

# 1. nerfacc: the carried wheel (pure Python; `rich` and `torch` are on the image), beside the
#    packed PyTorch3D in /tmp/site (SMOKE=1 keeps it apart from this machine's own packages)
SITE=${NERFACC_SITE:-/tmp/site}
[[ ${SMOKE:-0} == 1 ]] && SITE=${NERFACC_SITE:-/tmp/nerfacc_smoke_site}
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl \
  && export PYTHONPATH=$SITE:$PYTHONPATH
export MAX_JOBS=${MAX_JOBS:-16}
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c \
  'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# where nvcc is a wrapper script outside the toolkit, PyTorch would guess the wrong CUDA_HOME
if [[ -z ${CUDA_HOME:-} && -f /usr/local/cuda/include/cuda.h ]]; then export CUDA_HOME=/usr/local/cuda; fi
"$PY" - <<'EOF'
import shutil, torch
from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME {CUDA_HOME}, "
      f"nvcc {shutil.which('nvcc')}, ninja {is_ninja_available()}")
EOF

# 2. build nerfacc's extension once, before any clock runs (the benchmark reuses the status:
#    a build that fails or runs out of time is recorded, and the nerfacc row runs the stand-in)
STATUS=$OUT/nerfacc_status.json
rm -f "$STATUS"
if [[ " $METHODS " != *" nerfacc "* ]]; then
  echo '{"available": false, "stage": "not run", "error": "the nerfacc row was not asked for (METHODS)", "seconds": 0.0, "version": null}' > "$STATUS"
else
stamp "building nerfacc's CUDA extension (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
timeout "${BUILD_TIMEOUT:-300}" "$PY" - "$STATUS" "$DEVICE" > "$OUT/nerfacc_build.log" 2>&1 <<'EOF'
import json, sys
from integration.compare.ngp_baseline import probe_nerfacc
status = probe_nerfacc(sys.argv[2])
print(json.dumps(status.to_dict(), indent=2))
with open(sys.argv[1], "w") as handle:
    json.dump(status.to_dict(), handle)
EOF
code=$?
fi
if [[ ! -f $STATUS ]]; then
  "$PY" - "$STATUS" "$code" "$OUT/nerfacc_build.log" "${BUILD_TIMEOUT:-300}" <<'EOF'
import json, sys
path, code, log, limit = sys.argv[1:]
text = open(log, errors="replace").read()
last = ([line for line in text.splitlines() if line.strip()] or ["(empty log)"])[-1][:300]
reason = f"the JIT build stopped after {limit} s (timeout)" if code == "124" else f"exit {code}"
error = f"{reason}: {last}\n--- end of nerfacc_build.log ---\n{text[-3000:]}"
json.dump({"available": False, "stage": "build", "error": error,
           "seconds": float(limit) if code == "124" else 0.0, "version": None},
          open(path, "w"))
EOF
fi
stamp "nerfacc: $("$PY" - "$STATUS" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
first = ((s["error"] or "").strip().splitlines() or ["-"])[0][:200]
print("available" if s["available"] else f"not available ({s['stage']}): {first}")
EOF
)"

# 3. the scenes, one after another
FIRST=1
run_scene() {  # $1 scene, $2 checkpoints (the last one is the budget)
  local scene=$1 checkpoints=$2 budget need limit
  budget=${checkpoints##* }
  budget=${budget%.*}
  # the first scene runs when one method fits (bench_fit skips the methods that would pass
  # the limit); a later one only when all of them do: training + ~6 evaluations + construction
  local n_methods; n_methods=$(wc -w <<< "$METHODS")
  need=$(( n_methods * (budget + 20) + 30 ))
  [[ $scene == dtu-like ]] && need=$((need + 60))  # scene generation, observed-region scores
  (( FIRST )) && need=$(( budget + 60 ))
  FIRST=0
  if (( $(left) < need )); then
    stamp "skipping $scene: $(left) s left of MAX_SECONDS=$MAX_SECONDS, about $need s needed (run it alone: SCENES=$scene)"
    return
  fi
  limit=$(left)
  stamp "$scene: ${budget} s per method, checkpoints $checkpoints (wall limit ${limit} s)"
  # shellcheck disable=SC2086
  timeout $((limit + 20)) "$PY" -m integration.benchmarks.bench_fit --scene "$scene" \
    --device "$DEVICE" --methods $METHODS --checkpoints $checkpoints --out "$OUT" \
    --nerfacc-status "$STATUS" --max-seconds "$((limit - 10))" "${EXTRA[@]}" \
    > "$OUT/$scene.log" 2>&1
  stamp "$scene exit $?"
  sed -n '/^# Time to quality/,$p' "$OUT/$scene.log" | head -20
  grep -i "error\|failed\|Traceback" "$OUT/$scene.log" | head -5
}
for scene in $SCENES; do
  case $scene in
    cow) run_scene cow "$CHECKPOINTS" ;;
    dtu-like) run_scene dtu-like "$DTU_CHECKPOINTS" ;;
    *) run_scene "$scene" "$CHECKPOINTS" ;;
  esac
done
# 4. where a step of ours goes (PROFILE=0 skips it): host time per phase, CUDA calls per step
if [[ ${PROFILE:-1} == 1 ]] && (( $(left) > 60 )); then
  PROFILE_ARGS=(--scene cow --device "$DEVICE" --out "$OUT")
  [[ ${SMOKE:-0} == 1 ]] && PROFILE_ARGS=(--scene demo --quick --device cpu --steps 2 --warmup 1 --out "$OUT")
  timeout 120 "$PY" -m integration.benchmarks.profile_train_step "${PROFILE_ARGS[@]}" \
    > "$OUT/profile_train_step.log" 2>&1
  stamp "profile exit $?"
  head -20 "$OUT/profile_train_step.md" 2>/dev/null
fi
ls -la "$OUT"
stamp "done"
