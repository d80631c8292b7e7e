"""The one set of generation defaults, importable without torch (the CLI's --help and the app's knobs show them):
sampling, the length of a generation, and how a duet with a pianist (``engine.generate.duet``) runs."""
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


MODES = ("continue", "call-and-response", "accompany")
HUMAN_CHANNEL = 1  # the pianist's notes in a duet's take, its pass-through and the piano roll


@dataclass
class DuetConfig:
    mode: str = "continue"
    takeover_cc: int = 67  # the soft pedal, as in EleutherAI's Aria demo
    pause: float = 1.0  # continue: seconds of silence before the model takes over
    turn_bars: int = 2  # call-and-response: bars per turn
    count_in: int = 1  # call-and-response: bars of click before your first turn
    click: bool = True  # call-and-response: a metronome on the GM drum channel
    split: int = 60  # accompany: the model plays below this MIDI pitch (60 = middle C)
    tempo: float = 120.0  # quarter notes per minute of the session's grid
    thru: bool = True  # your notes sound through PianoMuse's output
    lead: float = 0.03  # seconds from a handover to the earliest grid step the model's first note may take
    tap_tempo: bool = False  # the first four taps (keys or the takeover pedal) set the tempo and the first bar line

    def problem(self) -> str | None:
        checks = [
            (self.mode in MODES, f"unknown mode {self.mode!r}; use one of: {', '.join(MODES)}"),
            (0 <= self.takeover_cc <= 127, "the takeover CC must be a controller number 0-127 (67 is the soft pedal)"),
            (self.pause > 0, "the pause must be a positive number of seconds, e.g. 1.0"),
            (self.turn_bars >= 1 and self.count_in >= 0, "turns must be at least 1 bar and the count-in 0 bars or more"),
            (0 <= self.split <= 127, "the split point must be a MIDI pitch 0-127 (60 = middle C)"),
            (20 <= self.tempo <= 300, "the tempo must be between 20 and 300 quarter notes per minute"),
            (self.lead >= 0, "the lead must be 0 seconds or more"),
        ]
        return next((message for ok, message in checks if not ok), None)
