#!/usr/bin/env bash
# Device call 5 (2026-12-06, second session): the bundled model retrained on the grown corpus
# (569 pieces, 1.26M tokens), two sizes side by side on one GPU (6x256 as today, 8x256), each
# exporting its best-validation checkpoint; evaluation runs afterwards on the CPU. Beside them,
# issue 11's goal 3: the small preset, 150 steps, same seed, with the CUDA defaults (compile and
# fused head) and with both off, validation loss compared.
set -u
OUT=${OUT:-gpu-out}; L=$(mktemp -d); mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD TORCH_EXTENSIONS_DIR=$(mktemp -d) PYTHONUNBUFFERED=1
pack() { tar -czf "$OUT/logs.tgz" --exclude='*.pth' --exclude='*.pt' --exclude='*.safetensors' -C "$L" . ; }
nvidia-smi --query-gpu=name,memory.total --format=csv > "$L/gpu.txt"
python3 -m pianomuse_tui.cli --headless prepare > "$L/prepare.log" 2>&1; tail -1 "$L/prepare.log"
t0=$SECONDS
timeout -k 15 540 python3 scripts/train_bundled_model.py --minutes 6.6 --eval-samples 0 --out "$L/A" --run-root "$L/runsA" \
  train.max_steps=1600 > "$L/bundled_A.log" 2>&1 &
timeout -k 15 540 python3 scripts/train_bundled_model.py --minutes 6.6 --eval-samples 0 --out "$L/B" --run-root "$L/runsB" \
  train.max_steps=1300 model.n_layer=8 > "$L/bundled_B.log" 2>&1 &
for cfg in defaults plain; do
  extra=(); [ $cfg = plain ] && extra=(--train.compile false --train.fused_head false)
  timeout -k 15 300 python3 -m pianomuse_tui.cli --headless train --preset small --max-steps 150 --run-dir "$L/runs_$cfg" \
    --train.device cuda --eval.val_every 150 --eval.audition_every 0 "${extra[@]}" > "$L/small_$cfg.log" 2>&1
  echo "== small_$cfg rc $? $((SECONDS-t0))s"; grep -E "val" "$L/small_$cfg.log" | tail -3; pack
done
wait
echo "== bundled done $((SECONDS-t0))s"
for v in A B; do tail -25 "$L/bundled_$v.log"; cp "$L/$v/pianomuse-v8-small.pth" "$OUT/$v.pth" 2>/dev/null; done
nvidia-smi >> "$L/gpu.txt"; pack; ls -la "$OUT"
