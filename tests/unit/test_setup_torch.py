"""`make run` / `make test` install the torch build that fits the machine (scripts/install_torch.py)."""
from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install_torch.py"


def _plan(tmp_path: Path, index: str, gpu: bool, torch: str = "auto") -> list[str]:
    """The script's dry run on a PATH that holds a fake nvidia-smi or none."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
        smi.chmod(0o755)
    env = dict(os.environ, PATH=str(bin_dir), PIANOMUSE_TORCH_CPU_INDEX=index)
    env.pop("TORCH", None)
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--torch", torch], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def cpu_index(tmp_path):
    """A local wheel index with a torch page, standing in for PyTorch's CPU index."""
    root = tmp_path / "index"
    (root / "torch").mkdir(parents=True)
    (root / "torch" / "index.html").write_text("<html><body></body></html>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_a_machine_without_a_gpu_gets_the_cpu_build_from_the_cpu_index(tmp_path, cpu_index):
    why, command = _plan(tmp_path, cpu_index, gpu=False)
    assert why.startswith("no NVIDIA GPU found: installing the CPU build of torch==2.13.0")
    assert command.endswith(f"-m pip install --index-url {cpu_index} torch==2.13.0")


def test_an_unreachable_cpu_index_falls_back_to_pips_own_index(tmp_path):
    why, command = _plan(tmp_path, f"http://127.0.0.1:{_closed_port()}/whl/cpu", gpu=False)
    assert "did not answer" in why and "pip's configured index" in why
    assert command.endswith("-m pip install torch==2.13.0") and "--index-url" not in command


def test_a_cuda_machine_gets_the_cuda_build_without_editing_anything(tmp_path, cpu_index):
    why, command = _plan(tmp_path, cpu_index, gpu=True)
    assert why.startswith("an NVIDIA GPU found: installing the CUDA build of torch==2.13.0")
    assert command.endswith("-m pip install torch==2.13.0")
    why, command = _plan(tmp_path, cpu_index, gpu=True, torch="cpu")  # the user's choice wins
    assert "--index-url" in command


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_makefile_installs_torch_through_the_script_and_has_a_fast_target(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    setup = subprocess.run(["make", "-n", "setup"], cwd=tmp_path, capture_output=True, text=True, timeout=60).stdout
    assert "scripts/install_torch.py --torch auto" in setup
    cuda = subprocess.run(["make", "-n", "setup", "TORCH=cuda"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert "--torch cuda" in cuda
    fast = subprocess.run(["make", "-n", "test-fast"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert '-m "not slow"' in fast


def test_the_readme_set_up_matches_ci_and_works_in_a_root_container():
    readme = (REPO / "README.md").read_text()
    (apt,) = [line.strip("`") for line in readme.splitlines() if "apt-get install" in line]
    assert not apt.startswith("sudo") and "--no-install-recommends" in apt  # root containers have no sudo
    ci = next(line for line in (REPO / ".ci" / "run").read_text().splitlines() if "apt-get install" in line)
    packages = {w for w in apt.split()[2:] if not w.startswith("-")}
    assert packages <= set(ci.split()), "CI installs what the README tells users to install"
    assert "make test-fast" in readme and "about 10 minutes on 2 CPU cores" in readme
    assert "torch==2.13.0" in readme and "TORCH=cpu" in readme
