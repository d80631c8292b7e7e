"""Shared by bench/train_throughput.py and bench/ddp_speedup.py: shape names, the run header,
and writing a result table to a markdown file and the raw numbers to JSON.

Imports torch and the standard library only, so both scripts run on the GPU machine, which has
torch but not the CLI/UI dependencies.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as `python3 bench/<script>.py` with no install
    sys.path.insert(0, str(REPO_ROOT))


class BenchError(SystemExit):
    """A bad command line: one sentence on stderr, exit status 2."""

    def __init__(self, sentence: str):
        print(f"error: {sentence}", file=sys.stderr)
        super().__init__(2)


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    vocab_size: int
    ctx_len: int
    batch: int | None  # sequences per step; None where the script takes it from an option

    @property
    def name(self) -> str:
        base = f"L{self.n_layer}-D{self.n_embd}-V{self.vocab_size}-T{self.ctx_len}"
        return base if self.batch is None else f"{base}-B{self.batch}"


def parse_shape(text: str, need_batch: bool = True) -> Shape:
    """``L12-D768-V2048-T2048-B16`` (letters: layers, width, vocabulary, tokens, batch)."""
    example = "L12-D512-V512-T4096" + ("-B8" if need_batch else "")
    try:
        parts = {p[0].upper(): int(p[1:]) for p in text.strip().split("-")}
    except (ValueError, IndexError):
        raise BenchError(f"cannot read shape {text!r}; write it like {example}") from None
    wanted = "LDVTB" if need_batch else "LDVT"
    if set(parts) - set("LDVTB") or any(k not in parts for k in wanted) or any(v <= 0 for v in parts.values()):
        raise BenchError(f"cannot read shape {text!r}; write it like {example} (all numbers positive)")
    if parts["D"] % 64:
        raise BenchError(f"shape {text!r}: the width D must be a multiple of the head size 64")
    return Shape(parts["L"], parts["D"], parts["V"], parts["T"], parts.get("B"))


def pick_device(spec: str, tiny: bool) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda but no CUDA GPU is visible here; run on the GPU machine or use --device cpu --tiny")
    if spec == "cpu" and not tiny:
        raise BenchError("no GPU here: these shapes are for an H200; pass --tiny for the CPU smoke run")
    return torch.device(spec)


def run_header(device: torch.device, extra: str) -> str:
    """One line saying what ran where and when (the results files need device and date)."""
    if device.type == "cuda":
        where = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        where = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"{where}, torch {torch.__version__}, {stamp}; {extra}"


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(markdown: str, results: dict, out_md: str | None, out_json: str | None) -> None:
    """Append the table to ``out_md`` (the lead pastes it into bench/results) and dump JSON."""
    if out_md:
        path = Path(out_md)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write("\n" + markdown.rstrip() + "\n")
    if out_json:
        path = Path(out_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def fmt_rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1e3:.0f}k" if tokens_per_s >= 1e4 else f"{tokens_per_s:.0f}"
