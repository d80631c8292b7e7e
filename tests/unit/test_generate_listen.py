"""LiveEncoder: played notes become the model's own tokens, on its grid, in both tokenizations."""
from __future__ import annotations

import pytest

from engine.data.tokenizer import PianoTokenizer
from engine.generate.listen import LiveEncoder
from engine.generate.timeline import TokenTables, TokenTimeline

PLAYED = [(0.31, 0.6, 60, 80), (0.31, 0.9, 64, 70), (1.2, 1.5, 67, 100), (3.7, 4.0, 72, 90), (5.05, 7.0, 48, 60)]


@pytest.mark.parametrize("kind", ["REMI", "TSD"])
def test_played_notes_come_back_from_the_tokens_on_the_grid(kind):
    tok = PianoTokenizer(kind)
    tables = TokenTables(tok)
    encoder = LiveEncoder(tables)
    timeline = TokenTimeline(tables)
    ids = encoder.header(100.0)
    timeline.feed_all(ids)
    qpm = timeline.tempos[-1][1]
    assert abs(qpm - 100.0) < 5  # the tokenizer's nearest tempo
    heard = []
    for note in PLAYED:
        more = encoder.note(timeline, *note)
        ids += more
        heard += [item[1] for item in timeline.feed_all(more) if item[0] == "note"]
    half_grid = encoder.grid(timeline) / 2 * 60 / (qpm * tables.tpq)
    assert [n.pitch for n in heard] == [p for _, _, p, _ in PLAYED]
    for n, (onset, release, _, velocity) in zip(heard, PLAYED):
        assert abs(timeline.seconds(n.onset) - onset) <= half_grid + 1e-9
        assert abs(n.velocity - velocity) <= 4
        assert abs(timeline.seconds(n.onset + n.duration) - timeline.seconds(n.onset) - (release - onset)) < 0.16
    # the tokenizer decodes the same pitches in the same order (the ids are a valid piece)
    score = tok.decode([tok.bos_id] + ids)
    assert sorted((x.time, x.pitch) for x in score.tracks[0].notes) == sorted((n.onset, n.pitch) for n in heard)


def test_a_note_never_goes_before_what_the_sequence_holds_and_the_pedal_only_changes():
    tables = TokenTables(PianoTokenizer("REMI"))
    encoder = LiveEncoder(tables)
    timeline = TokenTimeline(tables)
    timeline.feed_all(encoder.header(120.0))
    first = [item[1] for item in timeline.feed_all(encoder.note(timeline, 2.0, 2.5, 60, 80)) if item[0] == "note"]
    late = [item[1] for item in timeline.feed_all(encoder.note(timeline, 1.0, 1.2, 62, 80)) if item[0] == "note"]
    assert timeline.seconds(first[0].onset) == pytest.approx(2.0, abs=0.04)
    assert late[0].onset == first[0].onset  # clamped to the sequence's time, never before it
    down = encoder.pedal(timeline, 2.2, True)
    assert down and tables.kind[down[-1]] == "Pedal"
    timeline.feed_all(down)
    assert encoder.pedal(timeline, 2.3, True) == []
    assert encoder.note(timeline, 2.4, 2.6, 10, 80) == []  # below the piano's range: not a token


@pytest.mark.parametrize("args, words", [
    (["--mode", "jam"], "unknown mode 'jam'"),
    (["--takeover-cc", "200"], "takeover CC"),
    (["--takeback", "fade"], "unknown takeback 'fade'; use one of: finish, release"),
    (["--lead", "2"], "the lead must be between 0 and 1 second"),
    (["--prompt", "x.mid"], "leave out --prompt"),
    (["--alternatives", "2"], "one alternative"),
])
def test_bad_duet_options_are_one_sentence_before_any_port_opens(args, words):
    from typer.testing import CliRunner

    from pianomuse_tui.cli import app

    result = CliRunner().invoke(app, ["--headless", "generate", "--in", "virtual", *args])
    assert result.exit_code == 2 and words in " ".join(result.output.split()), result.output
