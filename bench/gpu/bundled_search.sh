#!/usr/bin/env bash
# Recipes for the bundled model, trained side by side on one GPU (a 6-8 layer, 256-wide model
# leaves most of an H100 idle, so four share it), each exporting its best-validation checkpoint
# through scripts/train_bundled_model.py; the two with the lowest best-validation loss come back
# in 15 MB parts (one returned file's limit is 16 MiB), for the full `eval` on the CPU.
#   [MINUTES=7 TRAIN_LIMIT=480] bash bench/gpu/bundled_search.sh NAME="dotted overrides" [NAME="..." ...]
# The 2026-12-06 rounds (three calls in that day's second session; results in bench/results/bundled_search.md):
#   A8="model.n_layer=8 train.max_steps=800"
#   B8="model.n_layer=8 train.max_steps=1000 data.velocity_jitter=2 data.tempo_jitter=0.05"
#   C8="model.n_layer=8 train.max_steps=1000 optim.weight_decay=0.3 data.ctx_len=2048 train.batch_size=8 train.micro_batch_size=8"
#   D6="train.max_steps=900 data.velocity_jitter=2 data.tempo_jitter=0.05"
#   then E8/F8/G8/H10 and I8/J8/K8/M8 (listed in the results file); G8 is today's bundled.toml.
# Round 7 (G8 beside G8 with weight averaging, and two more): bench/gpu/round7_bundled.sh.
set -u
OUT=${OUT:-gpu-out}; L=$(mktemp -d); mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD TORCH_EXTENSIONS_DIR=$(mktemp -d) PYTHONUNBUFFERED=1
pack() { tar -czf "$OUT/logs.tgz" --exclude='*.pth' --exclude='*.pt' --exclude='*.safetensors' -C "$L" . ; }
python3 -m pianomuse_tui.cli --headless prepare > "$L/prepare.log" 2>&1; tail -1 "$L/prepare.log"
t0=$SECONDS; names=()
for recipe in "$@"; do
  v=${recipe%%=*}; names+=("$v")
  # shellcheck disable=SC2086  # the overrides are words
  timeout -k 15 "${TRAIN_LIMIT:-480}" python3 scripts/train_bundled_model.py --minutes "${MINUTES:-7}" --eval-samples 0 --out "$L/$v" --run-root "$L/runs$v" \
    ${recipe#*=} > "$L/bundled_$v.log" 2>&1 &
done
wait; echo "== trainings done $((SECONDS-t0))s"
for v in "${names[@]}"; do
  loss=$(python3 -c "import json; print(json.load(open('$L/$v/pianomuse-v8-small.json'))['extra']['val_loss'])" 2>/dev/null || echo 9)
  echo "$loss $v"; grep -E "^best|^training" "$L/bundled_$v.log"
  # with train.ema_decay: the lowest validation loss of the trained weights and of their average, apart
  python3 bench/gpu/val_summary.py "$L/$v/pianomuse-v8-small.metrics.jsonl" 2>/dev/null
done | tee "$L/summary.txt"
for v in $(grep -E "^[0-9.]+ [A-Za-z0-9]+$" "$L/summary.txt" | sort -n | head -2 | cut -d' ' -f2); do
  split -b 15M -d "$L/$v/pianomuse-v8-small.pth" "$OUT/$v.pth.part"
done
pack; ls -la "$OUT"
