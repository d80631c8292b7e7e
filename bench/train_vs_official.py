"""One table: our full training steps beside the official RWKV-LM trainer's forward+backward,
both measured in the same device call (issue 11's rule: numbers from another run do not count).

    python3 bench/train_vs_official.py --official off.json --ours "defaults=ours1.json" "recompute=ours2.json" --out t.md

``--official`` is the JSON of ../shared/bench/official_rwkvlm.py --mode train; each ``--ours``
is LABEL=JSON from bench/train_throughput.py --json. Speed is our tokens/s over the official's
(our full step, optimizer included, against their forward+backward alone); memory is peak
allocated GiB over theirs. Torch and the standard library only.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True)
    ap.add_argument("--ours", nargs="+", required=True, help="LABEL=JSON, one per configuration")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    off = json.load(open(args.official))
    official = {r["shape"]: r for r in off["results"] if r.get("head_chunk", 0) == 0}
    ours = []
    for item in args.ours:
        label, _, path = item.partition("=")
        data = json.load(open(path))
        ours.append((label, data["header"], {r["shape"]: r for r in data["results"]}))
    cols = ["shape", "official tok/s (fwd+bwd)", "official peak GiB"]
    for label, _, _ in ours:
        cols += [f"{label}: tok/s", f"{label}: speed", f"{label}: memory"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for shape, ref in official.items():
        row = [shape, f"{ref['tokens_per_s'] / 1e3:.0f}k", f"{ref['peak_GiB']:.1f}"]
        for _, _, results in ours:
            r = results.get(shape)
            if r is None or "error" in r:
                row += ["-", (r or {}).get("error", "not run"), "-"]
                continue
            row += [f"{r['tokens_per_s'] / 1e3:.0f}k", f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x",
                    f"{r['peak_gib'] / ref['peak_GiB']:.2f}x ({r['peak_gib']:.1f})"]
        lines.append("| " + " | ".join(row) + " |")
    text = f"Official: {off.get('device')}, torch {off.get('torch')}, kernel {next(iter(official.values()), {}).get('kernel')}\n"
    text += "".join(f"- {label}: {header}\n" for label, header, _ in ours) + "\n" + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
