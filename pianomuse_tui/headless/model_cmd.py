"""Headless commands for the model area: `pianomuse-tui --headless model info PATH`."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from .console import console, fail

model_app = typer.Typer(help="Inspect RWKV-7 / v8 checkpoints.", no_args_is_help=True)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def wkv_backend_here(head_size: int | None = None) -> tuple[str, str]:
    """(backend, why): what WKV7 backend="auto" runs on this machine (for this head size)."""
    import torch

    from engine.kernels.wkv7 import explain_backend

    return explain_backend("auto", "cuda" if torch.cuda.is_available() else "cpu", head_size)


@model_app.command("info")
def info(
    path: Path = typer.Argument(..., help="A checkpoint: NAME.pth, NAME, or a run's checkpoint folder (holding model.pth)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Show a checkpoint's architecture, sizes, parameter count, dtype and the WKV backend used here."""
    from engine.model.checkpoint import CheckpointError, inspect_checkpoint  # torch loads only here

    try:
        found = inspect_checkpoint(path)
    except CheckpointError as e:
        fail(str(e))
    config = found["config"]
    backend, why = wkv_backend_here(config.head_size)
    tokenizer = found["sidecar"].get("tokenizer")
    report = {
        "path": found["path"],
        "architecture": config.arch,
        "description": "RWKV-7 x070" if config.arch == "x070" else "v8 (x070 + DeepEmbed)",
        "layers": config.n_layer,
        "width": config.n_embd,
        "heads": config.n_head,
        "head_size": config.head_size,
        "vocab_size": config.vocab_size,
        "low_rank": {"w": config.dim_w, "a": config.dim_a, "v": config.dim_v, "g": config.dim_g},
        "parameters": found["parameters"],
        "dtype": found["dtype"],
        "file_bytes": found["file_bytes"],
        "sidecar": found["has_sidecar"],
        "tokenizer": tokenizer,
        "wkv_backend": backend,
        "wkv_backend_reason": why,
    }
    if as_json:
        typer.echo(json.dumps(report))
        return
    from rich.table import Table

    table = Table(title=f"{Path(found['path']).name}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("architecture", f"{config.arch}: {report['description']}"),
        ("layers", str(config.n_layer)),
        ("width (n_embd)", str(config.n_embd)),
        ("heads x head size", f"{config.n_head} x {config.head_size}"),
        ("vocab", str(config.vocab_size)),
        ("low-rank w/a/v/g", f"{config.dim_w}/{config.dim_a}/{config.dim_v}/{config.dim_g}"),
        ("parameters", f"{found['parameters']:,} ({found['parameters'] / 1e6:.2f}M)"),
        ("dtype", found["dtype"]),
        ("file size", _human_bytes(found["file_bytes"])),
        ("tokenizer", _describe_tokenizer(tokenizer) if tokenizer else ("none in sidecar" if found["has_sidecar"] else "no sidecar (official file)")),
        ("WKV backend (auto)", f"{backend} ({why})"),
    ]
    for field, value in rows:
        table.add_row(field, value)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.add_typer(model_app, name="model")


def _describe_tokenizer(tokenizer: dict) -> str:
    """One line for the table from the sidecar's tokenizer config (``PianoTokenizer.to_config``'s
    fields; the full config is in the sidecar and in --json)."""
    labels = {"tokenization": "{}", "piano_policy": "piano policy {}", "vocab_size": "vocab {}", "miditok_version": "MidiTok {}"}
    parts = [label.format(tokenizer[key]) for key, label in labels.items() if tokenizer.get(key) is not None]
    return ", ".join(parts) or json.dumps(tokenizer)
