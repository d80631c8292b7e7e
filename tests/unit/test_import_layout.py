"""The layout is a rule the suite checks: the import contracts of pyproject.toml ([tool.importlinter]),
every engine module importing on its own in a fresh interpreter without the UI, a headless command
that never loads the app, and ruff (which also checks that every `# noqa` marker silences something).
"""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path


import pytest

import engine

REPO = Path(__file__).resolve().parents[2]
UI = ("pianomuse_tui", "textual", "rich", "typer")
NOT_FOR_THE_MODEL = ("miditok", "symusic", "mido", "rtmidi", "matplotlib", "rwkv")


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_import_contracts_hold():
    out = _python("import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


# Runs in a fresh interpreter: numpy and torch are imported once (any engine module may use them),
# then each module is imported in a process of its own, forked from that state, and reports which
# of the watched packages it brought in. A module that only imports because another one ran first
# fails here; forking skips re-importing torch 58 times.
_EACH_MODULE = """
import importlib, json, os, sys
import numpy, torch
results = {}
for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            result = {"loaded": sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))}
        except BaseException as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    results[name] = json.loads(text) if text else {"error": "the process died while importing"}
print(json.dumps(results))
"""


@pytest.mark.slow
def test_every_engine_module_imports_alone_without_the_ui():
    modules = sorted(m.name for m in pkgutil.walk_packages(engine.__path__, "engine."))
    assert len(modules) > 40 and "engine.train.trainer" in modules
    out = subprocess.run([sys.executable, "-c", _EACH_MODULE, json.dumps(modules), json.dumps(UI + NOT_FOR_THE_MODEL)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.splitlines()[-1])
    assert sorted(results) == modules
    failures = {module: r["error"] for module, r in results.items() if "error" in r}
    assert not failures, failures
    ui = {module: r["loaded"] for module, r in results.items() if set(r["loaded"]) & set(UI)}
    assert not ui, f"engine modules that load the UI: {ui}"
    heavy = {module: r["loaded"] for module, r in results.items()
             if module.startswith(("engine.model", "engine.kernels")) and set(r["loaded"]) & set(NOT_FOR_THE_MODEL)}
    assert not heavy, f"model/kernel modules that need more than torch: {heavy}"


@pytest.mark.slow
def test_a_headless_command_never_loads_the_app(tmp_path):
    config = tmp_path / "data.toml"
    config.write_text("[check]\ntokenize = false\n")
    folder = REPO / "assets" / "corpus" / "piano"
    out = _python(
        "import sys\n"
        "from pianomuse_tui.cli import app\n"
        f"try:\n    app(['--headless', 'check', {str(folder)!r}, '--config', {str(config)!r}, '--workers', '1'])\n"
        "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & {'textual'}),"
        " sorted(m for m in sys.modules if m.startswith(('pianomuse_tui.app', 'pianomuse_tui.panes'))))\n",
        timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED [] []" in out.stdout, out.stdout[-2000:]


def test_ruff_finds_nothing_and_every_noqa_marker_is_needed():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_the_train_config_and_the_panes_load_without_torch():
    """The app reads presets and config names from engine.train.config; the app starts without torch."""
    out = _python("import sys, engine.train.config, pianomuse_tui.app; print('TORCH', 'torch' in sys.modules)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TORCH False" in out.stdout
