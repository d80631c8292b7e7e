"""The records of a run's metrics.jsonl: one typed dataclass per kind.

The trainer writes these (``MetricsLog.write``) and every reader gets them back
(``engine.rundir.read_metrics`` and ``MetricsTail``), so each field's name is declared here once
and both faces read attributes, never keys they would have to guess. A line is one JSON object:
``kind``, ``step`` (optimizer steps done), ``tokens`` (training tokens seen), ``time`` (Unix
seconds), ``elapsed_s`` (since this session of the run began) and the kind's own fields below;
None is left out of the line. Reading is forgiving: a field that is missing, null or of the wrong
type reads as its default, and a field this version does not know (a newer trainer's) is kept in
``extra`` and written back. Torch-free: the app tails runs with it.
"""
from __future__ import annotations

import functools
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


COMMON_FIELDS = ("kind", "step", "tokens", "time", "elapsed_s")


@dataclass(frozen=True, kw_only=True)
class MetricRecord:
    """What every line has; a line of a kind this version does not know reads as ``OtherRecord``."""

    KIND: ClassVar[str] = ""
    step: int
    tokens: int = 0
    time: float = 0.0
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.KIND

    @property
    def resumed_at(self) -> int | None:
        """For the record a resumed trainer writes first: the step it continues from."""
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            if f.name not in ("extra", "name"):
                value = _finite(getattr(self, f.name))
                if value is not None:
                    out[f.name] = value
        out.update(self.extra)
        return out

    @classmethod
    def _split_rest(cls, rest: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments for what no field declares (``extra`` here; auditions keep scores)."""
        return {"extra": rest} if rest else {}


@dataclass(frozen=True, kw_only=True)
class TrainRecord(MetricRecord):
    """A training step: every ``run.log_every`` steps, the first and the last."""

    KIND: ClassVar[str] = "train"
    loss: float | None = None  # cross-entropy in nats per target token
    lr: float | None = None
    grad_norm: float | None = None  # before clipping
    tokens_per_s: float | None = None  # since the previous train record
    bad_steps_total: int = 0  # steps skipped for a non-finite loss or gradient, so far
    mem_alloc: int | None = None  # CUDA bytes allocated (None on a CPU)
    mem_reserved: int | None = None
    mem_peak: int | None = None


@dataclass(frozen=True, kw_only=True)
class ValRecord(MetricRecord):
    """A validation pass over the (capped) validation split: of the trained weights, and with
    ``train.ema_decay`` also of their moving average (the ``ema_`` fields, None without one)."""

    KIND: ClassVar[str] = "val"
    val_loss: float | None = None  # nats per target token
    bits_per_note: float | None = None
    val_tokens: int = 0
    val_notes: int = 0
    ema_val_loss: float | None = None  # the same split, the averaged weights
    ema_bits_per_note: float | None = None

    @property
    def best_weights(self) -> str:
        """Which weights validated better at this step: "ema" (the average) or "raw"."""
        if self.ema_val_loss is not None and (self.val_loss is None or self.ema_val_loss < self.val_loss):
            return "ema"
        return "raw"

    @property
    def best_val_loss(self) -> float | None:
        return self.ema_val_loss if self.best_weights == "ema" else self.val_loss


@dataclass(frozen=True, kw_only=True)
class AuditionRecord(MetricRecord):
    """An audition: the model continued a fixed prompt into ``path`` (or ``error`` says why not).

    ``scores`` holds the evaluation's musical metrics of the sample (``audition_summary``), which
    the line carries flat beside the other fields."""

    KIND: ClassVar[str] = "audition"
    path: str | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    notes: int | None = None
    metrics_error: str | None = None  # the scores could not be computed
    scores: dict[str, float | None] = field(default_factory=dict)

    @property
    def pitch_class_oa(self) -> float | None:
        """Overlap of its pitch-class histogram with the training music's (1 = the same)."""
        return self.scores.get("pitch_class_oa")

    @property
    def self_reuse(self) -> float | None:
        return self.scores.get("self_reuse")

    @property
    def copied_notes(self) -> int | None:
        """The longest run of notes copied from a training piece."""
        value = self.scores.get("copied_notes")
        return int(value) if value is not None else None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        scores = out.pop("scores", {})
        return {**out, **{k: _finite(v) for k, v in scores.items()}}

    @classmethod
    def _split_rest(cls, rest: dict[str, Any]) -> dict[str, Any]:
        scores = {k: v for k, v in rest.items() if v is None or _is_number(v)}
        other = {k: v for k, v in rest.items() if k not in scores}
        return {"scores": scores, **({"extra": other} if other else {})}


@dataclass(frozen=True, kw_only=True)
class CheckpointRecord(MetricRecord):
    KIND: ClassVar[str] = "checkpoint"
    path: str | None = None  # the checkpoint folder
    reason: str | None = None  # periodic | final | stop


@dataclass(frozen=True, kw_only=True)
class StatusRecord(MetricRecord):
    """The run's state: started/resumed (with what the run is), note, bad_step, preparing, and the
    end (finished, stopped, aborted, interrupted) with ``message`` and the last checkpoint."""

    KIND: ClassVar[str] = "status"
    ENDED: ClassVar[tuple[str, ...]] = ("finished", "stopped", "aborted", "interrupted")
    state: str = ""
    message: str | None = None
    checkpoint: str | None = None  # started/resumed: the checkpoint resumed from; at the end: the last one saved
    # started / resumed
    run_dir: str | None = None
    device: str | None = None
    world_size: int | None = None
    wkv_backend: str | None = None
    parameters: int | None = None
    frozen: list[str] | None = None  # parameters the objective never reaches, frozen
    max_steps: int | None = None
    total_tokens: int | None = None
    train_samples: int | None = None
    val_samples: int | None = None
    vocab_size: int | None = None
    precision: str | None = None
    init_from: str | None = None
    lr: float | None = None
    lr_final: float | None = None
    # bad_step (loss and grad_norm: None when not finite), and the end
    loss: float | None = None
    grad_norm: float | None = None
    consecutive: int | None = None
    bad_steps_total: int | None = None
    # preparing (data preparation before the run folder exists; never written to the file)
    done: int | None = None
    total: int | None = None

    @property
    def resumed_at(self) -> int | None:
        return self.step if self.state == "resumed" else None

    @property
    def began(self) -> bool:
        """A started or resumed record: a session of the run begins here."""
        return self.state in ("started", "resumed")


@dataclass(frozen=True, kw_only=True)
class OtherRecord(MetricRecord):
    """A kind this version does not know (kept, so nothing read is lost)."""

    name: str = ""

    @property
    def kind(self) -> str:
        return self.name


KINDS: dict[str, type[MetricRecord]] = {
    cls.KIND: cls for cls in (TrainRecord, ValRecord, AuditionRecord, CheckpointRecord, StatusRecord)
}


def parse_record(obj: Any) -> MetricRecord | None:
    """The typed record of one decoded JSON line, or None if it is not a record at all."""
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str) or not _is_int(obj.get("step")):
        return None
    cls = KINDS.get(obj["kind"], OtherRecord)
    hints, defaults = _schema(cls)
    values: dict[str, Any] = {} if cls is not OtherRecord else {"name": obj["kind"]}
    rest = {}
    for key, value in obj.items():
        if key == "kind":
            continue
        if key in hints and key not in ("extra", "scores", "name"):
            values[key] = _typed(value, hints[key], defaults[key])
        else:
            rest[key] = value
    return cls(**values, **cls._split_rest(rest))


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in fields(cls)}
    return {f.name: hints[f.name] for f in fields(cls)}, defaults


def _typed(value: Any, hint: Any, default: Any) -> Any:
    """``value`` if it has the field's type (an int where a float goes is a float, a float where an int
    goes is rounded), else the default."""
    for kind in typing.get_args(hint) or (hint,):
        if kind is float and _is_number(value):
            return float(value)
        if kind is int and _is_number(value) and math.isfinite(value):
            return round(value)  # (memory in bytes from a tool that writes floats)
        if kind in (str, bool) and type(value) is kind:
            return value
        if typing.get_origin(kind) is list and isinstance(value, list):
            return value
    return default


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> Any:
    # JSON has no NaN/inf: a non-finite loss or gradient norm is written as null (read back as None)
    return None if isinstance(value, float) and not math.isfinite(value) else value
