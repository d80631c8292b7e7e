"""Round trip of each tokenizer preset on a performance-like test set.

The set: every piece of a MIDI folder (default: the demo corpus) played by ``engine.data.humanize``
with a fixed seed (rubato, onset jitter of ~20 ms, phrase-long velocity curves, a pedal press per
bar) and stored like a recording (one 120 qpm tempo, 480 ticks per quarter). Each preset encodes
and decodes every piece; notes are matched by pitch and nearest onset and compared in seconds.
Goal: the `performance` preset keeps onset error p95 <= 10 ms.

    .venv/bin/python bench/performance_roundtrip.py [--folder assets/corpus] [--seed 0] [--limit N] [--write DIR]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import symusic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.data.check import find_midi_files
from engine.data.humanize import humanize, piece_seed
from engine.data.tokenizer import TOKENIZER_PRESETS, PianoTokenizer
from engine.eval.roundtrip import RoundTrip, roundtrip
from engine.paths import CORPUS_DIR

GOAL_ONSET_P95_MS = 10.0
# the alternatives the performance preset was chosen from (each re-timed to 120 qpm like it)
_TIMED = {"fixed_tempo": 120.0, "use_tempos": False, "use_time_signatures": False}
CANDIDATES = {
    "TSD 1/16 beat": {"tokenization": "TSD", "beat_res": {"0_4": 16, "4_12": 4}, **_TIMED},
    "TSD 1/64 beat": {"tokenization": "TSD", "beat_res": {"0_2": 64, "2_12": 8}, **_TIMED},
    "REMI 1/32 beat": {"tokenization": "REMI", "beat_res": {"0_4": 32, "4_12": 4}, **_TIMED},
}


def performance_set(folder: Path, seed: int, limit: int | None = None) -> list[tuple[str, symusic.Score]]:
    files = find_midi_files(folder)[:limit] if limit else find_midi_files(folder)
    return [(f.name, humanize(symusic.Score(str(f)), piece_seed(f.name, seed))) for f in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tokenizer presets on a performance-like test set.")
    parser.add_argument("--folder", type=Path, default=CORPUS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N files (a quick look)")
    parser.add_argument("--presets", nargs="+", default=list(TOKENIZER_PRESETS), choices=list(TOKENIZER_PRESETS))
    parser.add_argument("--candidates", action="store_true", help="also measure the settings the performance preset was chosen from")
    parser.add_argument("--write", type=Path, default=None, help="also write the performances as .mid files here")
    args = parser.parse_args(argv)
    pieces = performance_set(args.folder, args.seed, args.limit)
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for name, score in pieces:
            score.dump_midi(str(args.write / name))
    n_notes = sum(len(s.tracks[0].notes) for _, s in pieces)
    n_pedals = sum(len(s.tracks[0].pedals) for _, s in pieces)
    print(f"# performance round trip: {len(pieces)} pieces from {args.folder}, seed {args.seed}: "
          f"{n_notes:,} notes, {n_pedals:,} pedal presses")
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    print("| preset | tokenization | vocab | onset p50 / p95 ms | duration p50 / p95 ms | velocity error mean / p95 "
          "| notes lost | pedal presses kept | tokens/note | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    met = None
    rows = [(p, {"preset": p}) for p in args.presets] + (list(CANDIDATES.items()) if args.candidates else [])
    for preset, config in rows:
        tok = PianoTokenizer.from_config(config)
        began = time.perf_counter()
        total = RoundTrip()
        for _, score in pieces:
            total = total + roundtrip(tok, score)
        s = total.summary()
        print(f"| {preset} | {tok.tokenization} | {tok.vocab_size} | {s['onset_p50_ms']:.1f} / {s['onset_p95_ms']:.1f} "
              f"| {s['duration_p50_ms']:.1f} / {s['duration_p95_ms']:.1f} | {s['velocity_mean']:.1f} / {s['velocity_p95']:.0f} "
              f"| {s['notes_lost_pct']:.1f} % | {s['pedals_kept_pct']:.1f} % | {s['tokens_per_note']:.2f} "
              f"| {time.perf_counter() - began:.1f} |")
        if preset == "performance":
            met = s["onset_p95_ms"] <= GOAL_ONSET_P95_MS
    print()
    if met is not None:
        print(f"goal: performance preset onset p95 <= {GOAL_ONSET_P95_MS:.0f} ms: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
