"""The one set of generation defaults, importable without torch (the CLI's --help and the app's knobs show them):
sampling, the length of a generation, and how a duet with a pianist (``engine.generate.duet``) runs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

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
TAKEBACKS = ("finish", "release")  # what the model's held notes do when you take the floor back
HUMAN_CHANNEL = 1  # the pianist's notes in a duet's take, its pass-through and the piano roll
TAP_BEATS = (0.2, 3.0)  # seconds per beat a tapped tempo may take: 300 to 20 quarter notes per minute


def _knob(default, help: str, modes: tuple[str, ...] = MODES, label: str = ""):
    """A DuetConfig field: ``help`` is its --help text and the pane's tooltip, ``modes`` the modes that
    use it (the pane shows it only there), ``label`` its short name in the pane."""
    return field(default=default, metadata={"help": help, "modes": modes, "label": label})


@dataclass(frozen=True)
class KnobSettings:
    """The live knobs at one moment, as a performance reads them before every step (the Generate
    pane's ``Knobs.snapshot()``): a session starts from them and follows temperature, top-p and
    bars while it plays; ``version`` changes whenever a knob does."""

    temperature: float = SamplingConfig.temperature
    top_p: float = SamplingConfig.top_p
    alternatives: int = 1
    bars: int | None = DEFAULT_BARS  # None: no bar limit (a token budget ends the take)
    seed: int | None = None
    version: int = 0


@dataclass
class DuetConfig:
    """How a duet with a pianist runs (``engine.generate.duet``). Both faces build it with ``duet_config``."""

    mode: str = _knob("continue", "continue (it takes over when you pause), call-and-response (turns of --turn-bars) "
                                  "or accompany (it plays below --split).", label="Mode")
    tempo: float = _knob(120.0, "the session's tempo in quarter notes per minute.", label="tempo")
    tap_tempo: bool = _knob(False, "tap four beats (keys or the takeover pedal) to set the tempo; the music starts a "
                                   "beat after the fourth.", label="tap")
    pause: float = _knob(1.0, "seconds of silence before the model takes over.", ("continue",), "pause")
    takeover_cc: int = _knob(67, "this controller (pressed) hands over at once (67 = the soft pedal).", ("continue",), "CC")
    takeback: str = _knob("finish", "what the model's held notes do when you play again (or its turn ends): finish "
                                    "lets each end where the model wrote it, at most a bar later, its sustain pedal "
                                    "coming up by then too; release stops them at once.", ("continue", "call-and-response"),
                          "held")
    turn_bars: int = _knob(2, "bars per turn.", ("call-and-response",), "turn")
    count_in: int = _knob(1, "bars of click before your first turn.", ("call-and-response",), "count")
    click: bool = _knob(True, "a metronome click on the GM drum channel.", ("call-and-response",), "click")
    split: int = _knob(60, "the model plays below this MIDI pitch (60 = middle C).", ("accompany",), "split")
    lead: float = _knob(0.0, "the least seconds from a handover to the model's first note (0: as soon as it can); "
                             "it takes the first grid step after that which it can meet at its measured time per "
                             "token, so a slow machine waits a step longer rather than playing late.",
                        ("continue", "accompany"), "lead")
    thru: bool = _knob(True, "your notes also sound through PianoMuse's output.", label="thru")

    def problem(self) -> str | None:
        checks = [
            (self.mode in MODES, f"unknown mode {self.mode!r}; use one of: {', '.join(MODES)}"),
            (0 <= self.takeover_cc <= 127, "the takeover CC must be a controller number 0-127 (67 is the soft pedal)"),
            (self.pause > 0, "the pause must be a positive number of seconds, e.g. 1.0"),
            (self.takeback in TAKEBACKS, f"unknown takeback {self.takeback!r}; use one of: {', '.join(TAKEBACKS)}"),
            (self.turn_bars >= 1 and self.count_in >= 0, "turns must be at least 1 bar and the count-in 0 bars or more"),
            (0 <= self.split <= 127, "the split point must be a MIDI pitch 0-127 (60 = middle C)"),
            (20 <= self.tempo <= 300, "the tempo must be between 20 and 300 quarter notes per minute"),
            (0 <= self.lead <= 1, "the lead must be between 0 and 1 second, e.g. 0.03"),
        ]
        return next((message for ok, message in checks if not ok), None)

    @staticmethod
    def knobs(mode: str | None = None) -> list[str]:
        """The fields a mode uses (all of them without ``mode``), in the order the pane shows them."""
        return [f.name for f in fields(DuetConfig) if f.name != "mode" and (mode is None or mode in f.metadata["modes"])]

    @staticmethod
    def help(name: str) -> str:
        """A field's --help text: what it does, and with which modes when not all of them."""
        meta = DuetConfig._meta(name)
        modes = meta["modes"]
        where = "With --in" if len(modes) == len(MODES) else "With --mode " + " or ".join(modes)
        return f"{where}: {meta['help']}"

    @staticmethod
    def label(name: str) -> str:
        """A field's short name in the pane."""
        return DuetConfig._meta(name)["label"]

    @staticmethod
    def about(name: str) -> str:
        """What a field does, in a sentence (the pane's tooltip)."""
        return DuetConfig._meta(name)["help"]

    @staticmethod
    def _meta(name: str):
        return next(f.metadata for f in fields(DuetConfig) if f.name == name)


def duet_config(**values) -> DuetConfig:
    """The one way both faces build a DuetConfig: values typed or as text (the pane's fields), each
    read as its field's type; a ValueError says in one sentence which value is wrong and what to give."""
    types = {f.name: f.type for f in fields(DuetConfig)}
    typed = {}
    for name, value in values.items():
        if name not in types:
            raise ValueError(f"{name!r} is not a duet setting; use one of: {', '.join(types)}")
        typed[name] = _read(name, value, types[name])
    config = DuetConfig(**typed)
    problem = config.problem()
    if problem:
        raise ValueError(problem)
    return config


def _read(name: str, value, kind: str):
    if not isinstance(value, str) or kind == "str":
        return value
    text = value.strip()
    what = "the " + name.replace("_", " ")
    if kind == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{what} must be on or off, got {text!r}")
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        default = getattr(DuetConfig, name)
        raise ValueError(f"{what} must be {'a whole number' if kind == 'int' else 'a number'}, e.g. {default}; "
                         f"got {text!r}") from None


def tempo_from_taps(times: list[float]) -> float | None:
    """Quarter notes per minute from tap times (seconds): the median spacing of the taps is a beat,
    kept within 20-300 qpm; None for fewer than two taps."""
    if len(times) < 2:
        return None
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    beat = min(TAP_BEATS[1], max(TAP_BEATS[0], gaps[(len(gaps) - 1) // 2]))
    return 60.0 / beat
