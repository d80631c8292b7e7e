"""CPU-testable parts of the CUDA kernel build: toolchain messages, the build lock, the loud
fallback, and refusing gradients from the forward-only generation step."""
from __future__ import annotations

import stat
import subprocess
import sys

import pytest
import torch
import typer
from typer.testing import CliRunner

from engine.kernels import build


@pytest.fixture
def fresh_loader(monkeypatch):
    """Each test sees a process that has not tried to load the kernels yet."""
    monkeypatch.setattr(build, "_LOADED", {})


def fake_nvcc(folder, release):
    """A real executable that answers `nvcc --version` like a CUDA toolkit of that release."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    nvcc = bin_dir / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return folder


def _hold_build_lock(directory) -> subprocess.Popen:
    """Another process (a build elsewhere) that holds ``build.lock`` until it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; from filelock import FileLock; "
                               f"held = FileLock({str(directory / 'build.lock')!r}); held.acquire(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_lock_of_a_killed_build_is_explained_and_removed_under_our_build_lock(tmp_path):
    """torch's ``lock`` with nobody holding our ``build.lock`` is a dead build's: removed, loudly."""
    left = tmp_path / "lock"
    left.write_text("")
    with pytest.warns(RuntimeWarning, match="killed build"):
        with build.build_lock(tmp_path, wait_s=1):
            assert not left.exists()
    # a killed holder of build.lock itself: the OS released it, the next build goes ahead
    holder = _hold_build_lock(tmp_path)
    holder.kill()
    holder.wait()
    with build.build_lock(tmp_path, wait_s=5):
        pass


def test_a_live_build_is_waited_for_a_bounded_time_and_its_lock_kept(tmp_path):
    (tmp_path / "lock").write_text("")  # torch's lock of the build that is running
    holder = _hold_build_lock(tmp_path)
    try:
        with pytest.raises(build.BuildError, match="another kernel build has held"):
            with build.build_lock(tmp_path, wait_s=0.3):
                pass
        assert (tmp_path / "lock").exists()  # a live build's lock is never taken away
    finally:
        holder.kill()
        holder.wait()


def test_cpu_only_torch_is_reported_in_one_sentence(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    reason = build.preflight()
    assert "CPU-only build" in reason and reason.count(". ") == 0


@pytest.mark.parametrize("case", ["no_nvcc", "cuda_home_without_nvcc", "mismatch", "no_compiler"])
def test_toolchain_problems_name_what_is_missing(monkeypatch, tmp_path, case):
    # a CUDA build of torch cannot exist on this machine, so its CUDA version is set by hand
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    if case == "no_nvcc":
        monkeypatch.delenv("CUDA_HOME", raising=False)
        monkeypatch.setenv("PATH", str(empty))
        monkeypatch.setattr(build, "CUDA_HOME_CANDIDATES", ())
        expect = "nvcc (the CUDA compiler) was not found"
    elif case == "cuda_home_without_nvcc":
        monkeypatch.setenv("CUDA_HOME", str(empty))
        expect = "has no bin/nvcc"
    elif case == "mismatch":
        monkeypatch.setenv("CUDA_HOME", str(fake_nvcc(tmp_path / "cuda11", "11.8")))
        expect = "is CUDA 11.8 but PyTorch was built with CUDA 13.0"
    else:
        monkeypatch.setenv("CUDA_HOME", str(fake_nvcc(tmp_path / "cuda13", "13.0")))
        monkeypatch.setenv("PATH", str(empty))
        expect = "no C++ compiler"
    reason = build.preflight(need_gpu=False)
    assert expect in reason
    assert reason.endswith(".") and "\n" not in reason


def test_failed_build_falls_back_loudly(fresh_loader, monkeypatch, capsys):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.warns(RuntimeWarning, match="Falling back to the PyTorch path"):
        assert build.load_kernels() is False
    assert "WKV7 CUDA kernels unavailable" in capsys.readouterr().err
    assert "CPU-only" in build.failure_reason()


def test_architecture_flags_from_the_environment(monkeypatch):
    monkeypatch.setenv("PIANOMUSE_CUDA_ARCHS", "8.0;9.0")
    archs = build.target_archs()
    assert archs == ["8.0", "9.0"]
    flags = build.gencode_flags(archs)
    assert "-gencode=arch=compute_90,code=sm_90" in flags and "-gencode=arch=compute_80,code=sm_80" in flags
    assert flags[-1] == "-gencode=arch=compute_90,code=compute_90"  # PTX for newer GPUs
    assert "sm80-90" in build.build_dir(archs).name


def test_generation_step_refuses_to_train():
    """Training-mode validation: the forward-only step fails at once when gradients are wanted."""
    from engine.kernels.wkv7.cuda import wkv7_cuda_step

    xs = [torch.randn(1, 2, 64, requires_grad=True) for _ in range(6)]
    with pytest.raises(RuntimeError, match="no backward"):
        wkv7_cuda_step(*xs, torch.zeros(1, 2, 64, 64))


def test_build_kernels_command_reports_the_reason(fresh_loader, monkeypatch):
    from pianomuse_tui.headless import kernels_cmd

    app = typer.Typer()
    kernels_cmd.register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer's subcommand layout
    monkeypatch.setattr(torch.version, "cuda", None)
    result = CliRunner().invoke(app, ["build-kernels"])
    assert result.exit_code == 2
    assert "CPU-only build" in result.output and "PyTorch WKV7 path" in result.output
    bad = CliRunner().invoke(app, ["build-kernels", "--arch", "hopper"])
    assert bad.exit_code == 2 and "compute capabilities" in bad.output
