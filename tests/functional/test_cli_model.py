"""`pianomuse-tui --headless model info PATH` on real checkpoints and bad paths."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from engine.data.tokenizer import PianoTokenizer
from engine.model import RWKV7, ModelConfig, save_checkpoint
from pianomuse_tui.cli import app


def make_checkpoint(tmp_path, arch="x070"):
    tokenizer = PianoTokenizer("REMI")
    config = ModelConfig(arch=arch, n_layer=2, n_embd=128, vocab_size=tokenizer.vocab_size, head_size=64)
    return save_checkpoint(RWKV7(config), tmp_path / "piano", tokenizer=tokenizer.to_config()), config


def test_model_info_json_and_table(tmp_path):
    path, config = make_checkpoint(tmp_path, arch="x080")
    runner = CliRunner()
    result = runner.invoke(app, ["--headless", "model", "info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["architecture"] == "x080" and info["layers"] == 2 and info["width"] == 128
    assert info["heads"] == 2 and info["head_size"] == 64 and info["vocab_size"] == config.vocab_size
    assert info["low_rank"] == {"w": config.dim_w, "a": config.dim_a, "v": config.dim_v, "g": config.dim_g}
    assert info["parameters"] == config.parameter_count()
    assert info["dtype"] == "float32" and info["file_bytes"] == path.stat().st_size
    assert info["tokenizer"]["tokenization"] == "REMI"
    assert info["wkv_backend"] == ("cuda" if torch.cuda.is_available() else "chunked")
    table = runner.invoke(app, ["--headless", "model", "info", str(path.with_suffix(""))])
    assert table.exit_code == 0
    for text in ("x080", "v8 (x070 + DeepEmbed)", "2 x 64", str(config.vocab_size), f"{config.parameter_count():,}", "chunked",
                 f"REMI, piano policy auto, vocab {config.vocab_size}, MidiTok"):
        assert text in " ".join(table.stdout.split()), table.stdout


@pytest.mark.slow
def test_model_info_on_an_official_bf16_file_in_a_run_folder(tmp_path):
    path, config = make_checkpoint(tmp_path)
    step = tmp_path / "run" / "checkpoints" / "step-00000010"
    step.mkdir(parents=True)
    sd = {"_forward_module." + k: v.to(torch.bfloat16) for k, v in torch.load(path, weights_only=True).items()}
    torch.save(sd, step / "model.pth")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-00000010\n")
    result = CliRunner().invoke(app, ["--headless", "model", "info", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["dtype"] == "bfloat16" and info["architecture"] == "x070" and info["sidecar"] is False


@pytest.mark.slow
def test_bad_paths_print_one_clear_sentence(tmp_path):
    exe = shutil.which("pianomuse-tui") or str(__import__("pathlib").Path(sys.executable).with_name("pianomuse-tui"))
    missing = subprocess.run([exe, "--headless", "model", "info", str(tmp_path / "nope.pth")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert "no checkpoint at" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "notes.pth").write_text("not a model")
    result = CliRunner().invoke(app, ["--headless", "model", "info", str(tmp_path / "notes.pth")])
    assert result.exit_code == 2
    assert "truncated, corrupt or not a checkpoint" in " ".join(result.output.split())


def test_version_and_headless_without_a_command():
    from importlib.metadata import version

    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"pianomuse-tui {version('pianomuse')}"
    # --headless alone lists the commands instead of opening the UI
    listing = runner.invoke(app, ["--headless"])
    assert listing.exit_code == 0
    for command in ("model", "check", "prepare", "train", "generate"):
        assert command in listing.stdout
