"""Build and load the CUDA kernels in ``csrc/`` (JIT through torch.utils.cpp_extension + ninja).

The first use compiles for the GPU that is present (``torch.cuda.get_device_capability``) into a
cache directory keyed by torch, CUDA and architecture; later uses load the cached library. Every
reason a build cannot happen is one sentence (``BuildError.reason``), and ``load_kernels`` turns a
failure into a loud warning plus ``False`` so callers fall back to the PyTorch path.

torch guards a build directory with a file named ``lock`` that a killed build leaves behind, after
which every later build waits forever. Our builds hold ``build.lock`` (``filelock``, released by
the OS when its holder dies), so a torch ``lock`` found under it is a dead build's: explained and
removed (``build_lock``).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parents[2] / "csrc"
SOURCES = ("wkv7.cu", "wkv7_binding.cpp")
EXTENSION_NAME = "pianomuse_wkv7"
# Used when no GPU can be asked (ahead-of-time builds): Ampere, Ada, Hopper, plus PTX for newer.
FALLBACK_ARCHS = ("8.0", "8.6", "8.9", "9.0")
LOCK_WAIT_S = 900.0  # how long to wait on a live build by another process


class BuildError(RuntimeError):
    """A build that cannot or did not succeed; ``reason`` is one sentence saying what to do."""

    def __init__(self, reason: str, log_path: Path | None = None):
        super().__init__(reason)
        self.reason = reason
        self.log_path = log_path


# ------------------------------------------------------------------------------------------------
# preflight: the toolchain


CUDA_HOME_CANDIDATES = ("/usr/local/cuda",)  # looked at after $CUDA_HOME and PATH


def find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:  # an explicit toolkit wins; a wrong one is reported rather than silently replaced
        nvcc = Path(home) / "bin" / "nvcc"
        return str(nvcc) if nvcc.exists() else None
    found = shutil.which("nvcc")
    if found:
        return found
    for cand in CUDA_HOME_CANDIDATES:
        if (Path(cand) / "bin" / "nvcc").exists():
            return str(Path(cand) / "bin" / "nvcc")
    return None


def nvcc_version(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def find_cxx() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def preflight(need_gpu: bool = True) -> str | None:
    """None when a build can be attempted, else one sentence saying what is missing."""
    torch_cuda = torch.version.cuda
    if torch_cuda is None:
        return (f"this PyTorch ({torch.__version__}) is a CPU-only build, so CUDA kernels cannot load; "
                "install a CUDA build of PyTorch to use them.")
    if need_gpu and not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch, so the CUDA kernels are not used here."
    nvcc = find_nvcc()
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if nvcc is None and home:
        return f"CUDA_HOME is {home} but it has no bin/nvcc; point CUDA_HOME at a CUDA {torch_cuda} toolkit."
    if nvcc is None:
        return (f"nvcc (the CUDA compiler) was not found; install the CUDA {torch_cuda} toolkit or set "
                "CUDA_HOME to one.")
    found = nvcc_version(nvcc)
    if found is None:
        return f"{nvcc} did not report its version; check that the CUDA toolkit there is intact."
    if found.split(".")[0] != torch_cuda.split(".")[0]:
        return (f"nvcc at {nvcc} is CUDA {found} but PyTorch was built with CUDA {torch_cuda}; install a "
                f"CUDA {torch_cuda.split('.')[0]}.x toolkit or point CUDA_HOME at one.")
    if find_cxx() is None:
        return "no C++ compiler (c++, g++ or clang++) is on PATH; install one (e.g. build-essential)."
    if shutil.which("ninja") is None:
        try:
            import ninja  # noqa: F401
        except ImportError:
            return "ninja is not installed; run `pip install ninja`."
    return None


# ------------------------------------------------------------------------------------------------
# architecture and cache


def target_archs() -> list[str]:
    """["9.0"] for the GPU present (PIANOMUSE_CUDA_ARCHS="8.0;9.0" overrides), else the fallback list."""
    env = os.environ.get("PIANOMUSE_CUDA_ARCHS")
    if env:
        return [x.strip() for x in re.split(r"[;, ]+", env) if x.strip()]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return [f"{major}.{minor}"]
    return list(FALLBACK_ARCHS)


def gencode_flags(archs: list[str]) -> list[str]:
    flags = []
    for arch in archs:
        num = arch.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    top = max(archs, key=lambda a: tuple(int(x) for x in a.split(".")))
    num = top.replace(".", "")
    flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")  # PTX: newer GPUs JIT it
    return flags


def cache_root() -> Path:
    env = os.environ.get("PIANOMUSE_KERNEL_CACHE") or os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pianomuse" / "kernels"


def build_dir(archs: list[str] | None = None) -> Path:
    archs = archs or target_archs()
    tag = "sm" + "-".join(a.replace(".", "") for a in archs)
    return cache_root() / f"{EXTENSION_NAME}-torch{torch.__version__.split('+')[0]}-cu{torch.version.cuda}-{tag}"


# ------------------------------------------------------------------------------------------------
# the build lock


@contextmanager
def build_lock(directory: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold our build lock on ``directory`` (``filelock``'s, released by the OS if its holder dies).

    torch guards a build directory with its own file ``lock``, which a killed build leaves behind
    and every later build then waits on forever. Only one of our builds holds ``build.lock`` at a
    time, so a torch ``lock`` found while we hold ours was left by a build that is gone: it is
    removed, loudly. A live build elsewhere is waited for, at most ``wait_s`` seconds.
    """
    from filelock import FileLock, Timeout

    ours = FileLock(str(Path(directory) / "build.lock"))
    try:
        ours.acquire(timeout=wait_s)
    except Timeout:
        raise BuildError(f"another kernel build has held {ours.lock_file} for over {max(wait_s / 60, 1):.0f} minute(s); "
                         "let it finish (or stop it) and try again.") from None
    try:
        left = Path(directory) / "lock"
        if left.exists():
            explanation = (f"the build lock {left} was left by a build that no longer runs (a killed build); "
                           "it is removed and the kernels are rebuilt.")
            warnings.warn(f"WKV7 kernels: {explanation}", RuntimeWarning, stacklevel=3)
            log.warning("WKV7 kernels: %s", explanation)
            left.unlink(missing_ok=True)
        yield
    finally:
        ours.release()


# ------------------------------------------------------------------------------------------------
# build and load

_LOADED: dict[str, object] = {}


def build(verbose: bool = False, archs: list[str] | None = None) -> Path:
    """Compile (or reuse the cache) and load the library into this process; returns its directory."""
    if "dir" in _LOADED:
        return _LOADED["dir"]  # type: ignore[return-value]
    reason = preflight(need_gpu=archs is None)
    if reason:
        raise BuildError(reason)
    from torch.utils import cpp_extension  # pulls in setuptools; only when building

    missing = [s for s in SOURCES if not (CSRC / s).exists()]
    if missing:
        raise BuildError(f"kernel sources {', '.join(missing)} are missing from {CSRC}; reinstall from the repository.")
    archs = archs or target_archs()
    directory = build_dir(archs)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "build.log"
    try:
        with build_lock(directory):
            cpp_extension.load(
                name=EXTENSION_NAME,
                sources=[str(CSRC / s) for s in SOURCES],
                extra_cflags=["-O3", "-std=c++17"],
                extra_cuda_cflags=["-O3", "-std=c++17", "--use_fast_math", *gencode_flags(archs)],
                extra_include_paths=[str(CSRC)],
                build_directory=str(directory),
                is_python_module=False,
                verbose=verbose,
            )
    except BuildError:
        raise
    except Exception as exc:  # compiler failures arrive as several exception types
        text = str(exc)
        log_path.write_text(text)
        first = next((ln.strip() for ln in text.splitlines() if "error" in ln.lower()), text.strip()[:200])
        raise BuildError(f"compiling the WKV7 kernels failed ({first}); the full log is in {log_path}.",
                         log_path) from exc
    _LOADED["dir"] = directory
    return directory


def fallback_warning(reason: str) -> str:
    return f"WKV7 CUDA kernels unavailable: {reason} Falling back to the PyTorch path (much slower on GPU)."


def load_kernels(verbose: bool = False) -> bool:
    """Build/load once per process. On failure warn LOUDLY (warning + stderr line) and return False."""
    if "ok" in _LOADED:
        return bool(_LOADED["ok"])
    try:
        build(verbose=verbose)
        ok = True
    except BuildError as exc:
        msg = fallback_warning(exc.reason)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)
        print(f"[pianomuse] {msg}", file=sys.stderr)
        _LOADED["reason"] = exc.reason
        ok = False
    _LOADED["ok"] = ok
    return ok


def failure_reason() -> str | None:
    """Why the last load failed (None if it did not fail or was not tried)."""
    return _LOADED.get("reason")  # type: ignore[return-value]
