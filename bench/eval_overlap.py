"""Training-set overlap: the hashed n-gram index against a suffix automaton, same data, same answers.

Run:  .venv/bin/python bench/eval_overlap.py                 (default corpus sizes, markdown table)
      .venv/bin/python bench/eval_overlap.py --sizes 20000,100000 --queries 32

The corpus is random note symbols over a realistic alphabet (88 pitches x 20 gap classes) with
passages planted into the queries, so every query has a long copy to find. Build is the one-off
cost of indexing the training notes; query is the time for all queries (each query finds its
longest copied run). The suffix automaton is the classic linear-time peer, in pure Python.
MiB is the growth of the process's resident memory while that structure is built and queried
(the hashed index runs first, on a fresh process, so its number is not flattered).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np
import psutil

from engine.eval.overlap import NgramIndex


class SuffixAutomaton:
    """Generalised over pieces by a separator symbol per piece (so no match crosses a boundary)."""

    def __init__(self) -> None:
        self.next: list[dict[int, int]] = [{}]
        self.link = [-1]
        self.length = [0]
        self.last = 0

    def extend(self, c: int) -> None:
        cur = len(self.next)
        self.next.append({})
        self.length.append(self.length[self.last] + 1)
        self.link.append(0)
        p = self.last
        while p != -1 and c not in self.next[p]:
            self.next[p][c] = cur
            p = self.link[p]
        if p != -1:
            q = self.next[p][c]
            if self.length[p] + 1 == self.length[q]:
                self.link[cur] = q
            else:
                clone = len(self.next)
                self.next.append(dict(self.next[q]))
                self.length.append(self.length[p] + 1)
                self.link.append(self.link[q])
                while p != -1 and self.next[p].get(c) == q:
                    self.next[p][c] = clone
                    p = self.link[p]
                self.link[q] = clone
                self.link[cur] = clone
        self.last = cur

    def longest_match(self, query) -> int:
        state, run, best = 0, 0, 0
        for c in query:
            while state and c not in self.next[state]:
                state = self.link[state]
                run = self.length[state]
            if c in self.next[state]:
                state = self.next[state][c]
                run += 1
            best = max(best, run)
        return best


def make_data(n_notes: int, n_queries: int, query_len: int, seed: int):
    rng = np.random.default_rng(seed)
    alphabet = 88 * 20
    piece_len = 400
    pieces = [rng.integers(0, alphabet, piece_len) for _ in range(max(1, n_notes // piece_len))]
    queries = []
    for _ in range(n_queries):
        q = rng.integers(0, alphabet, query_len)
        src = pieces[int(rng.integers(len(pieces)))]
        length = int(rng.integers(8, 64))
        start = int(rng.integers(0, piece_len - length))
        at = int(rng.integers(0, query_len - length))
        q[at:at + length] = src[start:start + length]
        queries.append(q)
    return pieces, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,100000,400000", help="training notes, comma-separated")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--query-len", type=int, default=300)
    args = parser.parse_args()

    print(f"# training-set overlap index, {platform.processor() or platform.machine()}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"{args.queries} queries of {args.query_len} notes, a planted copy of 8-63 notes in each\n")
    print("| training notes | hashed build s | hashed query s | hashed MiB | automaton build s | automaton query s | automaton MiB | answers agree |")
    print("|---:|---:|---:|---:|---:|---:|---:|:---:|")
    proc = psutil.Process()
    for size in (int(s) for s in args.sizes.split(",")):
        pieces, queries = make_data(size, args.queries, args.query_len, seed=size)
        rss0 = proc.memory_info().rss
        t0 = time.perf_counter()
        index = NgramIndex(pieces)
        t1 = time.perf_counter()
        hashed = [index.longest_copied(q).notes for q in queries]
        t2 = time.perf_counter()
        hashed_mib = (proc.memory_info().rss - rss0) / 2**20
        del index
        rss0 = proc.memory_info().rss
        sam = SuffixAutomaton()
        for i, piece in enumerate(pieces):
            for c in piece.tolist():
                sam.extend(c)
            sam.extend(-1 - i)  # a separator no query contains
        t3 = time.perf_counter()
        automaton = [sam.longest_match(q.tolist()) for q in queries]
        t4 = time.perf_counter()
        automaton_mib = (proc.memory_info().rss - rss0) / 2**20
        del sam
        # the hashed index builds lazily per window length, so its first queries carry the build
        print(f"| {size:,} | {t1 - t0:.3f} | {t2 - t1:.3f} | {hashed_mib:.0f} | {t3 - t2:.3f} | {t4 - t3:.3f} | {automaton_mib:.0f} | "
              f"{'yes' if hashed == automaton else 'NO'} |")


if __name__ == "__main__":
    main()
