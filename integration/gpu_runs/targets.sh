#!/usr/bin/env bash
# One GPU: the performance-target cases of the core benchmark (256x256 render, 4096-ray training
# step at 16 / 128 / 1024 steps) with the stage profile; JSON + markdown under $OUT/bench_targets.
[[ -f .gpubundle/activate ]] && source .gpubundle/activate  # a packed PyTorch3D, where the machine has none
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
OUT=${OUT:-outputs/gpu_runs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
python -m integration.benchmarks.bench_core --device cuda --targets --profile --out "$OUT/bench_targets"
