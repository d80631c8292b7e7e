"""Install torch==2.13.0 into the interpreter running this script: the build that fits the machine.

`make run` / `make test` call it when the venv has no torch yet (a torch already there is kept).

    TORCH=auto (default)  an NVIDIA GPU answers `nvidia-smi -L`: the CUDA build, else the CPU build
    TORCH=cuda            the CUDA build: PyPI's Linux wheel of torch (it pulls the CUDA libraries, ~3 GB)
    TORCH=cpu             the CPU build from PyTorch's CPU wheel index (about 200 MB, no CUDA libraries)

When the CPU index does not answer within a few seconds (an offline mirror, a firewall), pip's
own configuration is used instead (PyPI or the mirror it names), and the script says so.
Standard library only: it runs before anything else is installed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

TORCH = "torch==2.13.0"
CPU_INDEX = os.environ.get("PIANOMUSE_TORCH_CPU_INDEX", "https://download.pytorch.org/whl/cpu")
REACH_TIMEOUT_S = 5.0


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver that lists at least one GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def index_answers(index: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    """The index serves a torch page within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(f"{index.rstrip('/')}/torch/", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def plan(kind: str) -> tuple[list[str], str]:
    """(pip arguments, one line saying which build and why) for TORCH=kind."""
    if kind == "auto":
        kind = "cuda" if has_nvidia_gpu() else "cpu"
        found = "an NVIDIA GPU found" if kind == "cuda" else "no NVIDIA GPU found"
    else:
        found = f"TORCH={kind}"
    if kind == "cuda":
        return ["install", TORCH], f"{found}: installing the CUDA build of {TORCH} from PyPI (about 3 GB)"
    if index_answers(CPU_INDEX):
        return (["install", "--index-url", CPU_INDEX, TORCH],
                f"{found}: installing the CPU build of {TORCH} from {CPU_INDEX} (about 200 MB)")
    return (["install", TORCH],
            f"{found}: {CPU_INDEX} did not answer, so {TORCH} comes from pip's configured index "
            "(on plain PyPI that is the CUDA build; TORCH=cpu with a reachable index avoids it)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default=os.environ.get("TORCH", "auto"), choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dry-run", action="store_true", help="print the choice and the pip command, install nothing")
    args = parser.parse_args(argv)
    pip_args, why = plan(args.torch)
    command = [sys.executable, "-m", "pip", *pip_args]
    print(why, flush=True)
    print(" ".join(command), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
