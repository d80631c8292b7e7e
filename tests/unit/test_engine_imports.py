"""The engine never pulls in the UI; the model and kernels need nothing but torch.

One fresh interpreter imports in stages and reports the top-level modules loaded after each.
"""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import engine

pytestmark = pytest.mark.slow  # one interpreter imports torch and every subpackage

STAGES = {
    "engine": "import engine",
    "lazy names": "engine.PianoMuseRWKV, engine.wkv7",
    "model+kernels": "import engine.model, engine.kernels, engine.kernels.wkv7, engine.model.pianomuse, engine.model.vocab",
}


def engine_subpackages() -> list[str]:
    root = Path(engine.__file__).parent
    return sorted(f"engine.{m.name}" for m in pkgutil.iter_modules([str(root)]) if m.ispkg)


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    stages = dict(STAGES, everything="\n".join(f"import {p}" for p in engine_subpackages()))
    lines = ["import sys, json", "seen = {}"]
    for name, code in stages.items():
        lines += [code, f"seen[{name!r}] = sorted({{m.split('.')[0] for m in sys.modules}})"]
    lines.append("print(json.dumps(seen))")
    done = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return {k: set(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def test_engine_and_all_its_subpackages_never_import_the_ui(loaded):
    assert {"engine.model", "engine.kernels"} <= set(engine_subpackages())
    assert not loaded["everything"] & {"textual", "pianomuse_tui"}


def test_import_engine_is_cheap_and_public_names_load_lazily(loaded):
    assert "torch" not in loaded["engine"]
    assert "torch" in loaded["lazy names"]


def test_model_and_kernels_import_with_torch_alone(loaded):
    assert not loaded["model+kernels"] & {"miditok", "symusic", "mido", "rtmidi", "textual", "pianomuse_tui", "typer", "rich", "rwkv", "triton"}
