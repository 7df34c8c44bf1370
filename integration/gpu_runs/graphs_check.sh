#!/usr/bin/env bash
# GPU 1: CUDA-graph tests, memory with/without a recorded graph, demo fit with/without graphs.
[[ -f .gpubundle/activate ]] && source .gpubundle/activate  # a packed PyTorch3D, where the machine has none
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
DATA=${DVR_DATA_DIR:-../shared/data}
OUT=${OUT:-outputs/gpu_runs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=1
timeout 120 python -m pytest -q tests/test_refine_graphs.py 2>&1 | tail -3
timeout 150 python - <<'PY'
import torch
from integration.benchmarks.bench_core import _train_case, build_grid, fitted_reference_field
field = fitted_reference_field(hidden_size=512, steps=400, batch=32768, device="cuda")
grid, _ = build_grid(field, "cuda", 64)
for mode in ("grid tf32", "grid tf32 graphs", "grid tf32", "default"):
    r = _train_case(field, "cuda", 4096, 128, mode, grid, False)
    torch.cuda.empty_cache()
    print(f"memcheck {mode}: {1000 * r['seconds']:.1f} ms, peak {r['peak_bytes'] / 2**20:.0f} MiB")
PY
for g in false true; do
  timeout 150 python -m dvr_plugin.cli fit --config demo --out /tmp/demo_graphs_$g --device cuda --quiet \
    train.iterations=800 train.time_budget_s=100 train.cuda_graphs=$g eval.validate_every=800 \
    eval.checkpoint_every=800 eval.turntable_frames=4 eval.mesh_resolution=0 2>&1 | tail -3
done
