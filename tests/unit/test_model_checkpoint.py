"""Checkpoints: official key names and shapes, sidecar JSON, official files, clear errors, vocab resize."""
from __future__ import annotations

import json

import pytest
import torch

from engine.atomic import file_sha256
from engine.model import CheckpointError, ConfigError, ModelConfig, load_checkpoint, read_sidecar, resize_vocab, save_checkpoint
from model_helpers import perturbed_model, rel_err

OFFICIAL_BLOCK_KEYS = {
    "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias",
    "att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g",
    "att.w0", "att.w1", "att.w2", "att.a0", "att.a1", "att.a2", "att.v0", "att.v1", "att.v2",
    "att.g1", "att.g2", "att.k_k", "att.k_a", "att.r_k",
    "att.receptance.weight", "att.key.weight", "att.value.weight", "att.output.weight",
    "att.ln_x.weight", "att.ln_x.bias", "ffn.x_k", "ffn.key.weight", "ffn.value.weight",
}  # fmt: skip


def one_sentence(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


@pytest.fixture(scope="module")
def model():
    return perturbed_model(arch="x070", n_layer=2, n_embd=64, vocab_size=40, head_size=32, seed=21)


def test_saved_state_dict_has_the_official_keys_and_shapes(tmp_path, model):
    path = save_checkpoint(model, tmp_path / "m")
    assert path == tmp_path / "m.pth"
    sd = torch.load(path, weights_only=True)
    expected = {"emb.weight", "ln_out.weight", "ln_out.bias", "head.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias"}
    expected |= {f"blocks.{l}.{k}" for l in range(2) for k in OFFICIAL_BLOCK_KEYS}
    assert set(sd) == expected
    C, H, N = 64, 2, 32
    assert sd["emb.weight"].shape == (40, C) and sd["head.weight"].shape == (40, C)
    assert sd["blocks.1.att.x_r"].shape == (1, 1, C) and sd["blocks.1.att.r_k"].shape == (H, N)
    assert sd["blocks.1.att.w1"].shape == (C, model.config.dim_w) and sd["blocks.1.att.g2"].shape == (model.config.dim_g, C)
    assert sd["blocks.1.ffn.key.weight"].shape == (4 * C, C) and sd["blocks.1.ffn.value.weight"].shape == (C, 4 * C)


def test_round_trip_keeps_weights_config_and_sidecar(tmp_path):
    m = perturbed_model(arch="x080", seed=22)
    tok = {"kind": "REMI", "vocab_size": 40}
    save_checkpoint(m, tmp_path / "ck.pth", tokenizer=tok, extra={"step": 12})
    side = json.loads((tmp_path / "ck.json").read_text())
    assert side == {"format": "pianomuse-checkpoint/1", "model": m.config.to_dict(), "tokenizer": tok, "extra": {"step": 12},
                    "sha256": {"weights": file_sha256(tmp_path / "ck.pth")}}
    loaded, sidecar = load_checkpoint(tmp_path / "ck", wkv_backend="reference")
    assert loaded.config == m.config and sidecar["tokenizer"] == tok and sidecar["extra"] == {"step": 12}
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    idx = torch.randint(0, 40, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(idx), m(idx))
    assert read_sidecar(tmp_path / "ck.pth")["extra"] == {"step": 12}


def test_official_bf16_file_with_prefix_and_without_layer0_value_residual(tmp_path, model):
    """Released checkpoints: bf16, no layer-0 v0/v1/v2, keys wrapped in _forward_module., no sidecar."""
    sd = {f"_forward_module.{k}": v.to(torch.bfloat16) for k, v in model.state_dict().items() if k not in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")}
    torch.save(sd, tmp_path / "rwkv7-official.pth")
    loaded, sidecar = load_checkpoint(tmp_path / "rwkv7-official.pth", wkv_backend="reference")
    assert sidecar["tokenizer"] is None and sidecar["model"] == model.config.to_dict()
    assert loaded.blocks[0].att.v1.shape == model.blocks[0].att.v1.shape  # filled in, unused
    rounded = perturbed_model(arch="x070", n_layer=2, n_embd=64, vocab_size=40, head_size=32, seed=21)
    rounded.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in rounded.state_dict().items()})
    idx = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_err(loaded(idx), rounded(idx)) < 1e-6
    bf16, _ = load_checkpoint(tmp_path / "rwkv7-official.pth", dtype=torch.bfloat16, wkv_backend="reference")
    assert bf16.emb.weight.dtype == torch.bfloat16


def test_x080_is_detected_from_deep_embed_tables(tmp_path):
    m = perturbed_model(arch="x080", seed=23)
    torch.save(m.state_dict(), tmp_path / "v8.pth")  # no sidecar
    loaded, _ = load_checkpoint(tmp_path / "v8.pth")
    assert loaded.config.arch == "x080"
    with pytest.raises(CheckpointError, match="arch"):
        load_checkpoint(tmp_path / "v8.pth", config=ModelConfig.from_dict({**m.config.to_dict(), "arch": "x070"}))


def test_bad_paths_and_files_give_one_clear_sentence(tmp_path, model):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a checkpoint") as e:
        load_checkpoint(tmp_path / "garbage.pth")
    one_sentence(e.value)
    good = save_checkpoint(model, tmp_path / "good")
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_checkpoint(tmp_path / "cut.pth")
    one_sentence(e.value)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an RWKV-7 checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
    torch.save({"emb.weight": torch.zeros(4, 8), "blocks.0.att.time_faaaa": torch.zeros(2, 4)}, tmp_path / "v6.pth")
    with pytest.raises(CheckpointError, match="RWKV-5/6 model"):
        load_checkpoint(tmp_path / "v6.pth")


def test_shape_problems_are_named(tmp_path, model, monkeypatch):
    base = model.state_dict()

    def write(name, sd):
        torch.save(sd, tmp_path / name)
        return tmp_path / name

    broken = dict(base)
    broken["blocks.1.att.key.weight"] = torch.zeros(64, 32)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.att\.key\.weight has shape \[64, 32\]") as e:
        load_checkpoint(write("shape.pth", broken))
    one_sentence(e.value)
    broken = dict(base)
    broken["blocks.1.att.r_k"] = torch.zeros(4, 16)
    with pytest.raises(CheckpointError, match="head size 16"):
        load_checkpoint(write("head.pth", broken))
    missing = {k: v for k, v in base.items() if k != "blocks.1.ffn.value.weight"}
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\) \(first: blocks\.1\.ffn\.value\.weight\)"):
        load_checkpoint(write("missing.pth", missing))
    path = save_checkpoint(model, tmp_path / "ok")
    with pytest.raises(CheckpointError, match="head size 32 but head size 16 was asked for"):
        load_checkpoint(path, config=ModelConfig(n_layer=2, n_embd=64, vocab_size=40, head_size=16))
    with pytest.raises(CheckpointError, match="drop the config"):
        load_checkpoint(path, config=ModelConfig(n_layer=3, n_embd=64, vocab_size=40, head_size=32))
    monkeypatch.setenv("RWKV_HEAD_SIZE", "64")
    with pytest.raises(CheckpointError, match="RWKV_HEAD_SIZE=64 but this model has head size 32"):
        load_checkpoint(path)
    monkeypatch.setenv("RWKV_HEAD_SIZE", "32")
    load_checkpoint(path)
    # a sidecar from another model is caught
    other = save_checkpoint(perturbed_model(n_layer=1, seed=3), tmp_path / "other")
    (tmp_path / "ok.json").write_text(other.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match="does not match the checksum in its sidecar.* belongs to another"):
        load_checkpoint(path)
    foreign = json.loads(other.with_suffix(".json").read_text())
    del foreign["sha256"]  # a sidecar written before checksums: the shapes still tell
    (tmp_path / "ok.json").write_text(json.dumps(foreign))
    with pytest.raises(CheckpointError, match="sidecar .* describes"):
        load_checkpoint(path)


def test_a_bit_flip_in_the_weights_is_refused_by_every_loader(tmp_path):
    """Issue 18 item 4: a damaged model.pth used to load silently (and play or resume garbage)."""
    path = save_checkpoint(perturbed_model(n_layer=1, seed=5), tmp_path / "m")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checksum in its sidecar"):
        load_checkpoint(path)


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="head_size 64 does not divide n_embd 100"):
        ModelConfig(n_embd=100, head_size=64)
    with pytest.raises(ConfigError, match="unknown architecture"):
        ModelConfig(arch="x060")
    assert ModelConfig.from_dict(ModelConfig(n_embd=128).to_dict()) == ModelConfig(n_embd=128)


def test_vocab_resize_for_music_fine_tuning(tmp_path):
    text = perturbed_model(arch="x080", vocab_size=300, seed=24)
    grown = resize_vocab(text, 320)
    assert grown.config.vocab_size == 320 and text.config.vocab_size == 300
    assert torch.equal(grown.emb.weight[:300], text.emb.weight) and torch.equal(grown.head.weight[:300], text.head.weight)
    assert torch.equal(grown.blocks[1].ffn.enn.weight[300:], torch.ones(20, 64))
    for k, v in text.state_dict().items():  # the body is untouched
        if not k.startswith(("emb", "head")) and "enn" not in k:
            assert torch.equal(grown.state_dict()[k], v), k
    # new embedding rows sit around the old rows' mean, within their spread; new head rows are tiny
    old = text.emb.weight
    new_rows = grown.emb.weight[300:]
    assert (new_rows.mean(0) - old.mean(0)).abs().max() < 0.1 * old.std(0).max()
    assert new_rows.std() > 0 and grown.head.weight[300:].abs().max() < 1e-3
    music = resize_vocab(text, 50, keep=0)
    assert music.config.vocab_size == 50 and not torch.equal(music.emb.weight[:50], text.emb.weight[:50])
    with torch.no_grad():
        logits = music(torch.randint(0, 50, (1, 5)))
    assert logits.shape == (1, 5, 50) and logits.abs().max() < 1e-2  # new tokens start neutral
    loaded, _ = load_checkpoint(save_checkpoint(music, tmp_path / "music"))
    assert loaded.config.vocab_size == 50
