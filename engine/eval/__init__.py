"""Evaluation: likelihood per token/note/second, musical metrics of generated continuations
against real ones, validity and memorisation checks, and the same metrics for one MIDI file.

- ``metrics``: note-list features and distribution comparisons (pure numpy);
- ``likelihood``: nats/bits per token, bits per note and per second;
- ``continuations``: prompts cut from validation pieces and the model's continuations;
- ``validity``: invalid-token and stuck-note counts;
- ``overlap``: longest n-gram of notes copied from the training data;
- ``report``: ``evaluate``, ``write_report``, ``audition_metrics``; ``plot``: the PNG;
- ``sources``: checkpoint and data resolution for the ``eval`` command.
"""
from __future__ import annotations

# the bundled model, the default of ``eval``: one rule for the whole project, kept in engine.paths
from engine.rundir import bundled_checkpoint as default_checkpoint

_FROM_REPORT = ("audition_metrics", "audition_summary", "CorpusProfile", "evaluate", "EvalOptions", "write_report")
__all__ = ["default_checkpoint", *_FROM_REPORT]


def __getattr__(name: str):
    # the heavy parts (torch, symusic) load only when asked for
    if name in _FROM_REPORT:
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module 'engine.eval' has no attribute {name!r}")
