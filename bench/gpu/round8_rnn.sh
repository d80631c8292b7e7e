#!/usr/bin/env bash
# Device call 8 (issue 12): the GPU RNN step's levers, each alone and all together, in one call:
#   triton   each layer's element-wise work as five Triton kernels (engine.kernels.rnn_triton: LN +
#            token-shift mixes twice, the low-rank activations, the TimeMix tail from the decay
#            to the gate with the WKV update, relu^2); ~12 kernels a layer instead of ~40; on by
#            default on CUDA where Triton imports; --no-triton turns it off
#   sampler  the draw on the GPU in its own captured graph, only the ids to the host
#            (engine.generate.sampling; the default on CUDA; --sampler host is the old way)
#   bf16     the RNN weight cache in bf16 over fp32 weights, the WKV state fp32 (then opt-in:
#            model.rnn_weight_dtype; --rnn-dtype bf16)
#   OUT=gpu-out bash bench/gpu/round8_rnn.sh        # one device call, under 8 minutes; carry .whl
# Run on 2026-12-06, 15:12-15:18 UTC, one H100 80GB HBM3, the tree of commit ab15d88; recorded in
# bench/results/generate.md (raw JSON: bench/results/raw/gpu-2026-12-06-round8-*.json). "all"
# (Triton + GPU sampler + bf16 cache) was the fastest row at every size and batch: p99 0.849 ms at
# L12-D768 and 0.516 ms at L8-D256, batch 1. So all three are now the CUDA defaults (the bf16 cache
# through model.rnn_weight_dtype = "auto", where the Triton step runs). The rows that measured the
# fp32 cache (before, default, triton, sampler, compiled) say --rnn-dtype fp32, so a re-run times
# what this call timed; "default" is the default of that day.
# In order, each step under its own `timeout -k`, logs packed into $OUT/logs.tgz after each:
#   1. the new paths' GPU tests (the Triton step, the GPU sampler and the bf16 cache against their
#      references, the graphed step), while the rwkv package's CUDA kernel builds on the CPU;
#   2. torch.profiler kernel tables of one step + draw at L12-D768 batch 1, per lever
#      (bench/rnn_step_profile.py: graph replay and eager; name, launches, GPU us);
#   3. bench/decode_gpu.py at L12-D768 and L8-D256, batches 1, 8, 32, graphed, p50/p99 with the
#      draw: the step before the levers (PyTorch tail, host sampler) with the rwkv package peer
#      (CUDA kernel on), then the new default (triton + sampler), each lever alone, and all three;
#   4. the rest of the GPU model tests, then the compiled + graphed step at batch 1, if time is left.
set -u
OUT=${OUT:-gpu-out}; L=$(mktemp -d); mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD TORCH_EXTENSIONS_DIR=$(mktemp -d) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$L/smi.txt"
git_rev=$(cat .git/HEAD 2>/dev/null || echo "no .git"); echo "tree: $git_rev" >> "$L/smi.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" 2>&1 | tee -a "$L/smi.txt"
pack() { tar -czf "$OUT/logs.tgz" --exclude='*.pth' --exclude='*.pt' --exclude='*.safetensors' -C "$L" . ; }
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$L/$name.log" 2>&1; echo "== $name rc $? $((SECONDS-t0))s"; tail -${TAILN:-4} "$L/$name.log"; pack; }
left() { echo $(( 465 - SECONDS )); }  # seconds left of the call's budget (8 min less packing)
cap() { local l; l=$(left); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 10 ] && l=10; echo "$l"; }  # min(left, $1), at least 10

# 1. the peer's CUDA kernel builds on the CPU (a fresh folder) while the new paths' GPU tests run
PEER_BUILD=$(mktemp -d)
( RWKV_V7_ON=1 RWKV_JIT_ON=1 RWKV_CUDA_ON=1 TORCH_EXTENSIONS_DIR=$PEER_BUILD timeout -k 5 200 \
    python3 -c "import rwkv.model" > "$L/peer_build.log" 2>&1; echo "rc $?" >> "$L/peer_build.log" ) &
build_pid=$!
TAILN=12 step tests_new 110 python3 -m pytest -q -p no:cacheprovider tests/integration/test_model_gpu.py \
  -k "triton_step or sampler or bf16_weight_cache or graphed_step_equals_eager_step"

# 2. the kernels of one step + draw, per lever (L12-D768, batch 1)
TAILN=8 step profile "$(cap 70)" python3 bench/rnn_step_profile.py --size 12x768 --batch 1 --json "$L/profile.json"
wait $build_pid; echo "== peer build: $(tail -1 "$L/peer_build.log")"
grep -q "^rc 0$" "$L/peer_build.log" || PEER_BUILD=$(mktemp -d)  # a killed build may leave its lock: build afresh

# 3. the decode bench, one JSON per configuration (p50/p99 per step, the draw included)
common=(--sizes 12x768,8x256 --batches 1,8,32 --modes graphed --steps 200 --warmup 20)
TAILN=14 step decode_before "$(cap 110)" python3 bench/decode_gpu.py "${common[@]}" --no-triton --sampler host \
  --rnn-dtype fp32 --label before --peer-cuda --peer-build-dir "$PEER_BUILD" --peer-steps 100 --json "$L/decode_before.json"
TAILN=7 step decode_default "$(cap 45)" python3 bench/decode_gpu.py "${common[@]}" --no-peer --rnn-dtype fp32 --label default --json "$L/decode_default.json"
TAILN=7 step decode_triton "$(cap 45)" python3 bench/decode_gpu.py "${common[@]}" --no-peer --sampler host --rnn-dtype fp32 --label triton --json "$L/decode_triton.json"
TAILN=7 step decode_sampler "$(cap 45)" python3 bench/decode_gpu.py "${common[@]}" --no-peer --no-triton --rnn-dtype fp32 --label sampler --json "$L/decode_sampler.json"
TAILN=7 step decode_all "$(cap 45)" python3 bench/decode_gpu.py "${common[@]}" --no-peer --rnn-dtype bf16 --label all --json "$L/decode_all.json"
if [ "$(left)" -gt 40 ]; then
  TAILN=7 step decode_bf16 "$(cap 45)" python3 bench/decode_gpu.py "${common[@]}" --no-peer --no-triton --sampler host \
    --rnn-dtype bf16 --label bf16 --json "$L/decode_bf16.json"
fi

# 4. the rest of the GPU model tests (the compiled paths compile for tens of seconds), then the
#    compiled + graphed step over the new default at batch 1, while time is left
if [ "$(left)" -gt 40 ]; then
  TAILN=12 step tests_rest "$(cap 150)" python3 -m pytest -q -p no:cacheprovider \
    tests/integration/test_model_gpu.py tests/integration/test_model_strategy_gpu.py \
    -k "not (triton_step or sampler or bf16_weight_cache or graphed_step_equals_eager_step)"
fi
if [ "$(left)" -gt 70 ]; then
  TAILN=3 step decode_compiled "$(cap 90)" python3 bench/decode_gpu.py --sizes 12x768,8x256 --batches 1 --modes compiled \
    --steps 200 --warmup 20 --no-peer --rnn-dtype fp32 --label compiled --json "$L/decode_compiled.json"
fi
echo "== total ${SECONDS}s"
pack
