"""`pianomuse-tui` opens the app; `pianomuse-tui --headless <command>` runs engine commands.

Each area registers its commands from its own module in ``pianomuse_tui.headless``. Commands that
have a pane (check, train, generate) open the app on that pane unless ``--headless`` is given.
"""
from __future__ import annotations

import sys
from typing import Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .headless import data_cmd, eval_cmd, generate_cmd, kernels_cmd, model_cmd, train_cmd
from .requests import PaneArgs

class _RootContext(TyperGroup.context_class):  # typer's own click Context
    """Usage lines name the one root option a user must know: ``pianomuse-tui [--headless] COMMAND``."""

    @property
    def command_path(self) -> str:
        path = super().command_path
        return path if self.parent is not None else f"{path} [--headless]"


class _RootGroup(TyperGroup):
    context_class = _RootContext


app = typer.Typer(
    name="pianomuse-tui",
    cls=_RootGroup,
    # plain help: rich markup would eat "[tokenizer]" in help texts and print a <bool> type beside every flag
    rich_markup_mode=None,
    help="Train RWKV-7 / v8 models on piano MIDI and play them live. Without --headless, opens the terminal UI.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pianomuse-tui {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    headless: bool = typer.Option(False, "--headless", help="Run the command in the terminal without the UI."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    ctx.obj = {"headless": headless}
    if ctx.invoked_subcommand is None:
        if headless:
            typer.echo(ctx.get_help())
            raise typer.Exit()
        open_app(pane=None, args={})


def open_app(pane: str | None, args: PaneArgs | None) -> None:
    """Open the Textual app (optionally on a pane, with that command's arguments)."""
    from .app import run_app  # textual loads only when the UI is wanted

    run_app(pane=pane, args=args)


def wants_app(ctx: typer.Context) -> bool:
    """True when a pane command should open the UI instead of running headless."""
    obj = ctx.find_root().obj or {}
    return not obj.get("headless", False) and sys.stdout.isatty()


for _module in (model_cmd, data_cmd, train_cmd, kernels_cmd, generate_cmd, eval_cmd):
    _module.register(app)


def main() -> None:
    app(prog_name="pianomuse-tui")


if __name__ == "__main__":
    main()
