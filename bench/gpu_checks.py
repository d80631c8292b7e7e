"""All WKV7 CUDA correctness checks in one device call, with a table of relative errors.

    python bench/gpu_checks.py

Runs tests/integration/test_wkv7_cuda.py (fp64 reference, fresh random inputs: odd T, state in
and out, packed sequences, split sequences, both kernel variants, bit-for-bit repeatability, the
generation step) and prints each case's relative error per output. Exit status is pytest's.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["y", "state", "dr", "dw", "dk", "dv", "da", "db", "ds0"]


def main() -> int:
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        os.environ["PIANOMUSE_GPU_REPORT"] = str(report)
        code = pytest.main(["-q", "-p", "no:cacheprovider", str(ROOT / "tests/integration/test_wkv7_cuda.py")])
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    if not rows:
        print("no checks ran (no GPU here, or the kernels did not build): see the pytest output above")
        return int(code) or 1
    print("\n| case | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for row in rows:
        cells = [f"{row[c]:.1e}" if c in row else "-" for c in COLUMNS]
        print(f"| {row['case']} | " + " | ".join(cells) + " |")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
