"""The built-in piano (libfluidsynth in-process): audible, correctly timed notes rendered into a buffer
offline and live (capture mode, paced like a sound card), `--out take.wav`, and the one-sentence hint."""
from __future__ import annotations

import time
import wave

import numpy as np
import pytest

from engine.midi import LivePlayer, OutputChoice, note_off, note_on
from engine.midi.builtin_synth import (
    BUILTIN_NAME,
    SAMPLE_RATE,
    SOUNDFONT_HINT,
    available_outputs,
    builtin_problem,
    find_soundfont,
    onsets,
    render,
)

pytestmark = pytest.mark.skipif(find_soundfont() is None, reason="needs a GM SoundFont (CI installs fluid-soundfont-gm)")


def _phrase(n: int = 16, start: float = 0.25, gap: float = 0.5):
    """Separate notes of several pitches and velocities, a little off a regular grid."""
    times = [start + gap * i + 0.013 * (i % 7) for i in range(n)]
    events = []
    for i, t in enumerate(times):
        pitch, velocity = (48, 60, 64, 67, 72, 55)[i % 6], (60, 80, 100, 110)[i % 4]
        events += [note_on(t, pitch, velocity), note_off(t + 0.1, pitch)]
    return times, events


def _errors(found: list[float], scheduled: list[float]) -> list[float]:
    return [min(found, key=lambda f: abs(f - s)) - s for s in scheduled]


def test_offline_render_sounds_every_note_at_its_time():
    times, events = _phrase()
    stereo = render(events)
    mono = stereo.astype(np.float32).reshape(-1, 2).mean(axis=1) / 32768
    assert len(mono) >= int((times[-1] + 1.0) * SAMPLE_RATE)
    assert np.abs(mono[: int(0.2 * SAMPLE_RATE)]).max() < 1e-3  # silence before the first note
    found = onsets(mono)
    assert len(found) == len(times), (found, times)
    errors = _errors(found, times)
    assert max(abs(e) for e in errors) < 0.006, errors  # sample-exact events; the attack of each sample
    for t in times:  # audible: each note well above the noise floor
        assert np.abs(mono[int(t * SAMPLE_RATE): int((t + 0.05) * SAMPLE_RATE)]).max() > 0.01


def test_live_through_the_player_renders_notes_where_the_scheduler_put_them():
    times, events = _phrase(12)
    player = LivePlayer(OutputChoice(synth="builtin", audio_driver="capture", lookahead=0.3))
    player.open()
    assert BUILTIN_NAME in player.output_name
    player.scheduler.record = True
    try:
        assert player.play([(events, times[-1] + 0.2, 0)]) == "finished"
        time.sleep(0.3)  # the last attack's blocks
        first_sample_at, mono = player.synth.captured()
        sent = [target for target, _, data in player.scheduler.sent_log if data[0] & 0xF0 == 0x90]
    finally:
        player.close()
    assert len(sent) == len(times)
    found = [first_sample_at + t for t in onsets(mono)]
    heard = [e for e in _errors(found, sent) if abs(e) < 0.05]
    # every note sounds where it was sent: one audio block (5.8 ms) + the sender's lateness + the
    # attack. A starved capture thread can render a block late enough that a short note's on and off
    # fall into one block and the detector misses it (seen at load 7 on 2 cores): one such miss is allowed.
    assert len(heard) >= len(sent) - 1, (found, sent)
    assert np.median(np.abs(heard)) < 0.02, heard


def test_headless_out_wav_writes_the_take_and_its_rendering(tmp_path):
    from typer.testing import CliRunner

    from pianomuse_tui.cli import app

    result = CliRunner().invoke(app, ["--headless", "generate", "--bars", "2", "--seed", "1", "--threads", "1",
                                      "--out", str(tmp_path / "take.wav")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "take.mid").is_file()
    with wave.open(str(tmp_path / "take.wav")) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, SAMPLE_RATE)
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert np.abs(audio).max() > 300  # audible


def test_without_a_soundfont_the_hint_is_one_sentence(monkeypatch, tmp_path):
    import engine.midi.builtin_synth as bs

    monkeypatch.setattr(bs, "SOUNDFONT_PLACES", ())
    monkeypatch.setattr(bs, "SOUNDFONT_FOLDERS", (str(tmp_path),))
    monkeypatch.delenv("PIANOMUSE_SOUNDFONT", raising=False)
    assert builtin_problem() == SOUNDFONT_HINT and SOUNDFONT_HINT.count(". ") == 0
    builtin = available_outputs("auto")[0]
    assert (builtin.kind, builtin.label, builtin.available, builtin.hint) == ("builtin", BUILTIN_NAME, False, SOUNDFONT_HINT)
    with pytest.raises(Exception, match="No SoundFont found"):
        LivePlayer(OutputChoice(synth="builtin", audio_driver="capture")).open()


def test_the_built_in_piano_is_listed_first_and_playable_when_a_soundfont_is_there():
    first = available_outputs("auto")[0]
    assert (first.kind, first.available, first.hint) == ("builtin", True, None)
