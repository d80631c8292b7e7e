"""The one set of generation defaults, importable without torch (the CLI's --help and the app's knobs show them)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_BARS = 16  # how long a generation runs when neither bars nor a token budget is given


@dataclass
class SamplingConfig:
    """The one set of sampling defaults: generation (both faces), auditions and eval start from it."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.0  # 0.0: off; keeps tokens with p >= min_p * p_max
    repetition_penalty: float = 1.0  # 1.0: off; >1 divides positive logits of recent tokens
    presence_penalty: float = 0.0  # subtracted once from the logit of every token in the window
    penalty_window: int = 64  # how many recent tokens the penalties look at
    seed: int | None = None  # None: a fresh random seed (reported, so a run can be repeated)

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0 (0 picks the most likely token)"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be a whole number >= 0 (0 turns it off)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1] (1 turns it off)"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1) (0 turns it off)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0 (1 turns it off)"),
            (isinstance(self.penalty_window, int) and self.penalty_window >= 0, "penalty_window must be a whole number >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return asdict(self)
