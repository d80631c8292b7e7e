"""Playing with the model on a private JACK server: a scripted pianist plays a real MIDI file into
PianoMuse's input port in real time; the bundled model listens, takes over after the pause or the
takeover CC, stops when the pianist plays again, and the take holds both parts."""
from __future__ import annotations

import threading
import time

import mido
import pytest
import torch
from jack_server import jack_server, receiver, sounding_after  # noqa: F401  (fixtures)

from engine.generate.duet import HUMAN_CHANNEL, MODEL_CHANNEL, Duet, DuetConfig
from engine.generate.live import build_session, load_generator
from engine.midi import LivePlayer, OutputChoice
from engine.midi.ports import VIRTUAL_INPUT_NAME, open_input
from engine.paths import CORPUS_DIR

pytestmark = pytest.mark.jack


def phrase_from_file(n: int = 10, speed: float = 1.0) -> list[tuple[float, float, int, int]]:
    """The first ``n`` notes of a corpus piece as (onset s, duration s, pitch, velocity), from 0."""
    import symusic

    score = symusic.Score(str(CORPUS_DIR / "piano" / "bach_bwv846_prelude.mid"), ttype="second")
    notes = sorted((x for t in score.tracks for x in t.notes), key=lambda x: (x.time, x.pitch))[:n]
    first = notes[0].time
    return [((x.time - first) / speed, min(x.duration, 0.5) / speed, x.pitch, max(30, x.velocity)) for x in notes]


class ScriptedPianist:
    """A JACK MIDI output connected to PianoMuse's input; plays phrases in real time from a thread."""

    def __init__(self) -> None:
        import rtmidi

        self.out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "pm-test-pianist")
        names = self.out.get_ports()
        target = next(n for n in names if VIRTUAL_INPUT_NAME in n)
        self.out.open_port(names.index(target), "keys")
        self.played: list[tuple[float, tuple[int, ...]]] = []  # (time.monotonic(), message)

    def send(self, data: tuple[int, ...]) -> None:
        self.played.append((time.monotonic(), data))
        self.out.send_message(list(data))

    def phrase(self, notes) -> None:
        start = time.monotonic()
        events = sorted([(t, 1, (0x90, p, v)) for t, d, p, v in notes] + [(t + d, 0, (0x80, p, 0)) for t, d, p, v in notes])
        for at, _, data in events:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.send(data)

    def close(self) -> None:
        self.out.close_port()
        self.out.delete()


@pytest.fixture(scope="module")
def bundled():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_generator(None)
    torch.set_num_threads(threads)


def _duet(bundled, receiver, mode: str, **config):
    model, tok, _ = bundled
    player = LivePlayer(OutputChoice(api="jack", port=receiver.port_name, lookahead=0.25))
    listening = open_input("jack", virtual=True)
    player.open()
    session = build_session(model, tok)
    duet = Duet(session, DuetConfig(mode=mode, **config), player, listening.messages)
    return player, listening, duet


def _play_along(player, listening, duet, script) -> float:
    """Run the duet while ``script`` (a thread) plays the pianist; close everything; the end in music seconds."""
    pianist = ScriptedPianist()
    thread = threading.Thread(target=script, args=(pianist,), daemon=True)
    thread.start()
    try:
        duet.play()
        return player.music_time()
    finally:
        thread.join(10)
        player.close()
        listening.close()
        pianist.close()


def test_continue_listens_takes_over_after_a_pause_and_a_cc_stops_when_you_play_and_saves_both(bundled, receiver, tmp_path):
    player, listening, duet = _duet(bundled, receiver, "continue", pause=0.8)
    phrase = phrase_from_file(10)
    marks: dict[str, float] = {}

    def play(pianist) -> None:
        time.sleep(0.3)
        pianist.phrase(phrase)  # then a pause: the model takes over
        time.sleep(2.0)
        marks["resume"] = time.monotonic()
        pianist.phrase(phrase[:6])  # playing again stops it
        time.sleep(0.2)
        marks["cc"] = time.monotonic()
        pianist.send((0xB0, 67, 127))  # the soft pedal hands over at once
        time.sleep(1.5)
        player.stop()

    already = len(receiver.received())
    end = _play_along(player, listening, duet, play)
    origin = player.scheduler._origin
    take = duet.finish(end)

    # both takeovers happened, the first after the pause and the second on the CC, each first note on
    # time on the first grid step after the lead (within 100 ms), or, where the machine was too busy
    # to generate it by then, the first it could meet (``Handover.earliest``)
    assert [h.reason for h in duet.handovers] == ["pause", "cc"], duet.handovers
    assert duet.handovers[1].at == pytest.approx(marks["cc"] - origin, abs=0.02)
    grid = duet.timeline.seconds(duet.encoder.grid(duet.timeline)) - duet.timeline.seconds(0)
    for h in duet.handovers:
        assert h.late < 0.01 and h.earliest <= h.first_note < h.earliest + grid + 1e-6, duet.handovers
        assert h.first_note - h.at <= 0.100 or h.earliest - h.at > 0.100 - grid, duet.handovers

    # every note the pianist played reached the model's state: the fed tokens decode to those pitches
    assert duet.fed_notes == len(phrase) + 6
    session = duet.session
    with torch.no_grad():
        prefill = session.model(torch.tensor([[session.tokenizer.bos_id] + session.fed]), return_state=True)[1]
    for name in ("att_shift", "wkv", "ffn_shift"):
        live, parallel = getattr(session.state, name), getattr(prefill, name)
        assert torch.allclose(live, parallel, atol=2e-3), (name, (live - parallel).abs().max())
    forced_pitches = [int(session.tables.value[i]) for i in session.forced if session.tables.kind[i] == "Pitch"]
    assert forced_pitches == [p for _, _, p, _ in phrase] + [p for _, _, p, _ in phrase[:6]]

    # the model stopped when the pianist played again: no model note starts between then and the CC
    got = receiver.received_settled()[already:]
    model_ons = [d for _, d in got if d[0] == 0x90 | MODEL_CHANNEL and d[2] > 0]
    assert len(model_ons) >= 3
    resume = marks["resume"] - origin + 0.05
    late = [e for e in take.model if e.is_note_on and resume < e.time < duet.handovers[1].at]
    assert late == []
    # nothing left sounding at the receiver (model and the pianist's notes passed through)
    assert sounding_after([d for _, d in got]) == {}

    path = duet.write(tmp_path / "duet.mid")
    midi = mido.MidiFile(path)
    parts = {t.name: [m for m in t if m.type == "note_on" and m.velocity] for t in midi.tracks if t.name}
    assert set(parts) == {"PianoMuse", "You"}
    assert [m.note for m in parts["You"]] == forced_pitches
    assert all(m.channel == HUMAN_CHANNEL for m in parts["You"]) and len(parts["PianoMuse"]) >= 3


def test_accompany_keeps_the_model_below_the_split_while_you_play(bundled, receiver):
    player, listening, duet = _duet(bundled, receiver, "accompany", split=60)
    phrase = [(t, d, p + 12, v) for t, d, p, v in phrase_from_file(12)]

    def play(pianist) -> None:
        time.sleep(0.5)
        pianist.phrase(phrase)
        deadline = time.monotonic() + 20  # a loaded machine feeds slower; the test is that all arrive
        while duet.fed_notes < len(phrase) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        player.stop()

    take = duet.finish(_play_along(player, listening, duet, play))
    model_pitches = [e.data[1] for e in take.model if e.is_note_on]
    assert model_pitches and max(model_pitches) < 60
    assert duet.fed_notes == len(phrase)


def test_call_and_response_answers_on_the_bar_line(bundled, receiver):
    player, listening, duet = _duet(bundled, receiver, "call-and-response", turn_bars=1, count_in=1, tempo=160)
    bar = duet.seconds_per_bar

    def play(pianist) -> None:
        time.sleep(bar)  # the count-in
        pianist.phrase(phrase_from_file(6, speed=2.0))
        pianist.send((0x90, 48, 70))  # a key held across the bar line where the model takes over
        time.sleep(max(0.0, 2.3 * bar - (time.monotonic() - started)))
        pianist.send((0x80, 48, 0))
        time.sleep(2.2 * bar - (time.monotonic() - started - 2.3 * bar))
        player.stop()

    already = len(receiver.received())
    started = time.monotonic()
    _play_along(player, listening, duet, play)
    # the held key's release still sounds through and ends it in the take
    assert sounding_after([d for _, d in receiver.received()[already:]]) == {}
    held = [e for e in duet.take.human if e.data[1] == 48]
    assert [e.is_note_on for e in held] == [True, False] and held[1].time > duet.handovers[0].at
    assert duet.handovers and duet.handovers[0].reason == "turn"
    assert duet.handovers[0].at == pytest.approx(2 * bar, abs=1e-6)  # count-in bar + your bar
    assert duet.handovers[0].latency == pytest.approx(0.0, abs=1e-6)  # the first note on the bar line
    first_turn = [e for e in duet.take.model if e.is_note_on and e.time < 3 * bar]
    assert first_turn and all(2 * bar <= e.time < 3 * bar for e in first_turn)


def test_the_headless_command_plays_with_you_and_writes_both_parts_when_stopped(receiver, tmp_path):
    """`generate --in virtual` end to end: the pianist plays, the model answers after the pause,
    SIGTERM (or Ctrl-C) stops it with exit 130, the summary says how fast it answered, and the take
    has both tracks."""
    import os
    import re
    import signal

    from typer.testing import CliRunner

    from pianomuse_tui.cli import app

    phrase = phrase_from_file(8)

    def pianist_then_stop() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the command's input port exists
            try:
                pianist = ScriptedPianist()
                break
            except StopIteration:
                time.sleep(0.1)
        else:
            return
        already = len(receiver.received())
        for _ in range(10):  # the model may still be loading: play until it answers
            pianist.phrase(phrase)
            time.sleep(2.5)  # the pause (1 s), then the model plays
            if any(d[0] == 0x90 | MODEL_CHANNEL and d[2] for _, d in receiver.received()[already:]):
                break
        pianist.close()
        os.kill(os.getpid(), signal.SIGTERM)

    threads = torch.get_num_threads()
    thread = threading.Thread(target=pianist_then_stop, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(app, ["--headless", "generate", "--in", "virtual", "--midi-api", "jack",
                                          "--port", receiver.port_name, "--seed", "2", "--out", str(tmp_path / "duet.mid")])
    finally:
        thread.join(70)
        torch.set_num_threads(threads)
    assert result.exit_code == 130, result.output
    text = " ".join(result.output.split())
    assert "listening on PianoMuse:PianoMuse in" in text and re.search(r"\d+ handovers? \(the model's first note came", text), text
    parts = {t.name: [m for m in t if m.type == "note_on" and m.velocity] for t in mido.MidiFile(tmp_path / "duet.mid").tracks if t.name}
    you = [m.note for m in parts["You"]]
    assert you and len(you) % len(phrase) == 0 and you == [p for _, _, p, _ in phrase] * (len(you) // len(phrase))
    assert f"{len(you)} of your notes fed" in text and parts["PianoMuse"]


def test_with_no_output_given_you_hear_it_on_the_built_in_piano_or_are_told_why_not(jack_server, tmp_path):
    """`generate --in virtual` alone: the built-in piano plays; a machine without a sound output for
    it (this one, CI) says so in one line and plays to the virtual port instead."""
    import os
    import signal
    import subprocess

    from typer.testing import CliRunner

    from engine.midi.ports import list_ports
    from pianomuse_tui.cli import app

    def stop_once_listening() -> None:
        deadline = time.monotonic() + 30  # our input is a destination other programs send to
        while time.monotonic() < deadline and not any(VIRTUAL_INPUT_NAME in n for n in list_ports("jack").get("jack", [])):
            time.sleep(0.1)
        # then the output: our virtual port, or the built-in piano's audio client (JACK is a sound output)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (seen["virtual"] or seen["piano"]):
            seen["virtual"] = any(n.endswith(":PianoMuse") for n in list_ports("jack").get("jack", []))
            seen["piano"] = "fluidsynth" in subprocess.run(["jack_lsp"], capture_output=True, text=True).stdout
            time.sleep(0.1)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)

    seen = {"virtual": False, "piano": False}
    thread = threading.Thread(target=stop_once_listening, daemon=True)
    thread.start()
    result = CliRunner().invoke(app, ["--headless", "generate", "--in", "virtual", "--midi-api", "jack",
                                      "--out", str(tmp_path / "duet.mid")])
    thread.join(35)
    text = " ".join(result.output.split())
    assert result.exit_code == 130, text
    assert seen["piano"] != seen["virtual"], seen  # one of them, never both
    assert ("Playing to the virtual port 'PianoMuse' instead" in text) == seen["virtual"], text


@pytest.mark.parametrize("takeback", ["finish", "release"])
def test_when_you_play_again_the_models_held_notes_end_as_the_takeback_says(bundled, receiver, takeback):
    """The pianist plays while the model holds a note; "release" ends the model's notes at once,
    "finish" where the model wrote them (at most a bar later), its pedal up by then; the pianist
    then holds a key (so the model keeps listening) past that bar: nothing of the model's sounds."""
    player, listening, duet = _duet(bundled, receiver, "continue", pause=0.6, takeback=takeback)
    bar = duet.seconds_per_bar
    marks: dict[str, int] = {}

    def model_sounding() -> bool:
        got = [d for _, d in receiver.received()[marks["start"]:]]
        return any(ch == MODEL_CHANNEL for ch, _ in sounding_after(got))

    def play(pianist) -> None:
        time.sleep(0.3)
        for _ in range(4):  # a model may rest where the pianist comes back: try again then
            pianist.phrase(phrase_from_file(6))
            deadline = time.monotonic() + 8
            while not (duet.model_has_floor and model_sounding()) and time.monotonic() < deadline:
                time.sleep(0.005)
            pianist.send((0x90, 72, 80))  # in while a model note sounds; held past the model's last bar
            time.sleep(bar + 0.6)
            if any(held_at(cut) for cut, _ in duet.takebacks):
                break
            pianist.send((0x80, 72, 0))
        marks["stop"] = len(receiver.received())
        player.stop()
        pianist.send((0x80, 72, 0))

    def held_at(cut: float) -> list:
        """The model's notes sounding at ``cut`` in the take: (note-on, its release)."""
        ons = [e for e in duet.take.model if e.is_note_on and e.time < cut]
        pairs = []
        for on in ons:
            off = next((e for e in duet.take.model if e.is_note_off and e.data[1] == on.data[1] and e.time >= on.time
                        and e is not on), None)
            if off is not None and off.time >= cut:
                pairs.append((on, off))
        return pairs

    marks["start"] = len(receiver.received())
    _play_along(player, listening, duet, play)
    cut = next(c for c, _ in duet.takebacks if held_at(c))
    held = held_at(cut)
    assert held, (duet.takebacks, duet.take.model)
    got = receiver.received()[marks["start"]:marks["stop"]]
    # the receiver's clock (JACK's) against the music's: where the model's note-ons were heard
    sent_ons = sorted(e.time for e in duet.take.model if e.is_note_on)
    heard_ons = [t for t, d in got if d[0] == 0x90 | MODEL_CHANNEL and d[2] > 0]
    assert len(sent_ons) == len(heard_ons)
    offset = sorted(h - s for h, s in zip(heard_ons, sent_ons))[len(sent_ons) // 2]
    decoder = duet.row.decoder
    for on, off in held:
        if takeback == "release":
            assert off.time == pytest.approx(cut, abs=1e-9)
        else:  # where the model wrote the note's end, but never more than a bar after the cut
            # (its Duration token's end; a unison doubling merged into it, struck before the cut, counts)
            written = [decoder._time(n.onset + n.duration) for n in decoder.notes
                       if n.pitch == on.data[1] and on.time - 1e-6 <= decoder._time(n.onset) < cut]
            assert written, (on, decoder.notes[-10:])
            assert off.time == pytest.approx(min(max(written), cut + bar), abs=1e-6)
        # and the receiver heard it then
        heard = [t - offset for t, d in got if d[0] in (0x80 | MODEL_CHANNEL, 0x90 | MODEL_CHANNEL)
                 and d[1] == on.data[1] and (d[0] & 0xF0 == 0x80 or d[2] == 0) and t - offset > on.time]
        assert heard and heard[0] == pytest.approx(off.time, abs=0.04), (heard, off.time, cut)
    # the model's sustain pedal came up by the last release, and nothing of the model's sounds
    # before the stop (the pianist's key still down)
    model = [d for _, d in got if d[0] & 0x0F == MODEL_CHANNEL]
    assert not [k for k in sounding_after(model)]
    pedal = [d[2] for d in model if d[0] & 0xF0 == 0xB0 and d[1] == 64]
    assert not pedal or pedal[-1] < 64


@pytest.mark.parametrize("takeback", ["finish", "release"])
def test_a_part_taken_back_with_its_sustain_pedal_down_ends_on_time_at_the_port(receiver, takeback):
    """``LivePlayer.take_back`` (what a duet's take-back calls) on a part with the pedal down: "finish"
    ends each held note at its own end (G4's from ``ends``: its note-off not made yet), E4 at the
    cap, and the pedal at its own pedal-up; "release" ends them all and the pedal at the cut. The
    receiver hears each release then, the note after the cut never, and nothing is left sounding."""
    from engine.midi.events import CC_SUSTAIN, control_change, note_off, note_on

    part = [note_on(0.0, 60, 80), control_change(0.1, CC_SUSTAIN, 127), note_on(0.2, 64, 70), note_on(0.4, 67, 70),
            note_off(0.7, 60), note_on(1.1, 69, 60), control_change(1.2, CC_SUSTAIN, 0), note_off(1.3, 69),
            note_off(1.6, 64)]
    player = LivePlayer(OutputChoice(api="jack", port=receiver.port_name, lookahead=0.25))
    player.open()
    taken: dict = {}

    def source():
        yield part, 0.6, 0
        while player.music_time() < 0.5:
            time.sleep(0.002)
        cut = taken["cut"] = player.music_time()
        taken["releases"] = player.take_back(0, cut, cut + 1.0 if takeback == "finish" else cut, part, {(0, 67): 1.0})
        yield [], cut + 1.2, 0

    already = len(receiver.received())
    try:
        assert player.play(source()) == "finished"
        got = receiver.received_settled()[already:]
    finally:
        player.close()
    cut, releases = taken["cut"], taken["releases"]
    ends = {("pedal" if e.status == 0xB0 else e.data[1]): e.time for e in releases}
    if takeback == "finish":
        assert ends == {60: 0.7, 67: 1.0, 64: pytest.approx(cut + 1.0), "pedal": 1.2}
    else:
        assert ends == {60: cut, 64: cut, 67: cut, "pedal": cut}
    first_on = next(t for t, d in got if d[:2] == (0x90, 60))
    heard = {("pedal" if d[0] == 0xB0 else d[1]): t - first_on for t, d in got
             if (d[0] == 0x80 or (d[0] == 0xB0 and d[1] == CC_SUSTAIN and d[2] < 64))}
    for key, at in ends.items():
        assert heard[key] == pytest.approx(at, abs=0.03), (key, heard, ends)
    assert not [d for _, d in got if d[:2] == (0x90, 69)]  # after the cut: never played
    assert sounding_after([d for _, d in got]) == {}
    assert [d[2] for _, d in got if d[0] == 0xB0 and d[1] == CC_SUSTAIN][-1] == 0


def test_an_input_that_is_not_there_is_one_sentence_naming_the_inputs_there(receiver):
    """`generate --in NAME` with no such input: the sentence that lists the inputs, once, not wrapped
    in "Could not open the MIDI input (...)" with the hint twice (it was, as PortError is a RuntimeError)."""
    from typer.testing import CliRunner

    from pianomuse_tui.cli import app

    result = CliRunner().invoke(app, ["--headless", "generate", "--midi-api", "jack", "--in", "no-such-keyboard"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "error: No MIDI input port matches 'no-such-keyboard'; available ports: " in text, text
    assert "Could not open" not in text and text.count("--headless ports") == 1, text
