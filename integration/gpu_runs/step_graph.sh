#!/usr/bin/env bash
# One GPU: the training step recorded as one CUDA graph (dvr_plugin.renderer.step_graph,
# GraphedTrainStep). Its CUDA tests (and those of the march and secant graphs it builds on), then
# the 4096-ray training step of the performance targets beside the modes it extends, in one
# process: JSON + markdown under $OUT/bench_step_graph (docs/performance.md).
[[ -f .gpubundle/activate ]] && source .gpubundle/activate  # a packed PyTorch3D, where the machine has none
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
OUT=${OUT:-outputs/gpu_runs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
# TESTS="..." picks the test files; MODES="a,b" the benchmark's modes (bench_core.MODES)
python -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_step_graph.py tests/test_refine_graphs.py \
  tests/test_march_graphs.py} 2>&1 | tail -15
IFS=',' read -ra MODES_ARRAY <<< "${MODES:-dense,grid tf32 graphs,grid tf32 graphs dense,grid tf32 graphs step graph}"
python -m integration.benchmarks.bench_core --device cuda --targets --workloads train \
  --modes "${MODES_ARRAY[@]}" --out "$OUT/bench_step_graph"
