#!/usr/bin/env bash
# One device call that checks and measures everything GPU-side, logs under $OUT (default ./gpu-out):
#   bash bench/gpu_round.sh            (on the lent H200, from the repository root; carry .whl)
# Wheels the GPU image lacks (miditok, symusic, mido, tomli_w, rich, fla-core, rwkv, ...) are
# installed from .whl/ when present. Each step has its own time limit so one hang cannot eat the call.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
# a fresh build folder per call: a build killed earlier leaves a lock that would hang this one
export TORCH_EXTENSIONS_DIR=$(mktemp -d) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/smi.txt"
S=L12-D512-V512-T4096-B8,L12-D768-V2048-T2048-B16
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "$name rc $?"; tail -4 "$OUT/$name.log"
}
step tests 300 python3 -m pytest -q -p no:cacheprovider tests/integration/test_model_gpu.py \
  tests/integration/test_wkv7_cuda.py tests/integration/test_train_gpu.py \
  tests/integration/test_model_strategy_gpu.py
step train_eager 150 python3 bench/train_throughput.py --shapes $S --steps 5 --warmup 2 --out "$OUT/train.md"
step train_compile 240 python3 bench/train_throughput.py --shapes $S --steps 5 --warmup 3 --compile \
  --profile "$OUT/profile.txt" --out "$OUT/train.md"
step train_recompute 150 python3 bench/train_throughput.py --shapes $S --steps 5 --warmup 2 --wkv-recompute --out "$OUT/train.md"
step decode 120 python3 bench/decode_gpu.py --steps 300 --out "$OUT/decode.md"
