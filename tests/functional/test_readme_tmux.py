"""The README's quick start and tour, typed into a real terminal (tmux) the way a newcomer would on
a machine without a GPU or a MIDI system: the headless quick-start line, a headless training run
stopped with Ctrl-C, then the app: Generate (a toast that goes away, Play without a MIDI system,
w writing the take), Train (a run on the default preset, the quit dialog, stop and save), quit."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from app_helpers import FAST_TINY

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt install tmux)")]

BIN = Path(sys.executable).parent
NO_GPU = not __import__("torch").cuda.is_available()
NO_MIDI_SYSTEM = not os.path.exists("/dev/snd/seq")


def _env_prefix() -> str:
    """The session runs in tmux's environment, not ours: pass what the commands need."""
    env = {"PATH": f"{BIN}:{os.environ.get('PATH', '')}", "TERM": "xterm-256color",
           # no JACK server is started for us: what a laptop without a MIDI setup sees
           "JACK_NO_START_SERVER": "1", "JACK_DEFAULT_SERVER": f"pianomuse-no-such-server-{os.getpid()}"}
    for name in ("PYTHONPATH", "HOME", "PIANOMUSE_CACHE"):
        if name in os.environ:
            env[name] = os.environ[name]
    # a COLUMNS/LINES left in the tmux server's environment would override the window's real size
    return "env -u COLUMNS -u LINES " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


class Terminal:
    """One tmux session running one command (kept open after it ends, so its last screen can be read)."""

    def __init__(self, command: str, cwd: Path, width: int = 140, height: int = 40):
        self.name = f"pm-{uuid.uuid4().hex[:8]}"
        shell = f"{_env_prefix()} {command}; echo '[exit '$?']'; sleep 600"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), shell],
                       check=True, cwd=cwd)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True).stdout

    def wait(self, predicate, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.25)
        size = subprocess.run(["tmux", "display", "-p", "-t", self.name, "#{window_width}x#{window_height}"],
                              capture_output=True, text=True).stdout.strip()
        raise AssertionError(f"never saw {what}; last screen ({size}):\n{screen}")

    def see(self, text: str, timeout: float = 60) -> str:
        return self.wait(lambda s: text in s, timeout, repr(text))

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def _one_line(screen: str) -> str:
    return " ".join(screen.split())


def test_the_readme_quick_start_and_tour_in_a_real_terminal(tmp_path):
    fast = " ".join(f"--{o}" for o in FAST_TINY)

    # Quick start: "a MIDI file from the bundled model in a few seconds"
    term = Terminal("pianomuse-tui --headless generate --bars 8 --seed 1 --out idea.mid", tmp_path)
    try:
        term.see("[exit 0]", 180)
        assert "wrote idea.mid" in _one_line(term.screen())
    finally:
        term.close()
    assert (tmp_path / "idea.mid").stat().st_size > 100

    # Train, headless: no GPU means the tiny preset, said first; the first Ctrl-C is answered at once
    if NO_GPU:
        term = Terminal(f"pianomuse-tui --headless train --run-dir runs --max-steps 400 {fast}", tmp_path)
        try:
            term.see("no GPU found: using the tiny preset", 120)
            term.wait(lambda s: re.search(r"step\s+\d+/400", s) is not None, 180, "a training step")
            term.keys("C-c")
            term.see("stopping after this step", 30)
            screen = _one_line(term.wait(lambda s: "[exit " in s, 120, "the end of the run"))
            assert "[exit 130]" in screen and "resume with: pianomuse-tui --headless train" in screen
        finally:
            term.close()
        assert list(tmp_path.glob("runs/*/checkpoints/step-*/model.pth")), "the stop saved a checkpoint"

    # The app, opened on the Train pane with the README's options (nothing starts until n)
    app = Terminal(f"pianomuse-tui train --run-dir runs2 --max-steps 400 {fast}", tmp_path)
    try:
        app.wait(lambda s: "Loss" in s and "Generate" in s and re.search(r"(CPU|GPU): ", s), 120, "the app")

        # Generate: a 2 s toast goes away (it lingered for minutes over the Timing panel)
        app.keys("F3")
        app.wait(lambda s: "Piano roll" in s and "space Play/stop" in s, 30, "the Generate pane with its keys")
        app.keys("!")
        app.see("Panic: all notes released.", 10)
        app.wait(lambda s: "Panic: all notes released." not in s, 10, "the panic toast gone")
        if NO_MIDI_SYSTEM:
            # space plays from the Play button; with no MIDI system the pane says what it can do instead
            app.keys("Space")
            screen = _one_line(app.wait(lambda s: "No MIDI system" in s and "press w" in _one_line(s)
                                        and "Playing" not in s, 120, "the no-MIDI-system message"))
            assert "--out" not in screen
            app.keys("w")
            app.wait(lambda s: "Wrote takes/" in _one_line(s), 240, "the take written")
            assert list((tmp_path / "takes").glob("pianomuse-*.mid"))
            # the error is still readable on the pane once its toast has gone
            assert "No MIDI system" in app.screen()

        # Train: n starts a run on the default preset (tiny on a CPU), the loss moves
        app.keys("F2")
        app.wait(lambda s: "Checkpoints" in s and "n New run" in s, 30, "the Train pane with its keys")
        app.keys("n")
        if NO_GPU:
            app.see("using the tiny preset", 60)
        app.wait(lambda s: re.search(r"loss \d+\.\d+", s) is not None, 240, "a loss")
        # quitting while it runs asks, with the keys on screen; enter is the safe answer
        app.keys("C-q")
        # both key lines on one captured screen (a second capture can land mid-repaint)
        app.wait(lambda s: "y: stop and quit" in s and "n, esc or enter: keep going" in s, 20,
                 "the quit dialog with its keys")
        app.keys("Enter")
        app.wait(lambda s: "y: stop and quit" not in s, 20, "the dialog gone")
        # x stops and saves: said as such, not as an exit code
        app.keys("x")
        app.see("run stopped and saved", 120)
        assert "exit 130" not in app.screen()
        app.keys("C-q")  # nothing runs now: the app quits without asking
        app.see("[exit 0]", 60)
    finally:
        app.close()
    assert list(tmp_path.glob("runs2/*/checkpoints/step-*/model.pth")), "x saved the run"
