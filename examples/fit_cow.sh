#!/usr/bin/env bash
# Fit the textured cow with DVR from 50 rendered views (128x128), images and masks only.
#
# Data: ../shared/data/meshes/cow.obj (Keenan Crane's "spot", public domain), read in place.
# The mesh is normalised into the unit cube and rendered with PyTorch3D's MeshRenderer from 50
# cameras spread over a sphere (albedo shading); every 8th view is held out for evaluation.
# Settings: dvr_plugin/configs/cow.yaml (a 128-wide network with Fourier features, 2 images x
# 1024 pixels per step, 6000 steps; larger on a GPU). Extra arguments are config overrides,
# e.g. `examples/fit_cow.sh train.iterations=2000` or `train.time_budget_s=1800`.
#
# Writes to outputs/cow (override with OUT=...): checkpoint.pt, comparison.png (held-out views:
# ground truth | render | depth | normals), turntable.gif, mesh.ply, curves.png, the CSV logs
# and metrics.json (held-out mask IoU / PSNR / SSIM, Chamfer-L1 and F-score against the mesh).
# Interrupted? Run again with RESUME=1 to continue exactly where the last checkpoint left off.
#
# Time: about an hour on a 2-core CPU (docs/training.md has measured numbers); a few minutes on
# a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/cow}
DATA=${DATA:-../shared/data/meshes/cow.obj}
if [[ ! -f $DATA ]]; then
  echo "cow mesh not found at $DATA; set DATA=/path/to/cow.obj" >&2
  exit 1
fi
resume=()
if [[ ${RESUME:-0} == 1 ]]; then resume=(--resume); fi
"$PY" -m dvr_plugin.cli fit --config dvr_plugin/configs/cow.yaml --data "$DATA" --format mesh \
  --out "$OUT" "${resume[@]}" "$@"
# Render a larger turntable from the checkpoint afterwards:
#   .venv/bin/python -m dvr_plugin.cli render "$OUT/checkpoint.pt" --out "$OUT/render" \
#       --image-size 256 --frames 60
