#!/usr/bin/env bash
# One GPU: the CUDA tests of the fast paths, then the 4096-ray / 128-step training step of the
# performance target, each mode in a fresh process (time, peak memory, stage profile).
[[ -f .gpubundle/activate ]] && source .gpubundle/activate  # a packed PyTorch3D, where the machine has none
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
OUT=${OUT:-outputs/gpu_runs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
timeout 180 python -m pytest -q -rs --tb=short tests/test_march_graphs.py tests/test_refine_graphs.py tests/test_rays.py 2>&1 | grep -v "^  " | tail -25
for mode in "grid tf32" "grid tf32 graphs" "${@}"; do
  timeout 120 python - "$mode" <<'PY'
import json, sys, torch
from integration.benchmarks.bench_core import _train_case, build_grid, fitted_reference_field, profile_train_step
mode = sys.argv[1]
field = fitted_reference_field(hidden_size=512, steps=400, batch=32768, device="cuda")
grid, _ = build_grid(field, "cuda", 64)
torch.cuda.empty_cache()
for n_steps in (128, 16, 1024, 128):
    torch.cuda.reset_peak_memory_stats()
    r = _train_case(field, "cuda", 4096, n_steps, mode, grid, False)
    print(f"fresh {mode!r} {n_steps} steps: {1000 * r['seconds']:.2f} ms, peak {r['peak_bytes'] / 2**20:.0f} MiB", flush=True)
r = _train_case(field, "cuda", 4096, 128, mode, grid, False, repeats=60)
print(f"fresh {mode!r} 128 steps, 60 repeats: median {1000 * r['seconds']:.2f} ms, min {1000 * r['min_seconds']:.2f} ms", flush=True)
if "graphs" in mode:  # the march's graph replays in one step, each synchronised
    import time
    from dvr_plugin.accel.march_graphs import FixedShapeGridMarch
    replays, original = [], torch.cuda.CUDAGraph.replay
    def timed(graph):
        torch.cuda.synchronize(); start = time.perf_counter(); original(graph); torch.cuda.synchronize()
        replays.append(round(1000 * (time.perf_counter() - start), 3))
    statuses, advance = [], FixedShapeGridMarch.choose_slots
    def chosen(self, n_active, pending):
        slots = advance(self, n_active, pending); statuses.append((n_active, pending, slots)); return slots
    from dvr_plugin.accel.refine_graphs import RefinementGraphs
    hits, bucket = [], RefinementGraphs.bucket
    def counted(self, n):
        hits.append((n, bucket(self, n))); return hits[-1][1]
    torch.cuda.CUDAGraph.replay, FixedShapeGridMarch.choose_slots = timed, chosen
    RefinementGraphs.bucket = counted
    _train_case(field, "cuda", 4096, 128, mode, grid, False, repeats=1)
    torch.cuda.CUDAGraph.replay, FixedShapeGridMarch.choose_slots = original, advance
    RefinementGraphs.bucket = bucket
    print("replays (ms):", replays[-12:], "rounds (active, pending, slots):", statuses[-6:], "hits, bucket:", hits[-1:])
p = profile_train_step(field, "cuda", grid, mode=mode)
print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in p["ms"].items()}))
print(json.dumps(p["operations"]))
PY
done
