#!/usr/bin/env bash
# Fit the cow (GPU 0) and DTU scan 24 (GPU 1) in parallel on the GPU configs; keep 8 files.
[[ -f .gpubundle/activate ]] && source .gpubundle/activate  # a packed PyTorch3D, where the machine has none
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
DATA=${DVR_DATA_DIR:-../shared/data}
OUT=${OUT:-outputs/gpu_runs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
D=/tmp/fits; mkdir -p $D
(CUDA_VISIBLE_DEVICES=0 timeout 540 python -m dvr_plugin.cli fit --config dvr_plugin/configs/cow.yaml \
  --data "$DATA/meshes/cow.obj" --format mesh --out $D/cow --device cuda --quiet \
  train.iterations=5000 train.time_budget_s=370 train.rays_per_image=1024 'train.step_milestones={0: 16, 1500: 32, 3000: 64}' \
  'optim.lr_milestones=[3500, 4500]' eval.validate_every=2500 eval.checkpoint_every=1000 > $D/cow.log 2>&1
 CUDA_VISIBLE_DEVICES=0 timeout 60 python -m dvr_plugin.cli eval $D/cow/checkpoint.pt --gt "$DATA/meshes/cow.obj" \
  --out $D/cow_eval --device cuda --resolution 256 >> $D/cow.log 2>&1) &
(CUDA_VISIBLE_DEVICES=1 timeout 540 python -m dvr_plugin.cli fit --config dvr_plugin/configs/dtu.yaml \
  --data "$DATA/dtu_scan24_384/scan24" --format monosdf --out $D/dtu --device cuda --quiet \
  train.iterations=5000 train.time_budget_s=400 'train.step_milestones={0: 16, 1500: 32, 3000: 64}' \
  'optim.lr_milestones=[3500, 4500]' eval.validate_every=2500 eval.checkpoint_every=1000 > $D/dtu.log 2>&1) &
wait
tail -20 $D/cow.log; tail -12 $D/dtu.log
cp $D/cow/metrics.json $OUT/cow_metrics.json; cp $D/cow/comparison.png $OUT/cow_comparison.png
cp $D/cow/curves.png $OUT/cow_curves.png; cp $D/cow_eval/metrics.json $OUT/cow_eval.json
cp $D/cow/turntable.gif $OUT/cow_turntable.gif
cp $D/dtu/metrics.json $OUT/dtu_metrics.json; cp $D/dtu/comparison.png $OUT/dtu_comparison.png
cp $D/dtu/turntable.gif $OUT/dtu_turntable.gif
