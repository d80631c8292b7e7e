"""PianoTokenizer on real corpus files: config round trip, one sequence per piece, kinds, grammar."""
from __future__ import annotations

import json

import numpy as np
import pytest
import symusic

from data_helpers import CHORALE_DIR, PIANO_DIR, multi_instrument_file
from engine.data.tokenizer import PianoTokenizer, TokenizerConfigError, extract_piano, piano_tracks

JOPLIN = PIANO_DIR / "joplin_maple_leaf_rag.mid"


@pytest.fixture(scope="module")
def remi() -> PianoTokenizer:
    return PianoTokenizer()


@pytest.mark.parametrize("tokenization", ["REMI", "TSD", "MIDILike"])
def test_config_round_trips_through_json(tokenization):
    tok = PianoTokenizer.from_config({"tokenization": tokenization})
    saved = json.loads(json.dumps(tok.to_config()))
    again = PianoTokenizer.from_config(saved)
    assert again == tok and again.to_config() == saved
    assert saved["miditok"]["num_velocities"] == 32 and saved["vocab_size"] == tok.vocab_size
    ids = tok.encode_file(JOPLIN)
    assert again.encode_file(JOPLIN) == ids


def test_defaults_and_special_ids(remi):
    assert (remi.pad_id, remi.bos_id, remi.eos_id) == (0, 1, 2)
    assert [remi.token_kind(i) for i in range(3)] == ["PAD", "BOS", "EOS"]
    assert len(remi.kind_ids("Velocity")) == 32
    for kind in ("Bar", "Position", "Pitch", "Velocity", "Duration", "Pedal", "Tempo", "TimeSig", "Rest"):
        assert remi.kind_ids(kind), kind
    pitches = sorted(int(remi.token_value(i)) for i in remi.kind_ids("Pitch"))
    assert pitches == list(range(21, 109))
    assert remi.kind_ids("Program") == [] and remi.kind_ids("PitchDrum") == []


def test_user_overrides_change_the_vocabulary():
    small = PianoTokenizer.from_config({"num_velocities": 8, "use_sustain_pedals": False})
    assert len(small.kind_ids("Velocity")) == 8 and small.kind_ids("Pedal") == []
    with pytest.raises(TokenizerConfigError, match="unknown tokenization"):
        PianoTokenizer.from_config({"tokenization": "Octuple"})
    with pytest.raises(TokenizerConfigError, match="unknown MidiTok parameter"):
        PianoTokenizer.from_config({"num_velocitys": 8})


def test_multitrack_piece_is_one_sequence(remi):
    score = symusic.Score(str(JOPLIN))
    assert len(score.tracks) >= 2
    ids = remi.encode_score(score)
    assert all(isinstance(i, int) for i in ids)
    assert ids.count(remi.token_id("Pitch_60")) > 0
    n_pitch = sum(1 for i in ids if remi.token_kind(i) == "Pitch")
    assert n_pitch == score.note_num()  # every note of both hands, in one stream
    wrapped = remi.encode_score(score, bos_eos=True)
    assert wrapped[0] == remi.bos_id and wrapped[-1] == remi.eos_id and wrapped[1:-1] == ids


def test_piano_policy(tmp_path):
    path = multi_instrument_file(tmp_path / "trio.mid")
    score = symusic.Score(str(path))
    kept, dropped = piano_tracks(score, "keyboard")
    assert [t.name for t in kept] == ["piano"] and {t.name for t in dropped} == {"violin", "drums"}
    kept, dropped = piano_tracks(score, "all")
    assert [t.name for t in kept] == ["piano", "violin"] and [t.name for t in dropped] == ["drums"]
    assert extract_piano(score, "all").note_num() == 5
    tok_all = PianoTokenizer.from_config({"piano_policy": "all"})
    assert sum(tok_all.token_kind(i) == "Pitch" for i in tok_all.encode_score(score)) == 5
    assert tok_all.to_config()["piano_policy"] == "all"


def test_decode_gives_back_the_notes(remi):
    score = symusic.Score(str(CHORALE_DIR / "bwv101_7.mid"))
    decoded = remi.decode([remi.bos_id, *remi.encode_score(score), remi.eos_id, remi.pad_id])
    assert isinstance(decoded, symusic.Score) and len(decoded.tracks) == 1
    original = extract_piano(score).resample(remi.time_division).tracks[0].notes.numpy()
    back = decoded.tracks[0].notes.numpy()
    key = lambda n: sorted(zip(n["time"].tolist(), n["pitch"].tolist()))  # noqa: E731
    assert key(back) == key(original)  # chorales sit on the grid: exact


def test_grammar_accepts_every_corpus_sequence(remi):
    allowed = remi.grammar_matrix
    for path in sorted(PIANO_DIR.glob("*.mid")):
        ids = np.array(remi.encode_file(path, bos_eos=True))
        ok = allowed[remi.kind_of_id[ids[:-1]], ids[1:]]
        assert ok.all(), (path.name, [remi.token_str(int(t)) for t in ids[np.flatnonzero(~ok)[0]:][:3]])
    assert remi.grammar_next_kinds("BOS") == {"Bar"}
    assert remi.grammar_next_kinds("Pitch") == {"Velocity", "EOS"}
    assert remi.grammar_next_kinds("EOS") == set()
    assert "PAD" not in set().union(*(remi.grammar_next_kinds(k) for k in remi.kinds))
    with pytest.raises(KeyError):
        remi.grammar_next_kinds("Chord")


def test_time_shift_tokenization_has_bars_too():
    tsd = PianoTokenizer.from_config({"tokenization": "TSD"})
    ids, bars = tsd.encode_with_bars(symusic.Score(str(JOPLIN)))
    assert tsd.kind_ids("Bar") == [] and tsd.kind_ids("TimeShift")
    assert len(bars) > 50 and bars == sorted(set(bars)) and bars[0] == 0
    assert tsd.grammar_next_kinds("BOS") >= {"Pitch", "TimeSig", "Tempo"}


@pytest.mark.parametrize("tokenization", ["REMI", "TSD", "MIDILike"])
def test_one_note_start_token_per_note(tokenization):
    """Bits per note (training and eval alike) count notes by their opening token."""
    from engine.eval.likelihood import count_notes

    tok = PianoTokenizer.from_config({"tokenization": tokenization})
    score = symusic.Score(str(CHORALE_DIR / "bwv101_7.mid"))
    ids = tok.encode_score(score)
    notes = sum(len(t.notes) for t in tok.decode(ids).tracks)
    assert notes > 0 and count_notes(ids, tok) == notes
    assert set(tok.note_start_ids()) <= set(range(tok.vocab_size))
