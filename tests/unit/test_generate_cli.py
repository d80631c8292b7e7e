"""`pianomuse-tui --headless generate` and `ports` through the real CLI, on a tiny checkpoint."""
from __future__ import annotations


import mido
import pytest
import torch
from typer.testing import CliRunner

from engine.generate.defaults import KnobSettings
from engine.data.tokenizer import PianoTokenizer
from engine.model import RWKV7, ModelConfig, save_checkpoint
from engine.paths import CORPUS_DIR
from pianomuse_tui.cli import app

PROMPT = CORPUS_DIR / "piano" / "bach_bwv846_prelude.mid"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tok = PianoTokenizer("REMI")
    torch.manual_seed(0)
    model = RWKV7(ModelConfig(n_layer=2, n_embd=64, head_size=32, vocab_size=tok.vocab_size))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pth", tokenizer=tok.to_config())


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()  # the command sets its own thread count; other tests keep theirs
    yield
    torch.set_num_threads(before)


def run(*args):
    return CliRunner().invoke(app, ["--headless", *map(str, args)])


def note_ons(path):
    return [(m.note, m.velocity) for m in mido.MidiFile(path) if m.type == "note_on" and m.velocity > 0]


def test_generate_writes_one_file_per_alternative_reproducibly(checkpoint, tmp_path):
    args = ["generate", "--checkpoint", checkpoint, "--prompt", PROMPT, "--prompt-bars", "2", "--bars", "4",
            "--alternatives", "2", "--seed", "7", "--threads", "1"]
    first = run(*args, "--out", tmp_path / "a.mid")
    assert first.exit_code == 0, first.output
    assert "tokens/s" in first.output and "seed 7" in first.output
    second = run(*args, "--out", tmp_path / "b.mid")
    assert second.exit_code == 0, second.output
    for k in (1, 2):
        assert (tmp_path / f"a-{k}.mid").is_file()
        assert note_ons(tmp_path / f"a-{k}.mid") == note_ons(tmp_path / f"b-{k}.mid")
    assert note_ons(tmp_path / "a-1.mid") != note_ons(tmp_path / "a-2.mid")
    # every note in the files is released
    for k in (1, 2):
        on = sum(1 for m in mido.MidiFile(tmp_path / f"a-{k}.mid") if m.type == "note_on" and m.velocity > 0)
        off = sum(1 for m in mido.MidiFile(tmp_path / f"a-{k}.mid") if m.type == "note_off" or (m.type == "note_on" and m.velocity == 0))
        assert on == off


def test_bad_input_is_one_sentence_and_exit_2(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", "pianomuse-no-such-server")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    cases = [
        (["generate", "--checkpoint", tmp_path / "missing.pth"], "does not exist"),
        (["generate", "--checkpoint", checkpoint, "--top-p", "0"], "top_p must be in (0, 1]"),
        (["generate", "--checkpoint", checkpoint, "--prompt", PROMPT, "--prompt-bars", "0"], "bad bar range"),
        (["generate", "--checkpoint", checkpoint, "--port", "x", "--virtual"], "not both"),
        (["generate", "--checkpoint", checkpoint, "--synth", "timidity"], "fluidsynth"),
        (["generate", "--checkpoint", checkpoint, "--midi-api", "jack", "--virtual"], "JACK server is not running"),
        (["ports", "--midi-api", "beos"], "unknown MIDI API"),
        # told before the model loads: the missing checkpoint is never reached
        (["generate", "--checkpoint", tmp_path / "missing.pth", "--bars", "0"], "--bars must be at least 1, got 0"),
        (["generate", "--checkpoint", tmp_path / "missing.pth", "-k", "0"], "--alternatives must be at least 1"),
    ]
    for args, words in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert words in " ".join(result.output.split()), (args, result.output)
        assert "Traceback" not in result.output


def test_a_checkpoint_without_a_tokenizer_is_refused(tmp_path):
    model = RWKV7(ModelConfig(n_layer=1, n_embd=64, head_size=32, vocab_size=360))
    bare = save_checkpoint(model, tmp_path / "bare.pth")
    result = run("generate", "--checkpoint", bare)
    assert result.exit_code == 2 and "no tokenizer" in result.output


@pytest.mark.slow
def test_a_performance_feeds_its_player_and_applies_knob_changes(checkpoint, tmp_path):
    """What a take's player pulls (``Performance.load``'s session, stepped by ``chunks`` as ``run`` does):
    in time order, every note released, a knob turned mid-take applied, a stop ends it at once."""
    from engine.generate.live import chunks
    from engine.generate.performance import Knobs, Performance, PerformanceSettings
    from engine.midi import NoteTracker, write_midi_file

    knobs = Knobs(KnobSettings(temperature=1.0, top_p=0.95, alternatives=2, bars=3, seed=4))
    performance = Performance(PerformanceSettings(checkpoint=checkpoint, prompt=PROMPT, prompt_bars="1", threads=0),
                              knobs)  # threads=0: leave torch's threads to the other tests
    performance.load()
    session, stop = performance.session, performance.player.stop_event
    assert session.alternatives == 2 and session.bars == 3 and len(session.prompt) > 0
    played, steps = [], 0
    horizons = []
    for events, horizon, n_tokens in chunks(session, knobs=knobs.snapshot, stop=stop):
        played += events
        horizons.append(horizon)
        steps += 1
        if steps == 5:
            knobs.update(temperature=0.0)  # the UI turns the knob mid-performance
    assert horizons == sorted(horizons) and steps > 5 and session.sampling.temperature == 0.0
    tracker = NoteTracker()
    for e in played:
        tracker.observe(e.data, 0.0)
    assert played and tracker.count == 0
    assert all(e.time <= horizons[-1] + 1e-9 for e in played)
    write_midi_file(played, tmp_path / "played.mid")
    again = Performance(PerformanceSettings(checkpoint=checkpoint, threads=0), knobs)
    again.load()
    again.stop()
    assert [n for _, _, n in chunks(again.session, knobs=knobs.snapshot, stop=again.player.stop_event)] == [0]


def test_a_model_slower_than_the_music_is_reported_while_it_plays(checkpoint, capsys):
    """A clock 500 times faster than real time plays music faster than any model: the command says so, once."""
    from midi_helpers import FakeOutput, FastClock

    from engine.generate import SamplingConfig
    from engine.generate.live import build_session, load_generator
    from engine.midi import LivePlayer, LookaheadScheduler, NoteTracker
    from engine.generate.performance import play_generated
    from pianomuse_tui.headless.generate_cmd import _print_notice

    model, tok, _ = load_generator(checkpoint)
    session = build_session(model, tok, prompt=PROMPT, prompt_bars="1", sampling=SamplingConfig(seed=5), bars=2, max_tokens=120)
    out = FakeOutput()
    scheduler = LookaheadScheduler(out, lookahead=0.2, clock=FastClock(500.0), port_check_interval=0, realtime=False)
    assert play_generated(LivePlayer(scheduler=scheduler, on_notice=_print_notice), session) == "finished"
    telemetry = scheduler.telemetry()
    scheduler.stop()
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("the model is falling behind the music") == 1, err
    assert telemetry.underruns > 0 and telemetry.events_sent == len(session.events(0))
    tracker = NoteTracker()
    for data in out.sent:
        tracker.observe(data, 0.0)
    assert tracker.count == 0


def test_without_a_checkpoint_the_bundled_model_plays_and_without_one_you_are_told(tmp_path, monkeypatch):
    import engine.paths
    import engine.rundir

    bundled = engine.rundir.bundled_checkpoint()
    assert bundled is not None and bundled.parent == engine.paths.MODELS_DIR
    result = run("generate", "--bars", "1", "--max-tokens", "64", "--seed", "3", "--threads", "1", "--out", tmp_path / "first.mid")
    assert result.exit_code == 0, result.output
    assert f"model {bundled}" in " ".join(result.output.split())
    assert note_ons(tmp_path / "first.mid")  # real notes from the bundled model

    monkeypatch.setattr(engine.paths, "MODELS_DIR", tmp_path / "no-models")
    result = run("generate", "--bars", "1", "--out", tmp_path / "none.mid")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no bundled model" in " ".join(result.output.split()) and "--checkpoint" in result.output
    assert not (tmp_path / "none.mid").exists()


def bars_in_file(path) -> float:
    """How many bars a file spans, read with its own time signatures (end of track included)."""
    midi = mido.MidiFile(path)
    tick, bars, bar_ticks, last_change = 0, 0.0, 4 * midi.ticks_per_beat, 0
    for message in midi.tracks[0]:
        tick += message.time
        if message.type == "time_signature":
            bars += (tick - last_change) / bar_ticks
            bar_ticks, last_change = midi.ticks_per_beat * 4 * message.numerator // message.denominator, tick
    return bars + (tick - last_change) / bar_ticks


@pytest.mark.slow
def test_bars_are_honoured_and_an_early_end_is_said(tmp_path):
    result = run("generate", "--bars", "8", "--seed", "1", "--threads", "1", "--out", tmp_path / "eight.mid")
    assert result.exit_code == 0, result.output
    assert "8 bars" in result.output and "ended early" not in result.output
    assert 7.99 < bars_in_file(tmp_path / "eight.mid") <= 8.01 + 1  # the last chord may ring over the bar line
    assert any(m.type == "time_signature" for m in mido.MidiFile(tmp_path / "eight.mid"))
    result = run("generate", "--bars", "8", "--max-tokens", "30", "--seed", "1", "--threads", "1", "--out", tmp_path / "short.mid")
    assert result.exit_code == 0, result.output
    assert "ended early: --max-tokens ran out after" in " ".join(result.output.split())
    result = run("generate", "--max-tokens", "30", "--seed", "1", "--threads", "1", "--out", tmp_path / "budget.mid")
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "#1: 30 tokens" in text, text  # a budget only: it ran out, in words
    assert "(--max-tokens reached)" in text and "max_tokens)" not in text, text
    assert "(done)" in " ".join(run("generate", "--bars", "2", "--seed", "1", "--out", tmp_path / "two.mid").output.split())


def test_out_naming_a_folder_writes_the_take_inside_it(checkpoint, tmp_path):
    """Issue 18 item 15: --out DIR used to write DIR.mid beside the folder."""
    folder = tmp_path / "takes"
    folder.mkdir()
    result = run("generate", "--checkpoint", checkpoint, "--bars", "1", "--max-tokens", "32", "--seed", "4",
                 "--threads", "1", "--out", folder)
    assert result.exit_code == 0, result.output
    assert [p.name for p in folder.iterdir()] == ["pianomuse-seed4.mid"] and not (tmp_path / "takes.mid").exists()


def test_help_says_each_exit_status():
    """A script calling `generate` can read what each exit status means in --help (they were only in the source)."""
    from pianomuse_tui.headless.generate_cmd import EXIT_CODES

    text = " ".join(run("generate", "--help").output.split())
    assert "Exit status: 0 finished, 130 stopped by Ctrl-C" in text, text
    assert "2 bad input" in text and "3 the MIDI port was lost for good" in text
    assert sorted(EXIT_CODES.values()) == [0, 3, 130]


@pytest.mark.parametrize("budget_given, words", [
    (True, "--max-tokens reached"),
    (False, "a take's limit of 12 tokens reached (--max-tokens sets another)"),
])
def test_a_budget_the_user_never_set_is_not_blamed_on_max_tokens(checkpoint, budget_given, words):
    """A take with no --max-tokens still ends at the hard cap of one take; the summary names that
    limit, not a flag the user never gave (here a session with a 12-token budget stands in for it)."""
    from engine.generate import SamplingConfig
    from engine.generate.live import build_session, load_generator
    from engine.generate.performance import GenerationSummary
    from pianomuse_tui.headless.generate_cmd import _generation_summary

    model, tok, _ = load_generator(checkpoint)
    session = build_session(model, tok, sampling=SamplingConfig(seed=1), max_tokens=12)
    session.run()
    summary = GenerationSummary.of(session, 1.0, budget_given=budget_given)
    assert summary.token_limit == 12 and summary.alternatives[0].tokens == 12
    assert summary.alternatives[0].stop_reason == ("max_tokens" if budget_given else "token_limit")
    assert _generation_summary(summary).endswith(f"({words})")
