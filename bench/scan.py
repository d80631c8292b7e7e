"""Throughput of `check` and `prepare` against MidiTok's own single-process tokenization.

Same files, same run: MidiTok REMI (the same config) encoding every file in one process is the
peer; `scan` (check) and `prepare` run with 1 and 2 worker processes; a re-prepare of an
unchanged folder shows the incremental path. The check and prepare times include starting the
workers (the forkserver is warmed once first, as a second scan in one process would find it).

    .venv/bin/python bench/scan.py [--folder assets/corpus] [--workers 1 2] [--copies 4]

With --copies, every copy after the first holds duplicates: they are checked and tokenized
like any file (and then left out of the store), so the work per file is the same.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.data.check import find_midi_files, scan
from engine.data.store import TokenStore, prepare
from engine.data.tokenizer import PianoTokenizer
from engine.paths import CORPUS_DIR


def miditok_alone(tok: PianoTokenizer, files: list[Path]) -> tuple[float, float, int]:
    """MidiTok's own encode of each file path, one process: (wall s, CPU s, tokens of its per-track sequences)."""
    began, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    for path in files:
        seqs = tok.miditok.encode(path)
        tokens += sum(len(s.ids) for s in (seqs if isinstance(seqs, list) else [seqs]))
    return time.perf_counter() - began, time.process_time() - cpu, tokens


def _cpu(records) -> float:
    """CPU seconds the workers spent on the files (each worker times its own files)."""
    return sum(r.stats.cpu_s or 0.0 for r in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check/prepare throughput vs MidiTok alone.")
    parser.add_argument("--folder", type=Path, default=CORPUS_DIR)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--copies", type=int, default=1, help="scan the folder this many times over (links), to outweigh worker start-up")
    args = parser.parse_args(argv)
    links = None
    if args.copies > 1:
        links = Path(tempfile.mkdtemp(prefix="pianomuse-bench-copies-"))
        for c in range(args.copies):
            for source in find_midi_files(args.folder):
                target = links / f"copy{c}" / source.relative_to(args.folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source.resolve())
        args.folder = links
    try:
        return _run(args)
    finally:
        if links is not None:
            shutil.rmtree(links, ignore_errors=True)


def _run(args) -> int:
    files = find_midi_files(args.folder)
    tok = PianoTokenizer()
    scan(args.folder, workers=1, paths=files[:1])  # warm the forkserver (imports symusic + MidiTok once)

    load = os.getloadavg()[0]
    rows = []
    seconds, cpu, tokens = miditok_alone(tok, files)
    rows.append(("MidiTok encode, 1 process (peer)", seconds, cpu, tokens))
    for w in args.workers:
        began = time.perf_counter()
        report = scan(args.folder, workers=w, paths=files)
        rows.append((f"check, {w} worker(s)", time.perf_counter() - began, _cpu(report.files), report.summary.tokens))
    tmp = Path(tempfile.mkdtemp(prefix="pianomuse-bench-"))
    try:
        for w in args.workers:
            out = tmp / f"store-{w}"
            result = prepare(args.folder, out, {"workers": w})
            fresh = TokenStore.open(out).report  # tokens of every tokenized file, duplicates too
            rows.append((f"prepare, {w} worker(s)", result.elapsed_s, _cpu(fresh.files), fresh.summary.tokens))
        began_cpu = time.process_time()
        again = prepare(args.folder, tmp / f"store-{args.workers[-1]}", {"workers": args.workers[-1]})
        rows.append(("re-prepare, unchanged files", again.elapsed_s, time.process_time() - began_cpu, fresh.summary.tokens))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    peer, peer_cpu = rows[0][1], rows[0][2]
    print(f"# check/prepare throughput: {len(files)} files from {args.folder}")
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPU(s), load average {load:.1f} at start, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("# wall: from the call to the report, worker start included; CPU: summed over the files (load-independent)")
    print()
    print("| run | wall s | files/s | tokens/s | wall vs MidiTok | CPU s | CPU vs MidiTok |")
    print("|---|---|---|---|---|---|---|")
    for name, secs, cpu_s, toks in rows:
        print(f"| {name} | {secs:.2f} | {len(files) / secs:.1f} | {toks / secs:,.0f} | {secs / peer:.2f}x | {cpu_s:.2f} | {cpu_s / peer_cpu:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
