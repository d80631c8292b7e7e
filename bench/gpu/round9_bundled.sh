#!/usr/bin/env bash
# Round 9 of the bundled model (2026-12-06, fourth session), after round 7 (bench/results/bundled_search.md):
# L8E (1300 steps, train.ema_decay=0.995) validated lowest, 0.8176 with the average at step 1100
# (raw 0.8337), and its `eval` gave 0.555x the n-gram baseline (goal 0.55) and key correlation
# 0.852 (goal 0.85). Averaging gained most with the longer schedule (L8E -0.016 vs G8E -0.0045),
# so four variants of L8E, side by side on one GPU as before:
#   P8   L8E with decay 0.998: a longer averaging window (about 500 steps)
#   Q8   1500 steps, decay 0.997: a longer schedule still, with a window to match
#   R8   L8E with weight decay 0.5: more regularisation where the raw weights overfit after step 1050
#   S8   L8E with seed 8: the run-to-run noise of the recipe itself (single runs differ by ~0.01)
#   OUT=gpu-out MINUTES=6.2 TRAIN_LIMIT=420 bash bench/gpu/round9_bundled.sh   # one device call, about 7 minutes
set -u
exec bash "$(dirname "$0")/bundled_search.sh" \
  P8="train.max_steps=1300 train.ema_decay=0.998" \
  Q8="train.max_steps=1500 train.ema_decay=0.997" \
  R8="train.max_steps=1300 train.ema_decay=0.995 optim.weight_decay=0.5" \
  S8="train.max_steps=1300 train.ema_decay=0.995 train.seed=8"
