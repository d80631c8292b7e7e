"""Every command's --help, rendered as a user sees it: nothing eaten, nothing contradictory."""
from __future__ import annotations

import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from pianomuse_tui.cli import app


def _commands(command, path=()):
    """(argv path, click command) for the root and every command and subcommand below it."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(get_command(app)))


def _words(text: str) -> str:
    return " ".join(text.split())


def _letters(text: str) -> str:
    """Without whitespace: help wraps lines at hyphens too ("--turn-" / "bars")."""
    return "".join(text.split())


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "root" for p, _ in COMMANDS])
def test_help_shows_every_help_text_whole_and_the_real_usage(path, command):
    result = CliRunner().invoke(app, ["--headless", *path, "--help"], prog_name="pianomuse-tui", terminal_width=100)
    assert result.exit_code == 0, result.output
    shown = _letters(result.output)
    usage = result.output.splitlines()[0]
    assert usage.startswith("Usage: pianomuse-tui [--headless]"), usage
    assert " ".join(path) in usage
    for param in command.params:
        if param.help:
            # every word survives, brackets included ("data.toml with [tokenizer] and [check] settings")
            assert _letters(param.help) in shown, f"{'/'.join(path)} {param.name}: help text lost in\n{result.output}"
        if getattr(param, "is_flag", False):
            flag = param.opts[0]
            assert not re.search(rf"{re.escape(flag)}\S*\s+<", result.output), f"{flag} is a flag, shown with a type"
        if param.help and "(default" in param.help:
            # a default told in words is the only one shown
            assert not getattr(param, "show_default", False) or param.default is None, \
                f"{'/'.join(path)} {param.name} shows two defaults"
    assert "<bool>" not in result.output


def test_check_help_keeps_the_toml_section_names():
    result = CliRunner().invoke(app, ["--headless", "check", "--help"], prog_name="pianomuse-tui")
    shown = _words(result.output)
    assert "data.toml with [tokenizer] and [check] settings" in shown
    assert "(default 30)" in shown and "default: 0.0" not in shown
