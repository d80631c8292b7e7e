from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def pytest_collection_modifyitems(config, items):
    """Integration tests (real jackd, FluidSynth, process groups, GPUs) are all `slow`; GPU tests
    skip on CPU machines with a visible reason (CI has no GPU)."""
    for item in items:
        if Path(str(item.fspath)).is_relative_to(REPO / "tests" / "integration"):
            item.add_marker(pytest.mark.slow)
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001  # pragma: no cover - no torch, no GPU
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (run on the lent GPU machine; see bench/RESULTS.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
