"""The engine never pulls in the UI; the model and kernels need nothing but torch."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import engine


def imported_after(code: str) -> set[str]:
    """Top-level module names in sys.modules after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def engine_subpackages() -> list[str]:
    root = Path(engine.__file__).parent
    return sorted(f"engine.{m.name}" for m in pkgutil.iter_modules([str(root)]) if m.ispkg)


def test_engine_and_its_subpackages_never_import_the_ui():
    packages = engine_subpackages()
    assert {"engine.model", "engine.kernels"} <= set(packages)
    mods = imported_after("import engine\n" + "\n".join(f"import {p}" for p in packages))
    assert "textual" not in mods and "pianomuse_tui" not in mods


def test_import_engine_is_cheap_and_public_names_load_lazily():
    assert "torch" not in imported_after("import engine")
    mods = imported_after("import engine\nengine.PianoMuseRWKV\nengine.wkv7")
    assert "torch" in mods and "textual" not in mods


def test_model_and_kernels_import_with_torch_alone():
    mods = imported_after("import engine.model, engine.kernels, engine.kernels.wkv7, engine.model.pianomuse, engine.model.vocab")
    assert not mods & {"miditok", "symusic", "mido", "rtmidi", "textual", "pianomuse_tui", "typer", "rich", "rwkv"}
