#!/usr/bin/env bash
# Round 7 of the bundled model (prepared 2026-12-06 without a GPU): today's recipe G8
# (assets/configs/bundled.toml) with weight averaging, four recipes (train.ema_decay), four side by
# side on one GPU through bench/gpu/bundled_search.sh, which exports each run's best validated
# weights (raw or averaged, whichever validated lower; the sidecar's extra.weights says which) and
# prints, per recipe, the lowest validation loss of the raw weights and of their average.
#   OUT=gpu-out bash bench/gpu/round7_bundled.sh            # one device call, about 8 minutes
# Why these (bench/results/train_cpu.md, "Weight averaging"): on the CPU the average gave nothing
# while validation still fell, and 0.062 nats/token lower than the best raw checkpoint once the
# run overfit (decays 0.98-0.995 within 0.005 of each other, 0.99 best at 600 steps). G8 overfits
# mildly (lowest 0.8306 at step 900 of 1000, 0.8338 at 1000), so:
#   G8E    G8 + train.ema_decay=0.99: the same training (the average never feeds back), so its raw
#          column repeats G8's record (0.8306; this call's run-to-run noise) and its ema column is
#          the pure effect of averaging
#   G8F    G8 + train.ema_decay=0.995: the same, a longer averaging window (G8 itself is not run
#          again: G8E's raw column is that run)
#   L8E    1300 steps + decay 0.995: a longer schedule overfits more (J8: 1200 steps, 0.011 worse),
#          which is where averaging gained most on the CPU, with a longer window for the longer run
#   A8E    stronger jitter (velocity 4, tempo 0.1) + 1200 steps + decay 0.99: jitter was the
#          largest single gain so far (B8 vs A8, -0.012), more data-like variety for a longer run
# The goal is 0.55x the n-gram baseline, about val 0.810 (G8: 0.8306 = 0.564x); afterwards run
# `pianomuse-tui --headless eval` on the returned best model on the CPU, as for round 6.
set -u
exec bash "$(dirname "$0")/bundled_search.sh" \
  G8E="train.ema_decay=0.99" \
  G8F="train.ema_decay=0.995" \
  L8E="train.max_steps=1300 train.ema_decay=0.995" \
  A8E="train.max_steps=1200 data.velocity_jitter=4 data.tempo_jitter=0.1 train.ema_decay=0.99"
