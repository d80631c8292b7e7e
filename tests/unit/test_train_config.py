"""TrainConfig: presets, TOML layering, dotted overrides, and one clear error per bad value."""
from __future__ import annotations

import tomllib

import pytest

from engine.train.config import ConfigError, TrainConfig, load_config
from engine.train.launch import parse_override_args, resolve_config


def test_presets_load_and_differ():
    tiny, small, base = (load_config(preset=p) for p in ("tiny", "small", "base"))
    assert (tiny.model.n_layer, tiny.model.n_embd) == (2, 128)
    assert small.model.n_embd > tiny.model.n_embd
    assert base.model.n_layer == 12 and base.data.objective == "lm"
    assert load_config().preset == "small"  # no config, no preset: small


def test_config_file_over_preset_and_overrides_win(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[optim]\nlr = 3e-4\n[train]\nmax_steps = 7\n')
    cfg = load_config(path, preset="tiny", overrides=["optim.lr=1e-4", "train.l2wrap=true", "debug.nan_at_steps=1,3"])
    assert cfg.model.n_layer == 2  # from the preset
    assert cfg.train.max_steps == 7  # from the file
    assert cfg.optim.lr == pytest.approx(1e-4)  # the override wins
    assert cfg.train.l2wrap is True
    assert cfg.debug.nan_at_steps == [1, 3]


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(preset="tiny", overrides={"train.seed": 9, "run.name": "x"})
    cfg.save(tmp_path / "config.toml")
    data = tomllib.loads((tmp_path / "config.toml").read_text())
    assert data["train"]["seed"] == 9 and data["preset"] == "tiny"
    again = TrainConfig.from_toml(tmp_path / "config.toml")
    assert again == cfg


def test_cli_override_words():
    assert parse_override_args(["--optim.lr", "3e-4", "--train.seed=5"]) == ["optim.lr=3e-4", "train.seed=5"]
    with pytest.raises(ConfigError, match="needs a value"):
        parse_override_args(["--optim.lr"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_override_args(["--bogus"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.lr=-1e-3", "optim.lr must be greater than 0"),
        ("optim.nope=1", "unknown config key 'optim.nope'"),
        ("nosection.lr=1", "unknown config key 'nosection.lr'"),
        ("train.max_steps=abc", "needs a int value"),
        ("train.max_steps=1.5", "needs a int value"),
        ("train.l2wrap=maybe", "needs a bool value"),
        ("optim.lr=nan", "needs a float value"),
        ("model.n_embd=100", "[model]: head_size 64 does not divide n_embd 100"),
        ("model.dim_w=-3", "[model]: dim_w must be a positive integer"),
        ("model.arch=x060", "[model]: unknown architecture 'x060'"),
        ("data.objective=chat", "data.objective must be one of"),
        ("optim.beta2=1.0", "optim.beta2 must be in [0, 1)"),
        ("train.device=tpu", "train.device must be"),
        ("train.ema_decay=1", "train.ema_decay must be 0 (no weight averaging) or a decay in (0, 1) such as 0.999, got 1.0"),
        ("train.ema_decay=-0.5", "train.ema_decay must be 0 (no weight averaging) or a decay in (0, 1) such as 0.999, got -0.5"),
        ("train.ema_decay=often", "config key 'train.ema_decay' needs a float value"),
        ("optim=3", "is a section"),
        ("lr", "section.key=value"),
    ],
)
def test_bad_values_give_one_sentence(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(preset="tiny", overrides=[override])
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_key_and_bad_toml_in_file(tmp_path):
    bad_key = tmp_path / "a.toml"
    bad_key.write_text("[optim]\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(bad_key)
    bad_syntax = tmp_path / "b.toml"
    bad_syntax.write_text("[optim\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad_syntax)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="huge")


def test_batch_must_split_over_micro_batches_and_processes():
    cfg = load_config(preset="tiny", overrides=["train.batch_size=8", "train.micro_batch_size=2"])
    assert cfg.accumulation_steps(1) == 4 and cfg.accumulation_steps(2) == 2
    with pytest.raises(ConfigError, match="multiple of train.micro_batch_size"):
        cfg.accumulation_steps(3)


def test_named_flags_and_resume_conflicts(tmp_path):
    cfg = resolve_config(preset="tiny", data=str(tmp_path), run_root=tmp_path / "runs", max_steps=3, device="cpu")
    assert (cfg.data.path, cfg.train.max_steps, cfg.train.device) == (str(tmp_path), 3, "cpu")
    assert cfg.run.root == str(tmp_path / "runs")
    with pytest.raises(ConfigError, match="only one of them"):
        resolve_config(preset="tiny", resume="auto", init_from="x.pth")
    with pytest.raises(ConfigError, match="--max-steps must be greater than 0"):
        resolve_config(preset="tiny", max_steps=0)


def test_compile_is_auto_on_cuda_and_accepts_bools(tmp_path):
    from engine.train.config import compile_enabled

    cfg = load_config(preset="tiny")
    assert cfg.train.compile == "auto"
    assert compile_enabled(cfg.train, "cuda") and not compile_enabled(cfg.train, "cpu")
    on = load_config(preset="tiny", overrides=["train.compile=yes"])
    assert on.train.compile == "true" and compile_enabled(on.train, "cpu")
    path = tmp_path / "c.toml"
    path.write_text("[train]\ncompile = false\n")
    off = load_config(config_path=path)
    assert off.train.compile == "false" and not compile_enabled(off.train, "cuda")
    with pytest.raises(ConfigError, match="train.compile must be auto, true or false"):
        load_config(preset="tiny", overrides=["train.compile=sometimes"])
    from engine.train.config import fused_head_enabled

    assert fused_head_enabled(cfg.train, "cuda") and not fused_head_enabled(cfg.train, "cpu")
    forced = load_config(preset="tiny", overrides=["train.fused_head=true"])
    assert fused_head_enabled(forced.train, "cpu")


def test_the_model_section_is_one_translation_to_model_config():
    from engine.model.config import ConfigError as ModelConfigError, ModelConfig
    from engine.train.config import TrainConfig

    section = TrainConfig.from_preset("tiny").model
    built = section.model_config(vocab_size=300)
    assert built == ModelConfig(arch=section.arch, n_layer=section.n_layer, n_embd=section.n_embd, vocab_size=300,
                                head_size=section.head_size)  # 0 in TOML is ModelConfig's released default
    section.dim_w = 64
    assert section.model_config(300).dim_w == 64
    section.n_embd = 100  # not a multiple of the head size: ModelConfig's own sentence
    with pytest.raises(ModelConfigError, match="head_size"):
        section.model_config(300)


def test_the_model_section_is_model_config_with_toml_spelling():
    """One owner for a model's shape: the [model] table has ModelConfig's fields (less vocab_size),
    their defaults, and 0 where ModelConfig has None; nothing declares them a second time."""
    from dataclasses import fields

    from engine.model.config import LOW_RANK, ModelConfig
    from engine.train.config import ModelSection

    section = {f.name: f.default for f in fields(ModelSection)}
    model = {f.name: f.default for f in fields(ModelConfig) if f.name != "vocab_size"}
    assert section == {**model, **dict.fromkeys(LOW_RANK, 0)}
    assert ModelSection().model_config(300) == ModelConfig(vocab_size=300)


def test_the_train_help_lists_the_presets_from_the_one_list(monkeypatch):
    import typer
    from typer.testing import CliRunner

    from engine.train import config
    from pianomuse_tui.headless import train_cmd

    monkeypatch.setattr(config, "PRESETS", (*config.PRESETS, "huge"))
    app = typer.Typer()
    train_cmd.register(app)

    @app.command("other")  # two commands, so typer keeps "train" as a subcommand
    def other() -> None:
        pass

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "tiny | small | base | huge" in result.output
    # config fields that carry a help text are listed from the config itself
    assert "--train.ema_decay: keep an exponential moving average (EMA) of the weights" in " ".join(result.output.split())
