#!/usr/bin/env bash
# Device call 3 (2026-12-06): GPU tests; the official trainer beside our defaults (compile, fused
# head, recomputing ChannelMix, WKV plan) at the four shapes; the RNN step with the rwkv package
# (its CUDA kernel on) as the peer; two short real runs of the small preset through the headless
# CLI (defaults vs compile and fused head off, same seed). Everything under $OUT/logs.tgz.
set -u
OUT=${OUT:-gpu-out}; L=$(mktemp -d); mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD TORCH_EXTENSIONS_DIR=$(mktemp -d) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$L/smi.txt"
S2=L12-D512-V512-T4096-B8,L12-D768-V2048-T2048-B16
S4=$S2,L12-D768-V65536-T512-B16,L24-D1024-V2048-T2048-B16
pack() { tar -czf "$OUT/logs.tgz" --exclude='*.pth' --exclude='*.pt' --exclude='*.safetensors' -C "$L" . ; }
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$L/$name.log" 2>&1; echo "== $name rc $? $((SECONDS-t0))s"; tail -${TAILN:-4} "$L/$name.log"; pack; }
# the official extensions build (CPU) while the GPU tests run; its tiny timing is thrown away
python3 .peer/official_rwkvlm.py --repo .peer --mode train --shapes L1-D64-V512-T16-B1 --out "$L/prebuild.json" > "$L/prebuild.log" 2>&1 &
TAILN=6 step tests 150 python3 -m pytest -q -p no:cacheprovider tests/integration/test_model_gpu.py tests/integration/test_wkv7_cuda.py tests/integration/test_train_gpu.py tests/integration/test_model_strategy_gpu.py
wait
TAILN=4 step official 90 python3 .peer/official_rwkvlm.py --repo .peer --mode train --shapes $S4 --out "$L/off_train.json"
TAILN=6 step ours 200 python3 bench/train_throughput.py --shapes $S4 --steps 5 --warmup 3 --json "$L/ours.json"
python3 bench/train_vs_official.py --official "$L/off_train.json" --ours "defaults=$L/ours.json" --out "$L/side_by_side.md" | tail -6; pack
TAILN=30 step decode 130 python3 bench/decode_gpu.py --sizes 12x768,6x256 --batches 1,8,32 --steps 200 --warmup 20 --peer-cuda --json "$L/decode.json"
for cfg in defaults plain; do
  extra=(); [ $cfg = plain ] && extra=(--train.compile false --train.fused_head false)
  TAILN=3 step small_$cfg 75 python3 -m pianomuse_tui.cli --headless train --preset small --max-steps 150 --run-dir "$L/runs_$cfg" \
    --train.device cuda --eval.val_every 150 --eval.audition_every 0 "${extra[@]}"
done
TAILN=6 step decode_compiled 60 python3 bench/decode_gpu.py --sizes 12x768 --batches 1 --steps 200 --warmup 20 --no-peer --compiled
pack
