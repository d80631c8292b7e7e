"""Round-trip fidelity of PianoTokenizer on the demo corpus: encode, decode, match the notes.

A note is kept when the decoded piece has an unmatched note of the same pitch whose onset and
duration are each within one quantization step of the original's (the step is the tokenizer's
grid at that duration: 1/8 beat below 4 beats, 1/4 beat from 4 to 12 beats; a beat is the time
signature's denominator). Goal: >= 99 % of notes kept.

    .venv/bin/python bench/tokenizer_roundtrip.py [--folder assets/corpus] [--tokenizations REMI TSD]
"""
from __future__ import annotations

import argparse
import bisect
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import symusic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.data.check import find_midi_files
from engine.data.tokenizer import PianoTokenizer, extract_piano
from engine.paths import CORPUS_DIR


def _grid(tok: PianoTokenizer) -> list[tuple[float, float, float]]:
    """[(from beats, to beats, step in beats)] of MidiTok's duration/position grid."""
    beat_res = tok.miditok.config.beat_res
    return sorted((float(a), float(b), 1.0 / res) for (a, b), res in beat_res.items())


def _step_beats(grid, beats: float) -> float:
    for low, high, step in grid:
        if beats < high:
            return step
    return grid[-1][2]


def roundtrip(tok: PianoTokenizer, path: Path) -> dict[str, int]:
    score = symusic.Score(str(path))
    original = extract_piano(score, tok.piano_policy).resample(tok.time_division)
    decoded = tok.decode(tok.encode_score(score))
    tpq = tok.time_division
    denominators = [ts.denominator for ts in original.time_signatures] or [4]
    beat_ticks = max(tpq * 4 / d for d in denominators)  # the coarsest beat of the piece
    grid = _grid(tok)
    on_step = grid[0][2] * beat_ticks
    notes = original.tracks[0].notes.numpy() if original.tracks else {"time": [], "duration": [], "pitch": []}
    back = decoded.tracks[0].notes.numpy() if decoded.tracks else {"time": [], "duration": [], "pitch": []}
    by_pitch: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for t, d, p in zip(back["time"].tolist(), back["duration"].tolist(), back["pitch"].tolist()):
        by_pitch[p].append((t, d))
    for p in by_pitch:
        by_pitch[p].sort()
    used: dict[int, set[int]] = defaultdict(set)
    kept = onset_ok = 0
    for t, d, p in zip(notes["time"].tolist(), notes["duration"].tolist(), notes["pitch"].tolist()):
        candidates = by_pitch.get(p, [])
        dur_step = _step_beats(grid, d / beat_ticks) * beat_ticks
        i = bisect.bisect_left(candidates, (t - on_step, -1))
        found_onset = False
        while i < len(candidates) and candidates[i][0] <= t + on_step:
            if i not in used[p]:
                found_onset = True
                if abs(candidates[i][1] - d) <= dur_step:
                    used[p].add(i)
                    kept += 1
                    break
            i += 1
        onset_ok += found_onset
    return {"notes": len(notes["time"]), "decoded": len(back["time"]), "kept": kept, "onset_ok": onset_ok}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tokenizer round-trip fidelity on a MIDI folder.")
    parser.add_argument("--folder", type=Path, default=CORPUS_DIR)
    parser.add_argument("--tokenizations", nargs="+", default=["REMI", "TSD", "MIDILike"])
    args = parser.parse_args(argv)
    files = find_midi_files(args.folder)
    print(f"# tokenizer round trip: {len(files)} files from {args.folder}")
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    print("| tokenization | files | notes | kept (pitch exact, onset+duration within a step) | onset within a step | worst file (kept) | encode+decode s |")
    print("|---|---|---|---|---|---|---|")
    worst_all = 100.0
    for name in args.tokenizations:
        tok = PianoTokenizer.from_config({"tokenization": name})
        totals = defaultdict(int)
        worst = (101.0, "")
        began = time.perf_counter()
        for path in files:
            r = roundtrip(tok, path)
            for k, v in r.items():
                totals[k] += v
            if r["notes"]:
                worst = min(worst, (100.0 * r["kept"] / r["notes"], path.name))
        elapsed = time.perf_counter() - began
        kept = 100.0 * totals["kept"] / max(1, totals["notes"])
        onset = 100.0 * totals["onset_ok"] / max(1, totals["notes"])
        worst_all = min(worst_all, kept)
        print(f"| {name} | {len(files)} | {totals['notes']:,} | {kept:.2f} % | {onset:.2f} % | {worst[1]} ({worst[0]:.1f} %) | {elapsed:.1f} |")
    print()
    print(f"goal >= 99 % kept: {'met' if worst_all >= 99.0 else 'NOT met'} (lowest {worst_all:.2f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
