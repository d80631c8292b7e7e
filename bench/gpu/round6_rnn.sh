#!/usr/bin/env bash
# Device call 6 (issue 12): the RNN step with fewer kernels per layer (the four low-rank
# projections as two batched products, one lerp for the token-shift mixes, residual adds fused
# into the output products, DeepEmbed rows in one lookup). In order, each step under its own
# `timeout -k`, the whole call under 8 minutes:
#   1. the GPU model tests (tests/integration/test_model*gpu*.py), while the rwkv package's CUDA
#      kernel builds on the CPU into a fresh folder;
#   2. CUDA kernels per step counted with torch.profiler (bench/rnn_step_ops.py), this tree and .old;
#   3. bench/decode_gpu.py at L12-D768 and L8-D256 (the bundled model's size since its retraining), batches 1, 8, 32:
#      the graphed step (the default), the compiled + graphed step (batch 1) and the rwkv package
#      with its CUDA kernel, one JSON;
#   4. the step before this change (graphed, the engine in .old, timed by this bench) when .old exists;
#   5. the trainer's GPU test, if time is left.
# Optional before/after tree, made here before the call (and carried, with .whl):
#   echo /.old/ >> .git/info/exclude; mkdir -p .old && git archive <commit before> engine csrc | tar -x -C .old
set -u
OUT=${OUT:-gpu-out}; L=$(mktemp -d); mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD TORCH_EXTENSIONS_DIR=$(mktemp -d) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$L/smi.txt"
git_rev=$(cat .git/HEAD 2>/dev/null || echo "no .git"); echo "tree: $git_rev" >> "$L/smi.txt"
pack() { tar -czf "$OUT/logs.tgz" --exclude='*.pth' --exclude='*.pt' --exclude='*.safetensors' -C "$L" . ; }
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$L/$name.log" 2>&1; echo "== $name rc $? $((SECONDS-t0))s"; tail -${TAILN:-4} "$L/$name.log"; pack; }
left() { echo $(( 465 - SECONDS )); }  # seconds left of the call's budget (8 min less packing)
cap() { local l; l=$(left); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 10 ] && l=10; echo "$l"; }  # min(left, $1), at least 10

# 1. the peer's CUDA kernel builds on the CPU (a fresh folder: never an earlier run's stale lock)
#    while the GPU model tests run
PEER_BUILD=$(mktemp -d)
( RWKV_V7_ON=1 RWKV_JIT_ON=1 RWKV_CUDA_ON=1 TORCH_EXTENSIONS_DIR=$PEER_BUILD timeout -k 5 200 \
    python3 -c "import rwkv.model" > "$L/peer_build.log" 2>&1; echo "rc $?" >> "$L/peer_build.log" ) &
build_pid=$!
TAILN=8 step tests_model 150 python3 -m pytest -q -p no:cacheprovider tests/integration/test_model_gpu.py tests/integration/test_model_strategy_gpu.py
wait $build_pid; echo "== peer build: $(tail -1 "$L/peer_build.log")"
grep -q "^rc 0$" "$L/peer_build.log" || PEER_BUILD=$(mktemp -d)  # a killed build may leave its lock: build afresh

# 2. kernels per step, as the GPU launches them
old=(); [ -d .old/engine ] && old=(--old .old)
TAILN=8 step kernels 40 python3 bench/rnn_step_ops.py --device cuda --sizes 12x768,8x256 "${old[@]}" --json "$L/kernels.json"

# 3. the decode bench, one JSON
TAILN=20 step decode "$(cap 200)" python3 bench/decode_gpu.py --sizes 12x768,8x256 --batches 1,8,32 \
  --modes graphed --compiled --compiled-batches 1 --steps 300 --warmup 30 --peer-cuda --peer-build-dir "$PEER_BUILD" \
  --peer-steps 200 --json "$L/decode.json"

# 4. the step before this change, same shapes, graphed: this bench over the engine in .old
if [ -d .old/engine ] && [ "$(left)" -gt 30 ]; then
  TAILN=8 step decode_old "$(cap 60)" python3 bench/decode_gpu.py --engine .old --label old \
    --sizes 12x768,8x256 --batches 1,8,32 --steps 300 --warmup 30 --no-peer --modes graphed --json "$L/decode_old.json"
fi

# 5. the trainer's GPU test (56 s alone on an H100), if it still fits
if [ "$(left)" -gt 90 ]; then
  TAILN=3 step tests_train "$(cap 120)" python3 -m pytest -q -p no:cacheprovider tests/integration/test_train_gpu.py
fi
echo "== total ${SECONDS}s"
pack
