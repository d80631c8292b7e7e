"""Hostile MIDI (issue 18 items 3, 11, 12, 15): every limit is checked before a file is expanded, an
over-limit file is one error with its reason and remedy, prompts obey the same limits, SMPTE and
broken timing are handled without a traceback, and no single file takes a command past 2 GB."""
from __future__ import annotations

import resource
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import hostile_midi as hostile
from engine.data.check import CheckPolicy, inspect_file, scan
from engine.data.tokenizer import PianoTokenizer
from engine.generate import GenerationError
from engine.generate.session import prompt_from_file
from pianomuse_tui.cli import app

EXPECTED = {
    "gap-bomb": "over the duration limit",
    "zero-division": "no time division",
    "absurd-note": "over the duration limit",
    "hour-of-silence": "over the silence limit",
    "loud-velocity": "a note has velocity 147, above MIDI's 127",
    "drums-only": "no usable piano notes",
    "huge-50mb": "over the size limit: 50.0 MB",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return hostile.write_all(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check_reports_each_hostile_file_as_one_error_with_its_reason(files, name):
    record, ids, _ = inspect_file(files[name], CheckPolicy(), PianoTokenizer("REMI"))
    assert record.status == "error" and ids is None
    assert any(EXPECTED[name] in reason for reason in record.reasons), record.reasons
    if "limit" in EXPECTED[name]:  # the remedy: which setting, and where
        assert any("limit_" in r and "data.toml [check]" in r for r in record.reasons)
    assert not any("Get velocity" in r or "Invaild" in r for r in record.reasons)


def test_limits_are_settings_and_absurd_lengths_stay_out_of_the_hours(files, tmp_path):
    loose = CheckPolicy(limit_silence_s=4000.0)
    record, _, _ = inspect_file(files["hour-of-silence"], loose)
    assert record.status == "warning" and any("very long silence" in r for r in record.reasons)
    with pytest.raises(ValueError, match="limit_duration_s"):
        CheckPolicy.from_dict({"limit_duration_s": 0})
    folder = tmp_path / "set"
    hostile.write_all(folder, ["absurd-note", "hour-of-silence"])
    (folder / "fine.mid").write_bytes(hostile.smf(hostile.phrase()))
    report = scan(folder, workers=1)
    assert report.summary.hours < 0.01  # the 77.7 h note and the hour of silence are not counted


def test_smpte_files_play_as_prompts_as_check_reads_them(tmp_path):
    path = tmp_path / "smpte.mid"
    path.write_bytes(hostile.smpte())
    record, _, _ = inspect_file(path, CheckPolicy())
    assert record.status == "warning" and "SMPTE timing" in record.reasons[0]
    tokenizer = PianoTokenizer("REMI")
    ids = prompt_from_file(path, tokenizer)
    assert sum(tokenizer.token_kind(t) == "Pitch" for t in ids) == 8


@pytest.mark.parametrize("name", ["gap-bomb", "zero-division", "absurd-note", "loud-velocity", "drums-only", "huge-50mb"])
def test_a_hostile_prompt_is_one_sentence(files, name):
    with pytest.raises(GenerationError) as caught:
        prompt_from_file(files[name], PianoTokenizer("REMI"))
    message = str(caught.value)
    assert message.startswith(f"the prompt {files[name]}") and "\n" not in message
    assert EXPECTED[name].split(":")[0].split(",")[0] in message or "no piano notes" in message


def test_a_folder_given_as_prompt_is_named_a_folder(tmp_path):
    with pytest.raises(GenerationError, match="is a folder; give a .mid file"):
        prompt_from_file(tmp_path, PianoTokenizer("REMI"))


def _peak_child_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


@pytest.mark.slow
def test_no_hostile_file_takes_a_command_past_2_gb(files, tmp_path):
    """Each command in its own process; the kernel's peak resident size of the children is the measure."""
    folder = next(iter(files.values())).parent
    cli = [sys.executable, "-m", "pianomuse_tui.cli", "--headless"]
    runs = [cli + ["check", str(folder), "--workers", "1"]]
    runs += [cli + ["generate", "--prompt", str(files[name]), "--bars", "1", "--max-tokens", "16", "--out", str(tmp_path / f"{name}-out.mid")]
             for name in ("gap-bomb", "huge-50mb", "absurd-note")]
    for command in runs:
        done = subprocess.run(command, capture_output=True, text=True, timeout=240)
        assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
        assert done.returncode in (2, 3), (command, done.returncode, done.stderr[-500:])  # bad input; nothing usable
    assert _peak_child_mb() < 2048


def test_generate_cli_names_the_limit(files, tmp_path):
    result = CliRunner().invoke(app, ["--headless", "generate", "--prompt", str(files["gap-bomb"]), "--bars", "1",
                                      "--out", str(tmp_path / "x.mid")])
    assert result.exit_code == 2 and "over the duration limit" in result.output and "Traceback" not in result.output
