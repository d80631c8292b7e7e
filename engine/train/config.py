"""The training configuration: one typed object, loaded from TOML, overridable with dotted keys.

Layers, lowest first: the dataclass defaults, a preset (``assets/configs/<name>.toml``), the
user's ``--config`` file, then ``section.key=value`` overrides. The fully resolved object is
written to every run directory as ``config.toml`` so a run can always be reproduced or resumed.
Every mistake a user can make here ends in a :class:`ConfigError` holding one sentence.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.atomic import write_atomic
from engine.model.config import LOW_RANK, ConfigError as ModelConfigError, ModelConfig
from engine.paths import CONFIGS_DIR

PRESETS = ("tiny", "small", "base")


class ConfigError(ValueError):
    """A configuration mistake, explained in one sentence that says what to do."""


class _ModelSectionMethods:
    def model_config(self, vocab_size: int) -> ModelConfig:
        """The ModelConfig this section describes, for a tokenizer of ``vocab_size`` tokens."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({name: values[name] or None for name in LOW_RANK})  # TOML's 0 is ModelConfig's None
        return ModelConfig(vocab_size=vocab_size, **values)


def _model_section_fields() -> list[tuple[str, Any, Any]]:
    out = []
    for f in fields(ModelConfig):
        if f.name == "vocab_size":  # the tokenizer's, never the user's
            continue
        out.append((f.name, int, field(default=0)) if f.name in LOW_RANK else (f.name, f.type, field(default=f.default)))
    return out


# The [model] table is ModelConfig (engine.model.config owns the fields, their defaults and their
# rules) as TOML spells it: without vocab_size, and with 0 for a low-rank size's None (the released
# default for the width), because TOML has no null. ``model_config`` is the one translation.
ModelSection = dataclasses.make_dataclass(
    "ModelSection", _model_section_fields(), bases=(_ModelSectionMethods,),
    namespace={"__module__": __name__, "__doc__": "The [model] table: ModelConfig's fields, 0 for a low-rank default."},
)


@dataclass
class DataSection:
    path: str = ""  # MIDI folder or prepared token store; "" = the bundled demo corpus
    prepare_config: str = ""  # data.toml for preparing a MIDI folder (tokenizer, checks, split); "" = defaults
    objective: str = "completion"  # "completion" (context bars -> completion bars) or "lm" (packed chunks)
    ctx_len: int = 1024  # tokens per training sequence (window or packed chunk)
    context_bars: int = 8
    completion_bars: int = 4
    stride_bars: int = 2
    augment: bool = True  # random transposition (and jitter below) of training samples
    transpose_range: int = 6  # semitones either way
    velocity_jitter: int = 0
    tempo_jitter: float = 0.0
    loader_workers: int = 1  # 1 = build the next batch in a background thread; 0 = inline
    max_train_samples: int = 0  # 0 = all; N = only the first N training samples (overfit checks, debugging)


@dataclass
class OptimSection:
    lr: float = 1e-3
    lr_final: float = 5e-5
    warmup_steps: int = 50  # linear warm-up from 1% of lr (spec section 7)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-18
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still measured)
    w0_lr_scale: float = 2.0  # att.w0 trains at this multiple of lr
    finetune_lr: float = 1e-5  # used instead of lr/lr_final when starting --init-from a checkpoint


@dataclass
class TrainSection:
    max_steps: int = 2000
    max_tokens: int = 0  # 0 = no token limit (the cosine then spans max_steps' estimated tokens)
    batch_size: int = 16  # sequences per optimizer step, over all processes together
    micro_batch_size: int = 16  # sequences per forward pass on one process
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    seed: int = 1234
    activation_checkpointing: bool = False  # recompute each block in backward to save memory
    compile: str = "auto"  # torch.compile the block parts around the WKV kernel: auto (on CUDA) | true | false
    fused_head: str = "auto"  # the head and cross-entropy in one chunked pass (no [rows, vocab] logits): auto (on CUDA) | true | false
    wkv_recompute: bool = False  # the WKV operator keeps only its inputs and reruns its forward in backward
    parallel: str = "ddp"  # under torchrun: ddp (replicated model) | fsdp (parameters, gradients and optimizer state sharded)
    tbptt_len: int = 0  # >0: train sequences in chunks of this many tokens, state carried, detached between chunks
    l2wrap: bool = False
    wkv_backend: str = "auto"
    ema_decay: float = field(default=0.0, metadata={"help": (
        "keep an exponential moving average (EMA) of the weights with this decay per optimizer step, "
        "e.g. 0.999 (0 = off); it is validated beside the trained weights and saved in checkpoints")})


@dataclass
class EvalSection:
    val_every: int = 200  # steps; 0 disables validation
    val_max_batches: int = 20  # 0 = the whole validation split
    audition_every: int = 500  # steps; 0 disables auditions
    audition_prompt_tokens: int = 128
    audition_tokens: int = 256
    audition_temperature: float = 1.0
    audition_top_p: float = 0.95


@dataclass
class RunSection:
    name: str = ""  # run name; "" = the preset name or "run"
    root: str = "runs"  # parent folder of run directories
    log_every: int = 10  # steps between train metric lines
    checkpoint_every: int = 500  # steps; a checkpoint is also written at the end and on stop
    keep_checkpoints: int = 3
    max_bad_steps: int = 5  # consecutive non-finite steps before the run aborts
    tensorboard: bool = False
    resume: str = ""  # "" = new run; "auto" = newest run in run.root (new run if none); or a run/checkpoint path


@dataclass
class DebugSection:
    """Fault injection, so the NaN guard and crash safety are tested with real runs."""

    nan_at_steps: list[int] = field(default_factory=list)  # poison the loss with NaN at these steps
    save_pause_s: float = 0.0  # sleep inside each checkpoint write before it is published


@dataclass
class TrainConfig:
    preset: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    run: RunSection = field(default_factory=RunSection)
    debug: DebugSection = field(default_factory=DebugSection)
    init_from: str = ""  # checkpoint to fine-tune from (official RWKV-7 or PianoMuse)

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        cfg = _deepcopy(base) if base is not None else cls()
        _merge(cfg, data, prefix="")
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path, base: "TrainConfig | None" = None) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing TOML file to --config")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML ({exc}); fix the syntax and retry") from None
        return cls.from_dict(data, base)

    @classmethod
    def from_preset(cls, name: str) -> "TrainConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        cfg = cls.from_toml(CONFIGS_DIR / f"{name}.toml")
        cfg.preset = name
        return cfg

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> "TrainConfig":
        """Apply ``section.key=value`` strings (or a {dotted key: value} dict) to a copy."""
        cfg = _deepcopy(self)
        items = overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides)
        for key, value in items:
            set_dotted(cfg, key, value)
        return cfg

    # ---- saving --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        """Written atomically: the app reads a run's config.toml while the trainer may be writing it."""
        write_atomic(path, self.to_toml())

    # ---- checks --------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Raise ConfigError for values that cannot train; returns self so calls chain."""
        m, d, o, t, e, r = self.model, self.data, self.optim, self.train, self.eval, self.run
        try:  # a model's shape follows ModelConfig's own rules
            m.model_config(vocab_size=1)
        except ModelConfigError as exc:
            raise ConfigError(f"[model]: {exc}") from None
        _choice("data.objective", d.objective, ("completion", "lm"))
        _positive("data.ctx_len", d.ctx_len)
        _positive("data.completion_bars", d.completion_bars)
        _positive("data.stride_bars", d.stride_bars)
        _non_negative("data.context_bars", d.context_bars)
        _non_negative("data.transpose_range", d.transpose_range)
        _non_negative("data.velocity_jitter", d.velocity_jitter)
        _non_negative("data.tempo_jitter", d.tempo_jitter)
        _non_negative("data.loader_workers", d.loader_workers)
        _non_negative("data.max_train_samples", d.max_train_samples)
        _positive("optim.lr", o.lr)
        _non_negative("optim.lr_final", o.lr_final)
        _positive("optim.finetune_lr", o.finetune_lr)
        _non_negative("optim.warmup_steps", o.warmup_steps)
        _non_negative("optim.weight_decay", o.weight_decay)
        _non_negative("optim.grad_clip", o.grad_clip)
        for name, beta in (("optim.beta1", o.beta1), ("optim.beta2", o.beta2)):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {beta}; the usual values are 0.9 and 0.99")
        _positive("train.max_steps", t.max_steps)
        _non_negative("train.max_tokens", t.max_tokens)
        _positive("train.batch_size", t.batch_size)
        _positive("train.micro_batch_size", t.micro_batch_size)
        _non_negative("train.tbptt_len", t.tbptt_len)
        if t.tbptt_len and d.objective == "lm":
            raise ConfigError("train.tbptt_len applies to completion windows; packed LM chunks are already bounded by data.ctx_len, so set train.tbptt_len=0 or data.objective=completion")
        _choice("train.precision", t.precision, ("auto", "bf16", "fp32"))
        _choice("train.parallel", t.parallel, ("ddp", "fsdp"))
        t.compile = _auto_bool("train.compile", t.compile)
        t.fused_head = _auto_bool("train.fused_head", t.fused_head)
        if not (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:")):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}")
        _choice("train.wkv_backend", t.wkv_backend, ("auto", "reference", "chunked", "cuda"))
        if not 0.0 <= t.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be 0 (no weight averaging) or a decay in (0, 1) such as 0.999, got {t.ema_decay}")
        _non_negative("eval.val_every", e.val_every)
        _non_negative("eval.val_max_batches", e.val_max_batches)
        _non_negative("eval.audition_every", e.audition_every)
        _positive("eval.audition_tokens", e.audition_tokens)
        _positive("eval.audition_prompt_tokens", e.audition_prompt_tokens)
        _positive("eval.audition_temperature", e.audition_temperature)
        if not 0.0 < e.audition_top_p <= 1.0:
            raise ConfigError(f"eval.audition_top_p must be in (0, 1], got {e.audition_top_p}")
        _positive("run.log_every", r.log_every)
        _non_negative("run.checkpoint_every", r.checkpoint_every)
        _positive("run.keep_checkpoints", r.keep_checkpoints)
        _positive("run.max_bad_steps", r.max_bad_steps)
        return self

    def accumulation_steps(self, world_size: int = 1) -> int:
        """Micro-batches per optimizer step on each process (global batch / (micro * world))."""
        t = self.train
        per_step = t.micro_batch_size * world_size
        if t.batch_size % per_step:
            raise ConfigError(
                f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size x processes "
                f"({t.micro_batch_size} x {world_size}); change train.batch_size or train.micro_batch_size"
            )
        return t.batch_size // per_step


def documented_keys() -> list[tuple[str, str]]:
    """(dotted key, help) of every config field that carries a ``help`` text, for ``train --help``."""
    sections = [s for s in fields(TrainConfig) if dataclasses.is_dataclass(s.default_factory)]
    return [(f"{s.name}.{f.name}", f.metadata["help"]) for s in sections for f in fields(s.default_factory)
            if "help" in f.metadata]


def _deepcopy(cfg: TrainConfig) -> TrainConfig:
    return copy.deepcopy(cfg)


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} needs the form section.key=value (e.g. optim.lr=3e-4)")
    key, value = text.split("=", 1)
    return key.strip().lstrip("-"), value.strip()


def _field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in fields(obj)}


def _known(obj: Any) -> str:
    return ", ".join(f.name for f in fields(obj))


def _merge(obj: Any, data: dict[str, Any], prefix: str) -> None:
    types = _field_types(obj)
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in types:
            where = f"section [{prefix[:-1]}]" if prefix else "the top level"
            raise ConfigError(f"unknown config key {dotted!r} in {where}; known keys: {_known(obj)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} is a section; write it as a [{dotted}] table")
            _merge(current, value, prefix=f"{dotted}.")
        else:
            setattr(obj, key, _coerce(dotted, value, types[key]))


def set_dotted(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set ``section.key`` (or a top-level key) on ``cfg``, converting ``value`` to the field's type."""
    parts = key.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        types = _field_types(obj)
        if part not in types:
            where = f"section [{'.'.join(parts[:i])}]" if i else "the top level"
            raise ConfigError(f"unknown config key {key!r} ({part!r} is not in {where}); known keys there: {_known(obj)}")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise ConfigError(f"config key {key!r} is a section; set one of its keys, e.g. {key}.{fields(getattr(obj, part))[0].name}=...")
            setattr(obj, part, _coerce(key, value, types[part]))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"config key {key!r} goes inside {'.'.join(parts[: i + 1])!r}, which is a value, not a section")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a TOML value or a command-line string to the field type, or explain why not."""
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                as_float = float(value)  # accept "1e4" for step counts
                if not as_float.is_integer():
                    raise ValueError
                return int(as_float)
            if isinstance(value, int):
                return value
            raise ValueError
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
        if typ is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin is list:
            (inner,) = typing.get_args(typ)
            if isinstance(value, str):
                value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError
            return [_coerce(key, v.strip() if isinstance(v, str) else v, inner) for v in value]
    except (TypeError, ValueError):
        pass
    else:
        raise ConfigError(f"config key {key!r} has an unsupported type")  # pragma: no cover
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"config key {key!r} needs a {name} value, got {value!r}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be greater than 0, got {value}")


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key} must be 0 or more, got {value}")


def _auto_bool(key: str, value: Any) -> str:
    """"auto", "true" or "false" from a TOML bool or any spelling the bool options accept."""
    text = str(value).strip().lower()
    if text == "auto":
        return text
    if text in _TRUE | _FALSE:
        return "true" if text in _TRUE else "false"
    raise ConfigError(f"{key} must be auto, true or false, got {value!r}")


def compile_enabled(train: TrainSection, device_type: str) -> bool:
    """train.compile resolved for a device: auto compiles on CUDA (measured 1.3-1.6x there,
    bench/RESULTS.md) and not on the CPU (minutes of compile for a small gain)."""
    return _resolve_auto(train.compile, device_type)


def fused_head_enabled(train: TrainSection, device_type: str) -> bool:
    """train.fused_head resolved for a device: auto fuses on CUDA, where the logits are the
    largest single activation; the CPU keeps the plain head and loss."""
    return _resolve_auto(train.fused_head, device_type)


def _resolve_auto(value: str, device_type: str) -> bool:
    return value == "true" or (value == "auto" and device_type == "cuda")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def load_config(
    config_path: str | Path | None = None,
    preset: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> TrainConfig:
    """Resolve defaults <- preset <- config file <- overrides, then validate.

    With neither a config file nor a preset, the ``small`` preset is the base.
    """
    if preset is None and config_path is None:
        preset = "small"
    cfg = TrainConfig.from_preset(preset) if preset else TrainConfig()
    if config_path is not None:
        cfg = TrainConfig.from_toml(config_path, base=cfg)
    if overrides:
        cfg = cfg.with_overrides(overrides)
    return cfg.validate()
