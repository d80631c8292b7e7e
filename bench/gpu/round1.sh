#!/usr/bin/env bash
# Device call 1 (2026-12-06): baseline beside the official trainer, a kernel profile of our step,
# the GPU tests, and a probe of fla-core. Logs under $OUT.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD TORCH_EXTENSIONS_DIR=$(mktemp -d) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv > "$OUT/smi.txt"; cat "$OUT/smi.txt"
S=L12-D512-V512-T4096-B8,L12-D768-V2048-T2048-B16
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "== $name rc $? $((SECONDS-t0))s"; tail -${TAILN:-6} "$OUT/$name.log"; }
# build ours in the background while the official extensions build
python3 -c "from engine.kernels.wkv7 import cuda as wk; wk._ops()" > "$OUT/build_ours.log" 2>&1 &
TAILN=4 step official 170 python3 .peer/official_rwkvlm.py --repo .peer --mode train --shapes $S --out "$OUT/off_train.json"
wait
TAILN=8 step ours_compile 200 python3 bench/train_throughput.py --shapes $S --steps 5 --warmup 3 --compile --profile "$OUT/profile.txt" --out "$OUT/train.md"
step tests 150 python3 -m pytest -q -x -p no:cacheprovider tests/integration/test_model_gpu.py tests/integration/test_wkv7_cuda.py tests/integration/test_train_gpu.py tests/integration/test_model_strategy_gpu.py
step fla 60 python3 bench/gpu/fla_probe.py
