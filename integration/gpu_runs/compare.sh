#!/usr/bin/env bash
# The renderer comparison of docs/comparison.md on two GPUs, in parallel: the cow on GPU 0,
# DTU scan 24 on GPU 1. Same settings for both scenes: the GPU-size network of the packaged
# configs (hidden 256 x 5 blocks, 6 Fourier frequencies), 1500 iterations of 8192 rays for DVR
# and for the NeRF-style model (64 samples per ray), each capped at 150 s of training; meshes
# at 256^3. Each run takes about 5-6 minutes. Copies 6 files to $OUT.
[[ -f .gpubundle/activate ]] && source .gpubundle/activate  # a packed PyTorch3D, where the machine has none
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
export PYTHONPATH=$PWD:$PYTHONPATH
DATA=${DVR_DATA_DIR:-../shared/data}
OUT=${OUT:-outputs/gpu_runs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
D=/tmp/compare
mkdir -p $D
SHARED=(--device cuda --iterations 1500 --samples 64 --figure-views 3
  'train.step_milestones={0: 16, 500: 32, 1000: 64}' 'optim.lr_milestones=[1000, 1300]'
  train.time_budget_s=150 eval.n_steps=128 eval.mesh_resolution=256 eval.mesh_points=100000)

(CUDA_VISIBLE_DEVICES=0 timeout 500 python -m integration.compare --scene cow \
  --data "$DATA/meshes/cow.obj" --out $D/cow "${SHARED[@]}" \
  train.images_per_batch=8 train.rays_per_image=1024 > $D/cow.log 2>&1; echo "cow exit $?") &
(CUDA_VISIBLE_DEVICES=1 timeout 500 python -m integration.compare --scene dtu \
  --data "$DATA/dtu_scan24_384/scan24" --out $D/dtu "${SHARED[@]}" \
  train.images_per_batch=4 train.rays_per_image=2048 > $D/dtu.log 2>&1; echo "dtu exit $?") &
wait
tail -n 12 $D/cow.log
tail -n 12 $D/dtu.log
for scene in cow dtu; do
  for name in table.md results.json figure.png; do
    cp $D/$scene/$name $OUT/${scene}_$name
  done
done
ls -la $OUT
# then the core benchmark's target cases on GPU 0 (alone)
CUDA_VISIBLE_DEVICES=0 timeout 200 python -m integration.benchmarks.bench_core --device cuda \
  --targets --profile --out $OUT/bench 2>&1 | grep "^| \(render\|train\)" | head -40
