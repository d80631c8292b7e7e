"""Checkpoint I/O: official RWKV-7 state_dicts (spec section 5) plus a PianoMuse sidecar JSON.

``NAME.pth`` is a plain state_dict with the official key names and shapes, so the public tools
(e.g. the ``rwkv`` package) read an x070 file unchanged. ``NAME.json`` beside it holds what a
state_dict cannot: ``{"format": "pianomuse-checkpoint/1", "model": ModelConfig dict,
"tokenizer": tokenizer config or null, "extra": {...}}``.

Loading accepts official files too (bf16, with or without layer 0's unused v0/v1/v2, keys with a
leading ``_forward_module.``), reads every size from the tensor shapes, checks every shape, and
explains a mismatch in one sentence (``CheckpointError``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from engine.atomic import file_sha256, write_with
from engine.rundir import damaged_hint, marked_checkpoint

from .config import ConfigError, ModelConfig, check_head_size_env
from .rwkv7 import RWKV7

SIDECAR_FORMAT = "pianomuse-checkpoint/1"
PREFIX = "_forward_module."
# layer 0 defines v_first and never uses its value-residual parameters; released files may omit them
OPTIONAL_KEYS = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")

# key fragments of other RWKV generations, to name what a foreign file is
OLDER_GENERATIONS = {
    "att.time_mix_k": "RWKV-4",
    "att.time_faaaa": "RWKV-5/6",
    "att.time_maa_x": "RWKV-6",
    "ffn.s_emb": "RWKV-8 DeepEmbed (s_emb variant)",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit (one clear sentence)."""


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(NAME.pth, NAME.json) for ``path`` given as NAME, NAME.pth, a checkpoint folder holding
    model.pth, or a run folder whose ``checkpoints/latest`` names the newest one."""
    p = Path(path)
    if p.is_dir():
        newest = marked_checkpoint(p) if not (p / "model.pth").exists() else None
        p = (newest if newest is not None else p) / "model.pth"
    if p.suffix != ".pth" and not p.is_file():
        p = p.with_name(p.name + ".pth")
    return p, p.with_suffix(".json")


def save_checkpoint(model: RWKV7, path, tokenizer: dict | None = None, extra: dict | None = None,
                    state_dict: dict | None = None, sums: dict[str, str] | None = None) -> Path:
    """Write ``NAME.pth`` (official state_dict) and ``NAME.json`` (sidecar). Returns the .pth path.

    ``state_dict`` replaces ``model.state_dict()`` where the caller gathered it (sharded training).
    The sidecar's ``sha256`` holds the weights' checksum (checked on every load) and ``sums``,
    the checksums of files saved beside it (a training checkpoint's trainer.pt).
    """
    pth, sidecar_path = checkpoint_paths(path)
    source = model.state_dict() if state_dict is None else state_dict
    state = {k: v.detach().to("cpu").contiguous() for k, v in source.items()}
    # each file is written beside and renamed: a crash mid-save never leaves a truncated one behind
    digest = {}
    write_with(pth, lambda tmp: (torch.save(state, tmp), digest.setdefault("weights", file_sha256(tmp))))
    sidecar = {"format": SIDECAR_FORMAT, "model": model.config.to_dict(), "tokenizer": tokenizer, "extra": extra or {},
               "sha256": {**digest, **(sums or {})}}
    write_with(sidecar_path, lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2) + "\n"))
    return pth


def read_sidecar(path) -> dict | None:
    """The sidecar dict of a checkpoint, or None when there is none (official files)."""
    _, sidecar_path = checkpoint_paths(path)
    if not sidecar_path.is_file():
        return None
    try:
        data = json.loads(sidecar_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{sidecar_path} is not valid JSON ({e}); fix or delete it to load the weights alone") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise CheckpointError(f"{sidecar_path} is not a PianoMuse sidecar (expected format {SIDECAR_FORMAT!r}); delete it to load the weights alone")
    return data


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The state_dict in a .pth file, prefix stripped; CheckpointError if it is not one."""
    pth, _ = checkpoint_paths(path)
    if not pth.exists():
        raise CheckpointError(f"no checkpoint at {pth}; pass the path of a .pth file, a checkpoint folder holding model.pth, or a run folder")
    if not pth.is_file():
        raise CheckpointError(f"{pth} is not a file; pass the path of a .pth checkpoint")
    try:
        try:
            raw = torch.load(pth, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            raw = torch.load(pth, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # noqa: BLE001 (torch raises many kinds for a bad file)
        size = pth.stat().st_size
        raise CheckpointError(
            f"cannot read {pth} ({size} bytes) as a PyTorch state_dict: the file is truncated, corrupt or not a checkpoint ({type(e).__name__}); re-download or re-save it"
        ) from None
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]  # Lightning-style wrapper
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{pth} does not hold a state_dict of tensors; pass an RWKV-7 model checkpoint (.pth)")
    return {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in raw.items()}


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def config_from_state_dict(sd: dict[str, torch.Tensor], where: str = "checkpoint") -> ModelConfig:
    """Infer the ModelConfig from tensor shapes alone (official files carry no config)."""
    for fragment, generation in OLDER_GENERATIONS.items():
        if any(fragment in k for k in sd):
            raise CheckpointError(f"{where} is an {generation} model; PianoMuse loads RWKV-7 (x070) and v8 (x080) checkpoints only")
    if "emb.weight" not in sd or "blocks.0.att.r_k" not in sd:
        missing = "emb.weight" if "emb.weight" not in sd else "blocks.0.att.r_k"
        raise CheckpointError(f"{where} is not an RWKV-7 checkpoint (it has no {missing} tensor); pass an x070 or x080 model file")
    emb, r_k = sd["emb.weight"], sd["blocks.0.att.r_k"]
    if emb.dim() != 2 or r_k.dim() != 2:
        raise CheckpointError(f"{where} has emb.weight {_shape(emb)} and blocks.0.att.r_k {_shape(r_k)}, expected [V, C] and [H, N]; it is not an RWKV-7 checkpoint")
    V, C = emb.shape
    H, N = r_k.shape
    if H * N != C:
        raise CheckpointError(f"{where}: blocks.0.att.r_k is {H}x{N} heads but the width is {C}; the file mixes tensors of different models")
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    L = max(layers) + 1

    def low_rank(name: str) -> int:
        key = f"blocks.0.att.{name}"
        if key not in sd:
            raise CheckpointError(f"{where} has no {key} tensor; it is truncated or not an RWKV-7 x070/x080 checkpoint")
        t = sd[key]
        if t.dim() != 2 or t.shape[0] != C:
            raise CheckpointError(f"{where}: {key} has shape {_shape(t)} but should be [{C}, rank]; it is not an RWKV-7 x070/x080 checkpoint")
        return int(t.shape[1])

    arch = "x080" if any(k.endswith("ffn.enn.weight") for k in sd) else "x070"
    try:
        return ModelConfig(arch=arch, n_layer=L, n_embd=C, vocab_size=V, head_size=N,
                           dim_w=low_rank("w1"), dim_a=low_rank("a1"), dim_v=low_rank("v1") if "blocks.0.att.v1" in sd else _dim_v_later(sd, L, where), dim_g=low_rank("g1"))
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None


def _dim_v_later(sd, L, where) -> int:
    """Dv from a later layer (layer 0's v1 may be absent in released files)."""
    if L < 2 or "blocks.1.att.v1" not in sd:
        raise CheckpointError(f"{where} has no att.v1 tensor in any layer; it is truncated or not an RWKV-7 checkpoint")
    return int(sd["blocks.1.att.v1"].shape[1])


def check_state_dict(sd: dict[str, torch.Tensor], config: ModelConfig, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Compare every tensor with what ``config`` expects; fill layer 0's optional v0/v1/v2.

    Returns the state_dict to load; raises CheckpointError naming the first problem.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in RWKV7(config, init=False).state_dict().items()}
    sd = dict(sd)
    missing = [k for k in expected if k not in sd and k not in OPTIONAL_KEYS]
    unexpected = [k for k in sd if k not in expected]
    if missing:
        has_enn = any(k.endswith("ffn.enn.weight") for k in sd)
        if has_enn != config.deep_embed:
            raise CheckpointError(f"{where} is a {'v8 (x080)' if has_enn else 'RWKV-7 x070'} checkpoint but a {config.arch} model was asked for; load it with arch={'x080' if has_enn else 'x070'}")
        raise CheckpointError(f"{where} is missing {len(missing)} tensor(s) (first: {missing[0]}); the file is truncated or was saved from a different model")
    if unexpected:
        layer_keys = [k for k in unexpected if re.match(r"blocks\.(\d+)\.", k)]
        if layer_keys and any(int(re.match(r"blocks\.(\d+)\.", k).group(1)) >= config.n_layer for k in layer_keys):
            raise CheckpointError(f"{where} has more than {config.n_layer} layers (found {layer_keys[0]}); it does not match the requested model")
        raise CheckpointError(f"{where} has {len(unexpected)} tensor(s) an {config.arch} model does not have (first: {unexpected[0]}); it is a different architecture")
    for k, shape in expected.items():
        if k not in sd:
            continue
        if tuple(sd[k].shape) != shape:
            got = _shape(sd[k])
            if k.endswith("att.r_k"):
                raise CheckpointError(f"{where} has head size {got[-1]} ({k} is {got}) but the model expects head size {config.head_size} ({list(shape)}); use head_size={got[-1]}")
            raise CheckpointError(f"{where}: {k} has shape {got} but a {config.describe()} needs {list(shape)}; the file belongs to a different model size")
    if any(k not in sd for k in OPTIONAL_KEYS):
        from .init import init_block_tensor

        for k in OPTIONAL_KEYS:
            if k not in sd:
                t = torch.empty(expected[k], dtype=torch.float32)
                init_block_tensor(k[len("blocks.0."):], t, config, 0)
                sd[k] = t
    return sd


def verify_weights(pth: Path, sidecar: dict | None) -> None:
    """CheckpointError when ``pth`` does not match the checksum its sidecar recorded (files saved
    before checksums existed, and official files without a sidecar, are not checked)."""
    sums = (sidecar or {}).get("sha256")
    expected = sums.get("weights") if isinstance(sums, dict) else None
    if not isinstance(expected, str) or not pth.is_file():
        return
    if file_sha256(pth) != expected:
        raise CheckpointError(f"{pth} does not match the checksum in its sidecar: the file is damaged (changed since it was "
                              f"saved) or the .json belongs to another checkpoint; use an earlier checkpoint{damaged_hint(pth)}")


def _validated(path, config: ModelConfig | None):
    """Read and check a checkpoint without building a model -> (pth, state_dict, config, sidecar)."""
    pth, _ = checkpoint_paths(path)
    sidecar = read_sidecar(path)
    verify_weights(pth, sidecar)
    sd = read_state_dict(path)
    found = config_from_state_dict(sd, where=str(pth))
    if sidecar is not None and isinstance(sidecar.get("model"), dict):
        try:
            declared = ModelConfig.from_dict(sidecar["model"])
        except (ConfigError, TypeError) as e:
            raise CheckpointError(f"the sidecar of {pth} holds an invalid model config ({e}); fix or delete it") from None
        if declared.to_dict() != found.to_dict():
            raise CheckpointError(f"the sidecar of {pth} describes {declared.describe()} but the weights are {found.describe()}; the .json belongs to another checkpoint")
    if config is not None and config.to_dict() != found.to_dict():
        if config.head_size != found.head_size:
            raise CheckpointError(f"{pth} has head size {found.head_size} but head size {config.head_size} was asked for; drop the config or use head_size={found.head_size}")
        if config.arch != found.arch:
            raise CheckpointError(f"{pth} is {found.describe()} but arch {config.arch!r} was asked for; drop the config or use arch={found.arch!r}")
        raise CheckpointError(f"{pth} holds {found.describe()} but the given config is {config.describe()}; drop the config to use the file's own shapes")
    try:
        check_head_size_env(found.head_size)
    except ConfigError as e:
        raise CheckpointError(f"{pth}: {e}") from None
    sd = check_state_dict(sd, found, where=str(pth))
    if sidecar is None:
        sidecar = {"format": SIDECAR_FORMAT, "model": found.to_dict(), "tokenizer": None, "extra": {}}
    return pth, sd, found, sidecar


def load_checkpoint(path, device="cpu", dtype=torch.float32, *, config: ModelConfig | None = None, wkv_backend: str = "auto"):
    """Load ``path`` -> (RWKV7 in ``dtype`` on ``device``, eval mode, sidecar dict).

    ``config``, if given, must match the file (a clear error otherwise). The sidecar dict is
    ``{"format", "model", "tokenizer", "extra"}``; for official files without one, it is built
    from the shapes with tokenizer None.
    """
    _, sd, found, sidecar = _validated(path, config)
    with torch.device("meta"):
        model = RWKV7(found, init=False, wkv_backend=wkv_backend)
    model.load_state_dict(sd, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    return model, sidecar


def inspect_checkpoint(path) -> dict:
    """What a checkpoint holds, checked like a load but without building the model."""
    pth, sd, found, sidecar = _validated(path, None)
    return {
        "path": str(pth),
        "config": found,
        "sidecar": sidecar,
        "has_sidecar": checkpoint_paths(path)[1].is_file(),
        "dtype": file_dtype(sd),
        "parameters": sum(t.numel() for t in sd.values()),
        "file_bytes": pth.stat().st_size,
    }


def file_dtype(sd: dict[str, torch.Tensor]) -> str:
    """The storage dtype(s) of a state_dict, e.g. "bfloat16" or "float32+bfloat16"."""
    names = sorted({str(t.dtype).replace("torch.", "") for t in sd.values()})
    return "+".join(names)
