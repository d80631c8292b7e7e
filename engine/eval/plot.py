"""The PNG of an evaluation report: each distribution, real beside generated, with its OA and KL.

Drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, no global state, no
display needed, safe from a worker thread.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from engine.atomic import write_with

REAL_COLOUR = "#4c72b0"
GENERATED_COLOUR = "#dd8452"

FEATURE_TITLES = {
    "note_density": "note density (notes/s)",
    "polyphony": "mean polyphony (notes sounding)",
    "pitch_range": "pitch range (semitones)",
    "pitch_class_entropy": "pitch-class entropy (bits)",
    "pedal_use": "pedal use (share of time down)",
}
HISTOGRAM_TITLES = {
    "pitch_class": "pitch class",
    "pitch": "pitch (piano keys)",
    "velocity": "velocity",
    "ioi": "inter-onset interval (s, log bins)",
    "duration": "note duration (s, log bins)",
    "polyphony": "polyphony (share of sounding time)",
}


def _score_text(entry: dict) -> str:
    def fmt(x):
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"

    return f"OA {fmt(entry.get('oa'))}  KL {fmt(entry.get('kl_nats'))} nats"


def _bars(ax, name: str, entry: dict) -> None:
    labels = entry["labels"]
    x = np.arange(len(labels))
    if len(labels) <= 24:
        width = 0.42
        ax.bar(x - width / 2, entry["real"], width, color=REAL_COLOUR, label="real")
        ax.bar(x + width / 2, entry["generated"], width, color=GENERATED_COLOUR, label="generated")
    else:  # many bins (pitch): outlines read better than 2 x 88 thin bars, and draw far faster
        edges = np.arange(len(labels) + 1) - 0.5
        ax.stairs(entry["real"], edges, color=REAL_COLOUR, fill=True, alpha=0.45, label="real")
        ax.stairs(entry["generated"], edges, color=GENERATED_COLOUR, fill=True, alpha=0.45, label="generated")
    step = max(1, len(labels) // 12)  # at most ~12 tick labels per panel
    ax.set_xticks(x[::step])
    ax.set_xticklabels([str(lab) for lab in labels[::step]], rotation=45 if step > 1 or len(labels) > 12 else 0,
                       fontsize=7, ha="right" if step > 1 else "center")
    ax.set_title(f"{HISTOGRAM_TITLES.get(name, name)}\n{_score_text(entry)}", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)


def _curves(ax, name: str, entry: dict) -> None:
    grid = np.asarray(entry.get("grid") or [], dtype=float)
    if len(grid):
        ax.fill_between(grid, entry["real_density"], color=REAL_COLOUR, alpha=0.45, label="real")
        ax.fill_between(grid, entry["generated_density"], color=GENERATED_COLOUR, alpha=0.45, label="generated")
    ax.set_title(f"{FEATURE_TITLES.get(name, name)}\n{_score_text(entry)}", fontsize=9)
    ax.set_yticks([])
    ax.tick_params(axis="x", labelsize=7)


def plot_report(report: dict, png_path: str | Path) -> Path:
    """Draw every distribution of ``report["continuations"]`` into ``png_path`` (written atomically)."""
    from matplotlib.figure import Figure  # Agg is Figure's default canvas

    cont = report["continuations"]
    panels = [("hist", k, v) for k, v in cont["histograms"].items()] + [("kde", k, v) for k, v in cont["features"].items()]
    cols = 4
    rows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=90, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (kind, name, entry) in zip(axes, panels):
        (_bars if kind == "hist" else _curves)(ax, name, entry)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if panels:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper right", fontsize=9)
    lik = report.get("likelihood", {})
    bpn = lik.get("bits_per_note")
    title = f"PianoMuse eval: {cont.get('samples', 0)} continuations"
    if bpn is not None and math.isfinite(bpn):
        title += f"   validation {bpn:.2f} bits/note"
    fig.suptitle(title, fontsize=11)
    return write_with(Path(png_path), lambda tmp: fig.savefig(tmp, format="png"))
