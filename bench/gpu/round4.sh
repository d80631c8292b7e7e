#!/usr/bin/env bash
# Device call 4 (2026-12-06): the trainer's GPU test alone (call 3's ran into that call's time
# limit), two short real runs of the small preset through the headless CLI (defaults vs compile
# and fused head off, same seed), and the fused head's chunk size at V=65536 (ours vs ours).
set -u
OUT=${OUT:-gpu-out}; L=$(mktemp -d); mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD TORCH_EXTENSIONS_DIR=$(mktemp -d) PYTHONUNBUFFERED=1
pack() { tar -czf "$OUT/logs.tgz" --exclude='*.pth' --exclude='*.pt' --exclude='*.safetensors' -C "$L" . ; }
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$L/$name.log" 2>&1; echo "== $name rc $? $((SECONDS-t0))s"; tail -${TAILN:-4} "$L/$name.log"; pack; }
TAILN=3 step test_train 100 python3 -m pytest -q -p no:cacheprovider tests/integration/test_train_gpu.py
for cfg in defaults plain; do
  extra=(); [ $cfg = plain ] && extra=(--train.compile false --train.fused_head false)
  TAILN=4 step small_$cfg 80 python3 -m pianomuse_tui.cli --headless train --preset small --max-steps 150 --run-dir "$L/runs_$cfg" \
    --train.device cuda --eval.val_every 150 --eval.audition_every 0 "${extra[@]}"
done
for rows in 256 2048; do
  PIANOMUSE_HEAD_CHUNK_ROWS=$rows TAILN=2 step v65k_rows$rows 45 python3 bench/train_throughput.py --shapes L12-D768-V65536-T512-B16 --steps 4 --warmup 2
done
