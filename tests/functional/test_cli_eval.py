"""`pianomuse-tui --headless eval` on a tiny random model and a store prepared from the demo corpus."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

import engine.paths
from engine.data.store import PrepareConfig, TokenStore, prepare
from engine.data.tokenizer import PianoTokenizer
from engine.eval import default_checkpoint
from engine.eval.metrics import HISTOGRAMS, SCALAR_FEATURES
from engine.model import RWKV7, ModelConfig, save_checkpoint
from engine.paths import CORPUS_DIR
from pianomuse_tui.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """The piano pieces and a few chorales of the demo corpus, prepared by engine.data."""
    root = tmp_path_factory.mktemp("eval-corpus")
    midi = root / "midi"
    for sub, count in (("piano", None), ("chorales", 8)):
        files = sorted((CORPUS_DIR / sub).glob("*.mid"))[:count]
        (midi / sub).mkdir(parents=True)
        for f in files:
            shutil.copy(f, midi / sub / f.name)
    out = root / "store"
    prepare(midi, out, PrepareConfig(val_fraction=0.25, workers=1))
    store = TokenStore.open(out)
    assert store.pieces("val") and store.pieces("train")
    return out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    tok = PianoTokenizer()
    torch.manual_seed(0)
    model = RWKV7(ModelConfig(arch="x080", n_layer=2, n_embd=64, vocab_size=tok.vocab_size, head_size=32))
    with torch.no_grad():
        # hidden states lean along one axis and EOS points the other way: a random model would
        # otherwise often end the piece at once, leaving continuations without notes to measure
        axis = torch.zeros(64)
        axis[0] = 1.0
        model.ln_out.bias.copy_(4 * axis)
        model.head.weight[tok.eos_id] = -5 * axis
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny", tokenizer=tok.to_config())


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def one_sentence(result) -> str:
    """The error text, unwrapped (rich wraps at the terminal width); it must be one sentence."""
    # progress lines ("eval: ...", printed into a pipe) may come first; the error is the rest
    text = " ".join(" ".join(line for line in result.stderr.splitlines() if not line.startswith("eval: ")).split())
    assert text.startswith("error: ") and text.endswith(".") and ". " not in text, text
    assert "Traceback" not in result.output
    return text


def run_eval(*args):
    # one torch thread: tiny matrices on a shared 2-core runner only lose time to a second one
    return CliRunner().invoke(app, ["--headless", "eval", "--threads", "1", *map(str, args)])


@pytest.mark.slow
def test_eval_reports_every_field_with_sane_values(tiny_checkpoint, demo_store, tmp_path):
    out = tmp_path / "report" / "eval.json"
    result = run_eval("--checkpoint", tiny_checkpoint, "--data", demo_store, "--samples", 3, "--prompt-bars", 2,
                      "--bars", 1, "--max-tokens", 2000, "--json", out)
    assert result.exit_code == 0, result.output
    # not a terminal: progress comes as plain lines, from the start (a piped eval was silent for minutes)
    progress = result.stderr.splitlines()
    assert progress[0] == "eval: loading the checkpoint and the data"
    assert any(line.startswith("eval: likelihood of validation pieces ") for line in progress)
    assert any(line.startswith("eval: generating continuations (tokens) ") for line in progress)
    for text in ("Likelihood on the validation split", "bits/note", "3 generated continuations",
                 "invalid-token rate", "stuck-note rate", "longest copied run", "eval.png"):
        assert text in result.stdout

    report = json.loads(out.read_text())
    assert report["format"] == "pianomuse-eval/1"
    assert report["checkpoint"] == str(tiny_checkpoint)
    assert report["model"]["arch"] == "x080" and report["model"]["parameters"] > 0

    lik = report["likelihood"]
    assert 0 < lik["tokens"] <= 2000 and lik["notes"] > 0 and lik["seconds"] > 0 and lik["pieces"] >= 1
    # a random model is near uniform: about log(V) nats per token
    assert 0.5 * math.log(PianoTokenizer().vocab_size) < lik["nats_per_token"] < 2 * math.log(PianoTokenizer().vocab_size)
    assert lik["bits_per_token"] == pytest.approx(lik["nats_per_token"] / math.log(2))
    assert lik["bits_per_note"] == pytest.approx(lik["nats"] / math.log(2) / lik["notes"])
    assert lik["bits_per_second"] == pytest.approx(lik["nats"] / math.log(2) / lik["seconds"])

    cont = report["continuations"]
    assert cont["samples"] == 3 and cont["real_decoded"] == 3 and cont["generated_decoded"] == 3
    assert set(cont["features"]) == set(SCALAR_FEATURES)
    for name, entry in cont["features"].items():
        assert 0.0 <= entry["oa"] <= 1.0 + 1e-9, name
        assert finite(entry["kl_nats"]) and entry["kl_nats"] >= 0, name
        assert entry["real"]["n"] == 3 and finite(entry["real"]["mean"]), name
        assert sum(entry["real_density"]) == pytest.approx(1.0)
    assert cont["features"]["pitch_class_entropy"]["real"]["mean"] <= math.log2(12)
    assert 0 <= cont["features"]["pedal_use"]["real"]["mean"] <= 1
    assert set(cont["histograms"]) == set(HISTOGRAMS)
    for name, entry in cont["histograms"].items():
        assert len(entry["labels"]) == len(entry["real"]) == len(entry["generated"]), name
        assert sum(entry["real"]) == pytest.approx(1.0), name
        if name == "ioi" and sum(entry["generated"]) == 0:
            # a random model may put every note of a short continuation on one onset: no interval
            # to measure, so the comparison is undefined (null), never a made-up number
            assert entry["oa"] is None and entry["kl_nats"] is None
            continue
        assert sum(entry["generated"]) == pytest.approx(1.0), name
        assert 0.0 <= entry["oa"] <= 1.0 + 1e-9 and entry["kl_nats"] >= 0, name

    val = report["validity"]
    assert val["tokens"] > 0 and val["grammar_constrained"] is True
    assert val["invalid_token_rate"] == 0.0 and val["decode_failures"] == 0
    assert 0.0 <= val["stuck_note_rate"] <= 1.0
    assert val["stuck_notes"] == val["notes_unreleased"] + val["notes_too_long"]

    ov = report["training_overlap"]
    assert ov["training_pieces"] > 0 and ov["training_notes"] > 0
    for side in ("generated", "real"):
        assert isinstance(ov[side]["longest_copied_notes"], int) and ov[side]["longest_copied_notes"] >= 0

    assert len(report["samples"]) == 3
    for sample in report["samples"]:
        assert sample["generated_tokens"] > 0 and sample["prompt_tokens"] > 0 and sample["real"]["notes"] > 0
        assert sample["generated"]["notes"] > 0 and isinstance(sample["copied_notes"], int)

    # the baseline: an n-gram of the order chosen on training pieces, on the same targets
    base = report["baseline"]
    assert base["order"] in (1, 2, 3, 4, 6, 8, 12, 16) and base["transpose_range"] == 6
    assert set(base["held_out_bits_per_token"]) == {"1", "2", "3", "4", "6", "8", "12", "16"}
    assert base["order"] == int(min(base["held_out_bits_per_token"], key=base["held_out_bits_per_token"].get))
    assert 0 < base["bits_per_note"] < 40 and base["model_over_baseline"] == pytest.approx(lik["bits_per_note"] / base["bits_per_note"])
    assert "Kneser-Ney" in result.stdout and "Where the bits go" in result.stdout
    for who in ("model", "baseline"):
        split = report["breakdown"][who]
        # the kinds' shares add up to the whole, and bits per note by kind add up to the total
        assert sum(k["share"] for k in split["kinds"].values()) == pytest.approx(1.0)
        assert set(split["styles"]) <= {"piano", "chorales"} and split["styles"]
        total = lik["bits_per_note"] if who == "model" else base["bits_per_note"]
        assert sum(k["bits_per_note"] for k in split["kinds"].values()) == pytest.approx(total)
        assert {"Pitch", "Velocity", "Duration", "Position"} <= set(split["kinds"])
    structure = report["structure"]
    for side in ("real", "generated"):
        assert structure[side]["self_reuse"] is None  # one bar continued: no 2-bar window to compare
        assert -1 <= structure[side]["key_correlation"] <= 1
        assert 0 <= structure[side]["in_key_share"] <= 1
    assert sum(v["samples"] for v in structure["styles"].values()) == 3
    assert report["continuation_bars"] == {"requested": 1, "honoured": 3, "samples": 3, "honoured_share": 1.0}
    assert isinstance(ov["any_key"]["generated"]["longest_copied_notes"], int)
    assert set(report["goals"]) == {"bits_per_note_vs_baseline", "self_reuse", "key_correlation", "invalid_tokens",
                                    "bars_honoured_share"}
    assert report["goals"]["invalid_tokens"]["met"] and report["goals"]["bars_honoured_share"]["met"]
    assert "Goals of the bundled model" in result.stdout and "self-reuse" in result.stdout

    png = out.with_suffix(".png")
    assert report["plot"] == str(png)
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 800 and height > 400
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (height, width)


def test_without_a_bundled_model_eval_asks_for_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.paths, "MODELS_DIR", tmp_path / "no-models")
    assert default_checkpoint() is None
    result = run_eval("--samples", 1)
    assert result.exit_code == 2
    message = one_sentence(result)
    assert "no bundled model" in message and "--checkpoint" in message


@pytest.mark.slow
def test_the_bundled_model_is_the_default_and_a_midi_folder_is_prepared(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("PIANOMUSE_CACHE", str(tmp_path / "cache"))
    midi = tmp_path / "my midi"
    midi.mkdir()
    for path in sorted((CORPUS_DIR / "piano").glob("*.mid"))[:3]:
        shutil.copy(path, midi / path.name)
    models = tmp_path / "models"
    models.mkdir()
    for suffix in (".pth", ".json"):
        shutil.copy(tiny_checkpoint.with_suffix(suffix), models / f"bundled{suffix}")
    (models / "orphan.pth").write_bytes(b"")  # no sidecar: not a bundled model
    monkeypatch.setattr(engine.paths, "MODELS_DIR", models)
    assert default_checkpoint() == models / "bundled.pth"
    out = tmp_path / "e.json"
    result = run_eval("--data", midi, "--samples", 1, "--prompt-bars", 1, "--bars", 1, "--max-tokens", 300, "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["checkpoint"] == str(models / "bundled.pth")
    # the folder was prepared (with the checkpoint's tokenizer) into the cache, not beside the music
    stores = list((tmp_path / "cache" / "stores").iterdir())
    assert len(stores) == 1 and report["data"].startswith(str(stores[0]))
    assert sorted(p.name for p in midi.iterdir()) == sorted(p.name for p in sorted((CORPUS_DIR / "piano").glob("*.mid"))[:3])


@pytest.mark.parametrize("args, words", [
    (["--checkpoint", "{tmp}/nope.pth"], "no checkpoint at"),
    (["--checkpoint", "{ckpt}", "--data", "{tmp}/missing"], "does not exist"),
    (["--checkpoint", "{ckpt}", "--samples", "0"], "--samples must be at least 1"),
    (["--checkpoint", "{ckpt}", "--top-p", "1.5"], "--top-p"),
    (["--checkpoint", "{ckpt}", "--json", "{tmp}"], "is a folder"),
    (["--checkpoint", "{ckpt}", "--threads", "-1"], "--threads must be at least 0"),
])
def test_bad_input_gets_one_clear_sentence(tiny_checkpoint, tmp_path, args, words):
    args = [a.format(tmp=tmp_path, ckpt=tiny_checkpoint) for a in args]
    result = run_eval(*args)
    assert result.exit_code == 2, result.output
    assert words in one_sentence(result)


def test_a_store_from_another_tokenizer_is_refused(tmp_path, demo_store):
    tok = PianoTokenizer.from_config({"tokenization": "TSD"})
    torch.manual_seed(0)
    model = RWKV7(ModelConfig(arch="x070", n_layer=1, n_embd=64, vocab_size=tok.vocab_size, head_size=32))
    ckpt = save_checkpoint(model, tmp_path / "tsd", tokenizer=tok.to_config())
    result = run_eval("--checkpoint", ckpt, "--data", demo_store)
    assert result.exit_code == 2
    assert "tokenized differently" in one_sentence(result)
