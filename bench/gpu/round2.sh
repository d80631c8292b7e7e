#!/usr/bin/env bash
# Device call 2 (2026-12-06): the official trainer and kernels beside ours in one call: WKV kernel
# variants (82 vs 182: two backward blocks per multiprocessor), and full training steps with the
# new defaults (compile + fused head on CUDA), per WKV variant. Logs under $OUT.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD TORCH_EXTENSIONS_DIR=$(mktemp -d) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/smi.txt"
S2=L12-D512-V512-T4096-B8,L12-D768-V2048-T2048-B16
S4=$S2,L12-D768-V65536-T512-B16,L24-D1024-V2048-T2048-B16
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "== $name rc $? $((SECONDS-t0))s"; tail -${TAILN:-6} "$OUT/$name.log"; }
python3 -c "from engine.kernels.wkv7 import cuda as wk; wk._ops()" > "$OUT/build_ours.log" 2>&1 &
TAILN=5 step official 150 python3 .peer/official_rwkvlm.py --repo .peer --mode train --shapes $S4 --out "$OUT/off_train.json"
wait
TAILN=3 step off_wkv_v3 60 python3 .peer/official_rwkvlm.py --repo .peer --mode wkv --kernel @rwkv3 --out "$OUT/off_wkv_v3.json"
TAILN=3 step off_wkv 60 python3 .peer/official_rwkvlm.py --repo .peer --mode wkv --kernel '' --out "$OUT/off_wkv.json"
TAILN=14 step ours_wkv 100 python3 bench/wkv7_cuda.py --variants --no-fla --reps-ms 200
TAILN=4 step ours_train_82 110 python3 bench/train_throughput.py --shapes $S2 --steps 5 --warmup 3 --json "$OUT/ours_82.json"
PIANOMUSE_WKV7_VARIANT=182 TAILN=4 step ours_train_182 110 python3 bench/train_throughput.py --shapes $S2 --steps 5 --warmup 3 --json "$OUT/ours_182.json"
python3 bench/train_vs_official.py --official "$OUT/off_train.json" --ours "v82=$OUT/ours_82.json" "v182=$OUT/ours_182.json" --out "$OUT/side_by_side.md" | tail -5
