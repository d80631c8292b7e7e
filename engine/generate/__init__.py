"""Generation: grammar-safe sampling, batched RNN-mode sessions with bar snapshots, streaming decoding."""
from .decoder import StreamDecoder
from .grammar import GrammarMask
from .sampling import SamplingConfig, filter_logits, sample_rows
from .session import GenerationSession, StepResult, parse_bar_range, prompt_from_file
from .timeline import GenerationError, Note, TokenTables, TokenTimeline

__all__ = [
    "GenerationError",
    "GenerationSession",
    "GrammarMask",
    "Note",
    "SamplingConfig",
    "StepResult",
    "StreamDecoder",
    "TokenTables",
    "TokenTimeline",
    "filter_logits",
    "parse_bar_range",
    "prompt_from_file",
    "sample_rows",
]
