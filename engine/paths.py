"""Where the bundled assets live (the project is installed editable, so they sit beside the package).

Constants only: the rules for finding checkpoints and runs live in ``engine.rundir``.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"
CORPUS_DIR = ASSETS / "corpus"
MODELS_DIR = ASSETS / "models"
CONFIGS_DIR = ASSETS / "configs"
CSRC_DIR = REPO_ROOT / "csrc"

