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


def resolve_checkpoint(path: str | Path | None, error: type[Exception] = FileNotFoundError) -> Path:
    """The checkpoint ``.pth`` that a ``--checkpoint`` argument names; ``None`` means the bundled model.

    ``path`` may be a ``.pth`` file (or its name without the suffix, as ``save_checkpoint`` takes it),
    a checkpoint folder holding ``model.pth``, a training run folder (its latest complete
    checkpoint) or a run's ``checkpoints/`` folder. Anything else raises ``error`` (the caller's own
    user-error type: ``GenerationError``, ``EvalError``) with one sentence saying what to pass.
    """
    if path is None:
        bundled = bundled_checkpoint()
        if bundled is None:
            raise error("there is no bundled model in assets/models/ and no --checkpoint was given; pass "
                        "--checkpoint PATH (a .pth file, a checkpoint folder or a training run folder).")
        return bundled
    path = Path(path)
    if path.is_dir():
        if (path / "model.pth").is_file():
            return path / "model.pth"
        # torch-heavy helpers, imported only when a folder has to be searched
        from engine.model.checkpoint import checkpoint_paths
        from engine.train.checkpointing import latest_checkpoint

        latest = latest_checkpoint(path)  # the trainer's rule: `latest` if complete, else the newest complete one
        if latest is not None and (latest / "model.pth").is_file():
            return latest / "model.pth"
        named, _ = checkpoint_paths(path)  # a checkpoints/ folder given itself: its `latest` marker
        if named.is_file():
            return named
        raise error(f"there is no checkpoint at {path}: the folder holds none; pass a .pth file, a checkpoint "
                    "folder or a training run folder with checkpoints/ in it.")
    if path.is_file():
        return path
    with_suffix = path.with_name(path.name + ".pth")
    if path.suffix != ".pth" and with_suffix.is_file():
        return with_suffix
    raise error(f"there is no checkpoint at {path}: it does not exist; pass a .pth file, a checkpoint folder "
                "or a training run folder.")
