"""The real binary in a real terminal (tmux), driven as a newcomer would: start on the Train pane
with a tiny run, watch the loss change, look at the three panes, scan the corpus, quit (asked
first, the run saves), and nothing is left running."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from app_helpers import FAST_TINY

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt install tmux)")


def _capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _wait_screen(session: str, predicate, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _capture(session)
        if predicate(screen):
            return screen
        time.sleep(0.3)
    raise AssertionError(f"screen never matched; last screen:\n{screen}")


def _loss(screen: str) -> str | None:
    match = re.search(r"loss (\d+\.\d+)", screen)
    return match.group(1) if match else None


@pytest.mark.slow
def test_newcomer_session_in_tmux(tmp_path):
    session = f"pm-{uuid.uuid4().hex[:8]}"
    binary = Path(sys.executable).parent / "pianomuse-tui"
    command = [str(binary), "train", "--preset", "tiny", "--run-dir", str(tmp_path), "--max-steps", "400"]
    command += [f"--{o}" for o in FAST_TINY]
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "140", "-y", "40", " ".join(command)],
                   check=True, cwd=tmp_path)
    try:
        # the header names the device once torch has looked (slower than the first draw on a busy machine)
        _wait_screen(session, lambda s: "Dataset" in s and "Generate" in s and "Loss" in s
                     and re.search(r"(CPU|GPU): ", s) is not None, 120)
        first = _loss(_wait_screen(session, lambda s: _loss(s) is not None, 150))
        _wait_screen(session, lambda s: _loss(s) not in (None, first), 90)  # the loss changes

        subprocess.run(["tmux", "send-keys", "-t", session, "F3"], check=True)
        _wait_screen(session, lambda s: "Piano roll" in s and "Timing" in s, 20)
        subprocess.run(["tmux", "send-keys", "-t", session, "F1"], check=True)
        _wait_screen(session, lambda s: "Selected file" in s, 20)
        subprocess.run(["tmux", "send-keys", "-t", session, "s"], check=True)
        screen = _wait_screen(session, lambda s: "files scanned" in s, 90)
        assert re.search(r"\d+ files", screen) and "ok " in screen

        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        _wait_screen(session, lambda s: "Stop (saving) and quit?" in s, 20)
        subprocess.run(["tmux", "send-keys", "-t", session, "y"], check=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("the app did not exit:\n" + _capture(session))
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert list(tmp_path.glob("*/checkpoints/step-*/model.pth")), "quitting saves the run"
    assert _processes_holding(tmp_path) == [], "no training process may outlive the app"


def _processes_holding(folder: Path) -> list[int]:
    """Processes with a file under ``folder`` open (the trainer keeps its log and metrics.jsonl open)."""
    import psutil

    holders = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if any(str(f.path).startswith(str(folder)) for f in proc.open_files()):
                holders.append(proc.pid)
        except psutil.Error:
            continue
    return holders


@pytest.mark.slow
def test_bare_command_opens_the_app_and_quits_at_once_when_nothing_runs(tmp_path):
    """`pianomuse-tui` with no arguments: the three panes, the device, the Dataset pane's keys;
    Ctrl+Q with nothing running quits without a question."""
    session = f"pm-{uuid.uuid4().hex[:8]}"
    binary = Path(sys.executable).parent / "pianomuse-tui"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", str(binary)],
                   check=True, cwd=tmp_path)
    try:
        screen = _wait_screen(session, lambda s: re.search(r"(CPU|GPU): ", s) is not None, 60)
        for word in ("Dataset", "Train", "Generate", "no scan yet", "Scan", "Quit"):
            assert word in screen, screen
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        deadline = time.monotonic() + 20
        while subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "the app did not quit:\n" + _capture(session)
            time.sleep(0.2)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
