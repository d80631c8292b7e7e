"""Shared output helpers for headless commands: rich on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)
# soft wrap: a sentence on stderr stays one line in a pipe or a log (a terminal wraps it itself)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def is_tty() -> bool:
    return sys.stdout.isatty()


def fail(message: str, code: int = 2, soft_wrap: bool = True) -> "typer.Exit":
    """Print one clear sentence to stderr and exit with ``code``.

    The message is escaped: engine sentences name TOML sections like ``[tokenizer]``, which rich
    would otherwise take for markup (eating them, or raising on a stray ``[/...]``).
    """
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=soft_wrap)
    raise typer.Exit(code)
