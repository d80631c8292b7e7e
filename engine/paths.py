"""Where the bundled assets live (the project is installed editable, so they sit beside the package)."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"
CORPUS_DIR = ASSETS / "corpus"
MODELS_DIR = ASSETS / "models"
CONFIGS_DIR = ASSETS / "configs"
CSRC_DIR = REPO_ROOT / "csrc"


def bundled_checkpoint() -> Path | None:
    """The bundled model (``assets/models/*.pth`` with its sidecar ``.json``), or None if there is none.

    With several bundled checkpoints the first by name wins, so the choice is stable. A ``.pth``
    without its sidecar is not a bundled model: it carries no tokenizer to generate with.
    """
    if not MODELS_DIR.is_dir():
        return None
    for pth in sorted(MODELS_DIR.glob("*.pth")):
        if pth.with_suffix(".json").is_file():
            return pth
    return None
