#!/usr/bin/env bash
# Distributed fitting throughput on a 2-GPU machine: 1 GPU against 2 GPUs (DDP through torchrun)
# on the demo scene built in code (48 views at 128x128), hidden 256 x 5 blocks, global batches of
# 8 and 16 images x 2048 rays, 32 marching steps. Runs from the repository root in about 2 minutes
# and copies 3 files into $OUT: bench_distributed.md, bench_distributed.json, ddp_bench_log.txt.
[[ -f .gpubundle/activate ]] && source .gpubundle/activate  # a packed PyTorch3D, where the machine has none
[[ -d .gpudeps/site ]] && export PYTHONPATH=$PWD/.gpudeps/site:${PYTHONPATH:-}  # omegaconf, where the image has none (make gpu-deps)
export PYTHONPATH=$PWD:$PYTHONPATH
DATA=${DVR_DATA_DIR:-../shared/data}
OUT=${OUT:-outputs/gpu_runs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
D=/tmp/ddp_bench; rm -rf $D; mkdir -p $D
timeout -k 10 150 python3 -m integration.benchmarks.bench_distributed --device cuda \
  --world-sizes 1,2 --batches 8,16 --rays 2048 --n-steps 32 --warmup 20 --iterations 60 \
  --max-seconds 10 --launch-timeout 70 --out $D > $D/ddp_bench_log.txt 2>&1
echo "exit code $?"; tail -n 25 $D/ddp_bench_log.txt
cp $D/bench_distributed.md $D/bench_distributed.json $OUT/ 2>/dev/null
tail -c 60000 $D/ddp_bench_log.txt > $OUT/ddp_bench_log.txt
