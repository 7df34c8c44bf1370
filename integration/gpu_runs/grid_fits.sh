#!/usr/bin/env bash
# Two GPUs: a fit of the GPU config without (GPU 0) and with (GPU 1) the occupancy grid in
# training (train.occupancy_grid=64), side by side; metrics into $OUT.
# Usage: grid_fits.sh cow|dtu, or grid_fits.sh both (the cow and DTU with the grid, one GPU each)
[[ -f .gpubundle/activate ]] && source .gpubundle/activate  # a packed PyTorch3D, where the machine has none
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
DATA=${DVR_DATA_DIR:-../shared/data}
OUT=${OUT:-outputs/gpu_runs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
D=/tmp/grid_fits; mkdir -p $D
cow() {  # $1 = GPU, $2 = grid resolution
  CUDA_VISIBLE_DEVICES=$1 timeout 500 python -m dvr_plugin.cli fit --config dvr_plugin/configs/cow.yaml \
    --data "$DATA/meshes/cow.obj" --format mesh --out $D/cow_$2 --device cuda --quiet \
    train.occupancy_grid=$2 eval.turntable_frames=0 > $D/cow_$2.log 2>&1
  CUDA_VISIBLE_DEVICES=$1 timeout 60 python -m dvr_plugin.cli eval $D/cow_$2/checkpoint.pt \
    --gt "$DATA/meshes/cow.obj" --out $D/cow_eval_$2 --device cuda --resolution 256 >> $D/cow_$2.log 2>&1
  cp $D/cow_$2/metrics.json $OUT/cow_grid$2_metrics.json; cp $D/cow_eval_$2/metrics.json $OUT/cow_grid$2_eval.json
}
dtu() {
  CUDA_VISIBLE_DEVICES=$1 timeout 500 python -m dvr_plugin.cli fit --config dvr_plugin/configs/dtu.yaml \
    --data "$DATA/dtu_scan24_384/scan24" --format monosdf --out $D/dtu_$2 --device cuda --quiet \
    train.occupancy_grid=$2 eval.turntable_frames=0 > $D/dtu_$2.log 2>&1
  cp $D/dtu_$2/metrics.json $OUT/dtu_grid$2_metrics.json
}
if [[ $1 == both ]]; then cow 0 64 & dtu 1 64 & wait; else $1 0 0 & $1 1 64 & wait; fi
for f in $D/*.log; do echo "== $f"; tail -6 $f; done
