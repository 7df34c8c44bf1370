#!/usr/bin/env bash
# Fit DTU scan 24 (a brick building model) with DVR from 49 real photographs with object masks.
#
# Data: ../shared/data/dtu_scan24_384/scan24, the MonoSDF 384x384 crop of DTU (images
# NNNNNN_rgb.png, masks derived_mask_384/NNN.png, cameras.npz with world_mat_i / scale_mat_i at
# the original 1600x1200 resolution; the loader adjusts the intrinsics for crop and resize).
# The scale_mat unit sphere is mapped to a sphere of radius 0.5, so the object lies inside DVR's
# unit cube. Every 8th view is held out.
# Settings: dvr_plugin/configs/dtu.yaml, the real-capture recipe (docs/real_data.md): a
# signed-distance field started as a sphere, eikonal and soft mask terms, a view-dependent colour
# head, Fourier features faded in; DVR's 2048 pixels in 2x2 patches with the image-gradient and
# normal terms; images shrunk 4x (96x96) on a CPU, 2x on a GPU. Extra arguments are overrides.
# For the IDR / NeuS layout (cameras_sphere.npz, image/, mask/) use instead:
#   DATA=../shared/data/dtu_scan24_neus_400/scan24 FORMAT=dtu examples/fit_dtu.sh data.downscale=2
#
# Writes to outputs/dtu24 (override with OUT=...); read `psnr_masked` in metrics.json (the real
# background around the object is not modelled). RESUME=1 continues an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/dtu24}
DATA=${DATA:-../shared/data/dtu_scan24_384/scan24}
FORMAT=${FORMAT:-monosdf}
if [[ ! -d $DATA ]]; then
  echo "DTU scan not found at $DATA; set DATA=/path/to/scan24" >&2
  exit 1
fi
resume=()
if [[ ${RESUME:-0} == 1 ]]; then resume=(--resume); fi
"$PY" -m dvr_plugin.cli fit --config dvr_plugin/configs/dtu.yaml --data "$DATA" \
  --format "$FORMAT" --out "$OUT" "${resume[@]}" "$@"
