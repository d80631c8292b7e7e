"""Generation: grammar-safe sampling, batched RNN-mode sessions with bar snapshots, streaming decoding.

``import engine.generate`` is cheap (no torch): the public names below load their modules on first use.
"""
from __future__ import annotations

from engine import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "DEFAULT_BARS": "engine.generate.defaults",
    "SamplingConfig": "engine.generate.defaults",
    "KnobSettings": "engine.generate.defaults",
    "StreamDecoder": "engine.generate.decoder",
    "GrammarMask": "engine.generate.grammar",
    "filter_logits": "engine.generate.sampling",
    "sample_rows": "engine.generate.sampling",
    "sample_token": "engine.generate.sampling",
    "GenerationSession": "engine.generate.session",
    "StepResult": "engine.generate.session",
    "parse_bar_range": "engine.generate.session",
    "prompt_from_file": "engine.generate.session",
    "GenerationError": "engine.generate.timeline",
    "Note": "engine.generate.timeline",
    "TokenTables": "engine.generate.timeline",
    "TokenTimeline": "engine.generate.timeline",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
