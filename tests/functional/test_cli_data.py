"""`pianomuse-tui --headless check/prepare` as a user runs them: real processes, real files."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BROKEN = REPO / "tests" / "data" / "broken"
PIANO = REPO / "assets" / "corpus" / "piano"


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pianomuse_tui.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_check_reports_every_broken_file_and_exits_one(tmp_path):
    report = tmp_path / "out" / "report.json"
    # stdout is a pipe, not a terminal: `check` runs headless even without --headless, in plain lines
    done = _cli("check", str(BROKEN), "--json", str(report), "--workers", "2")
    assert done.returncode == 1, done.stderr  # some files have errors: a script can tell
    assert "11 of 15 files have errors" in " ".join(done.stderr.split())  # huge_delta.mid is over the duration limit
    data = json.loads(report.read_text())
    names = sorted(Path(f["path"]).name for f in data["files"])
    assert names == sorted(p.name for p in BROKEN.glob("*.mid"))
    assert data["summary"]["status"]["error"] == 11 and data["summary"]["status"]["warning"] == 4
    assert "\x1b[" not in done.stdout  # no terminal escapes in a pipe
    assert "15 MIDI files" in done.stdout and "error" in done.stdout and "report written to" in done.stdout
    assert "check 15/15 files" in done.stdout


def test_missing_folder_is_one_sentence_on_one_line_and_nonzero():
    import os

    env = dict(os.environ, COLUMNS="40")  # a narrow terminal's width must not break a piped sentence
    done = subprocess.run([sys.executable, "-m", "pianomuse_tui.cli", "--headless", "check", "/no/such/folder"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1, done.stderr  # never wrapped


@pytest.mark.slow
def test_prepare_then_prepare_again_skips_unchanged_files(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    for name in ("mozart_k545_mvt1_exposition.mid", "schoenberg_op19_no2.mid", "schoenberg_op19_no6.mid"):
        shutil.copy(PIANO / name, folder / name)
    shutil.copy(BROKEN / "empty.mid", folder / "empty.mid")
    store = tmp_path / "store"
    first = _cli("--headless", "prepare", str(folder), "--out", str(store), "--workers", "1")
    assert first.returncode == 0, first.stderr
    assert "3 pieces" in first.stdout and "3 tokenized, 0 unchanged, 1 skipped" in first.stdout
    second = _cli("--headless", "prepare", str(folder), "--out", str(store), "--workers", "1")
    assert second.returncode == 0, second.stderr
    assert "0 tokenized, 4 unchanged, 1 skipped" in second.stdout
    index = json.loads((store / "index.json").read_text())
    assert index["totals"]["pieces"] == 3 and (store / "tokens.npy").exists() and (store / "tokenizer.json").exists()
    bad = _cli("--headless", "prepare", str(folder), "--out", str(store), "--config", str(tmp_path / "missing.toml"))
    assert bad.returncode == 2 and "does not exist" in " ".join(bad.stderr.split())


@pytest.mark.slow
def test_check_on_a_terminal_draws_a_rich_progress_bar(tmp_path):
    """On a terminal (a pseudo-terminal here) `--headless check` draws rich's live bar and colours."""
    import os
    import pty

    for name in ("empty.mid", "format2.mid", "drums_only.mid"):
        shutil.copy(BROKEN / name, tmp_path / name)
    shutil.copy(PIANO / "schoenberg_op19_no2.mid", tmp_path / "piece.mid")
    config = tmp_path / "data.toml"
    config.write_text("[check]\ntokenize = false\n")  # no token counts: the bar is what is tested
    leader, follower = pty.openpty()
    env = dict(os.environ, COLUMNS="100", LINES="30", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "pianomuse_tui.cli", "--headless", "check", str(tmp_path), "--workers", "1",
                             "--config", str(config)], cwd=REPO, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closes when the process exits
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 1  # empty.mid has an error
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in screen and "\x1b[?25l" in screen  # colours, and the cursor hidden while the bar is live
    assert "━" in screen and "files/s" in screen  # the bar and its rate column
    assert "error" in screen and "empty.mid" in screen  # error files are printed above the bar
    assert "4 MIDI files" in screen


ERROR_FILES = ("empty.mid", "not_midi.mid", "truncated.mid", "zero_tracks.mid")


@pytest.mark.slow
def test_a_folder_with_nothing_usable_exits_three_with_a_warning_and_prepare_says_the_store_is_empty(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ERROR_FILES:
        shutil.copy(BROKEN / name, broken / name)
    checked = _cli("--headless", "check", str(broken), "--workers", "1")
    assert checked.returncode == 3, checked.stderr
    assert "all 4 files have errors" in " ".join(checked.stderr.split())
    prepared = _cli("--headless", "prepare", str(broken), "--out", str(tmp_path / "store"), "--workers", "1")
    assert prepared.returncode == 3, prepared.stderr
    assert "the store is empty" in " ".join(prepared.stderr.split())
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = _cli("--headless", "check", str(empty))
    assert nothing.returncode == 3 and "holds no .mid/.midi/.kar file" in " ".join(nothing.stderr.split())
    good = _cli("--headless", "check", str(PIANO), "--workers", "1")
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize("settings, words", [
    ("[check]\ntimeout_s = 0\n", "check.timeout_s must be greater than 0"),
    ('[check]\nmax_silence_s = "long"\n', "check.max_silence_s must be a number"),
    ('[check]\ntimeout_s = "abc"\n', "check.timeout_s must be a number"),
    ("check = 5\n", "check must be a [check] table"),
    ("[check]\nlimit_tokens = 1.5\n", "check.limit_tokens must be a whole number"),
    ('[split]\nval_fraction = "x"\n', "split.val_fraction must be a number"),
])
def test_bad_data_settings_stop_check_and_prepare_with_one_sentence(tmp_path, settings, words):
    """Issue 18 item 9: these failed every file silently with exit 0, or gave a traceback."""
    config = tmp_path / "data.toml"
    config.write_text(settings)
    for command in (["check", str(PIANO)], ["prepare", str(PIANO), "--out", str(tmp_path / "store")]):
        done = _cli("--headless", *command, "--config", str(config))
        message = done.stderr.strip()
        assert done.returncode == 2 and message.startswith("error:") and words in message, (command, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout and message.count("\n") == 0
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_the_workers_never_import_the_users_own_modules(tmp_path):
    """Issue 18 item 10: a random.py or tokenize.py in the current folder broke check and prepare."""
    for name in ("random", "tokenize"):
        (tmp_path / f"{name}.py").write_text(f'raise SystemExit("the user\'s {name}.py was imported")\n')
    (tmp_path / "midi").mkdir()
    shutil.copy(PIANO / "schoenberg_op19_no2.mid", tmp_path / "midi")
    script = str(Path(sys.executable).with_name("pianomuse-tui"))
    for command in (["check", "midi"], ["prepare", "midi", "--out", "store"]):
        done = subprocess.run([script, "--headless", *command, "--workers", "1"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=240)
        assert done.returncode == 0 and "was imported" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_a_folder_as_report_path_is_refused_before_the_scan(tmp_path):
    done = _cli("--headless", "check", str(PIANO), "--json", str(tmp_path))
    assert done.returncode == 2 and "is a folder; give a file name such as" in done.stderr
    assert "MIDI files" not in done.stdout  # nothing was scanned


@pytest.mark.slow
def test_links_pipes_and_odd_names_each_get_one_report_line(tmp_path):
    """Issue 18 item 15: dangling links and FIFOs were skipped without a line; a newline in a name split a line."""
    import os

    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "two\nlines.mid").write_bytes(b"not midi at all")
    (folder / "gone.mid").symlink_to(tmp_path / "nowhere.mid")
    os.mkfifo(folder / "pipe.mid")
    done = _cli("--headless", "check", str(folder), "--workers", "1", "--json", str(tmp_path / "r.json"), timeout=120)
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr  # nothing usable
    lines = done.stdout.splitlines()
    assert any(line.startswith("error") and "gone.mid: dangling link: it points at" in line for line in lines), done.stdout
    assert any(line.startswith("error") and "pipe.mid: not a regular file: it is a named pipe" in line for line in lines)
    assert any(line.startswith("error") and "two\\nlines.mid: not a MIDI file" in line for line in lines)
    assert not any(line.startswith("lines.mid") for line in lines)  # the name no longer splits its line
    records = json.loads((tmp_path / "r.json").read_text())["files"]
    assert sorted(Path(r["path"]).name for r in records) == ["gone.mid", "pipe.mid", "two\nlines.mid"]
