"""Rebuild bench/RESULTS.md from bench/results/: the overview, then each area's record verbatim.

    python3 bench/compose_results.py

Each record's headings move one level down (outside code fences) so the page has one title.
"""
from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["wkv7_cpu", "forward_cpu", "generate", "data", "data_report_size", "wkv7_cuda", "train", "train_cpu",
         "train_throughput", "gpu_2026-12-06", "tui", "eval", "bundled_search", "live", "faults"]


def demote_headings(text: str) -> str:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        lines.append("#" + line if not fenced and line.startswith("#") else line)
    return "\n".join(lines)


def compose() -> str:
    parts = [(RESULTS / "_overview.md").read_text(encoding="utf-8").rstrip()]
    for name in ORDER:
        body = (RESULTS / f"{name}.md").read_text(encoding="utf-8").rstrip()
        parts.append(f"---\n<!-- from bench/results/{name}.md -->\n{demote_headings(body)}")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    (RESULTS.parent / "RESULTS.md").write_text(compose(), encoding="utf-8")
