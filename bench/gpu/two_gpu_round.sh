#!/usr/bin/env bash
# Issue 17 in one device call on a 2-GPU kind (nvidia-h100-x2 / nvidia-h200-x2), NCCL with NVLink
# multicast left off (the device tool's KINDS.md): carry .whl (miditok, symusic, mido, tomli_w,
# rich, typer, pydantic, ... as in round3.sh) and run `bash bench/gpu/two_gpu_round.sh` from the
# repository root. Everything lands in $OUT/logs.tgz (the device returns at most 8 files).
#  1. bench/ddp_speedup.py: 1 vs 2 GPUs, same global batch, DDP and FSDP, at L12-D512-T4096 and
#     L12-D768-T2048 (goal >= 1.9x for DDP; FSDP's speed-up and peak memory per GPU reported);
#  2. the small preset on the bundled corpus through torchrun --nproc_per_node 2 (tokens/s beside
#     one GPU);
#  3. kill one rank mid-run, then --resume auto on 1 GPU and on 2 (no steps lost past the last
#     checkpoint: compare the step of the last checkpoint with the resumed run's first step);
#  4. the GPU tests on each GPU (CUDA_VISIBLE_DEVICES=0, then 1).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-gpu-out}; L=$(mktemp -d); mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD TORCH_EXTENSIONS_DIR=$(mktemp -d) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader | tee "$L/smi.txt"
pack() { tar -czf "$OUT/logs.tgz" --exclude='*.pth' --exclude='*.pt' -C "$L" . ; }
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout -k 20 "$limit" "$@" > "$L/$name.log" 2>&1; echo "== $name rc $? $((SECONDS-t0))s"; tail -${TAILN:-6} "$L/$name.log"; pack; }
python3 -c "from engine.kernels.wkv7 import cuda as wk; wk._ops()" > "$L/build.log" 2>&1
for shape in L12-D512-V512-T4096 L12-D768-V2048-T2048; do
  for par in ddp fsdp; do
    TAILN=8 step speedup_${shape}_$par 150 python3 bench/ddp_speedup.py --shape $shape --parallel $par --steps 15 --warmup 5 \
      --json "$L/speedup_${shape}_$par.json"
  done
done
CLI="-m pianomuse_tui.cli --headless train --preset small --eval.audition_every 0"
TAILN=4 step small_1gpu 120 python3 $CLI --max-steps 300 --run-dir "$L/small1"
TAILN=4 step small_2gpu 120 torchrun --nproc_per_node 2 $CLI --max-steps 300 --run-dir "$L/small2"
# kill one rank mid-run (after its first checkpoint), then resume on 1 GPU and on 2
torchrun --nproc_per_node 2 $CLI --max-steps 600 --run.checkpoint_every 100 --run-dir "$L/kill" > "$L/kill.log" 2>&1 &
sleep 75; pkill -9 -f "pianomuse_tui.cli.*--run-dir $L/kill" ; wait; pack
TAILN=4 step resume_1gpu 120 python3 $CLI --max-steps 300 --run-dir "$L/kill" --resume auto
TAILN=4 step resume_2gpu 120 torchrun --nproc_per_node 2 $CLI --max-steps 400 --run-dir "$L/kill" --resume auto
for gpu in 0 1; do
  CUDA_VISIBLE_DEVICES=$gpu TAILN=3 step tests_gpu$gpu 200 python3 -m pytest -q -p no:cacheprovider tests/integration/test_model_gpu.py \
    tests/integration/test_wkv7_cuda.py tests/integration/test_train_gpu.py tests/integration/test_model_strategy_gpu.py
done
pack
