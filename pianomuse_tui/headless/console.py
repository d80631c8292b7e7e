"""Shared output helpers for headless commands: rich on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys

import typer
from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def is_tty() -> bool:
    return sys.stdout.isatty()


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print one clear sentence to stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
