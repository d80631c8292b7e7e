"""audition_metrics on real MIDI files against a corpus profile, and the report's JSON file."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import symusic

from engine.eval.metrics import HISTOGRAMS, SCALAR_FEATURES, Performance
from engine.eval.report import CorpusProfile, audition_metrics, audition_summary, corpus_profile, write_report
from engine.paths import CORPUS_DIR

PIANO = sorted((CORPUS_DIR / "piano").glob("*.mid"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for path in PIANO[:6]:
        shutil.copy(path, folder / path.name)
    return folder


def test_a_corpus_piece_is_copied_whole_and_sits_inside_the_corpus_ranges(corpus):
    profile = CorpusProfile.from_folder(corpus)
    assert profile.pieces == 6
    piece = corpus / PIANO[0].name
    result = audition_metrics(piece, profile)
    notes = Performance.from_midi(piece).n_notes
    assert result["features"]["notes"] == notes
    assert result["training_overlap"] == {"longest_copied_notes": notes, "source": PIANO[0].name}
    assert set(result["vs_corpus"]) == set(SCALAR_FEATURES)
    for name, entry in result["vs_corpus"].items():
        assert 0.0 <= entry["percentile"] <= 1.0, name
        assert entry["corpus_std"] >= 0
    assert set(result["histograms"]) == set(HISTOGRAMS)
    for name, entry in result["histograms"].items():
        assert 0.0 < entry["oa"] <= 1.0 and entry["kl_nats"] >= 0, name
    flat = audition_summary(result)
    assert flat["copied_notes"] == notes and flat["pitch_class_oa"] == result["histograms"]["pitch_class"]["oa"]
    assert all(isinstance(v, (int, float)) for v in flat.values())
    assert 0 <= flat["self_reuse"] <= 1 and 0 < flat["key_correlation"] <= 1 and 0 < flat["in_key_share"] <= 1


def test_a_transposed_piece_is_not_a_copy(corpus, tmp_path):
    original = corpus / PIANO[0].name
    score = symusic.Score(str(original))
    score.shift_pitch(1, inplace=True)
    moved = tmp_path / "moved.mid"
    score.dump_midi(str(moved))
    result = audition_metrics(moved, CorpusProfile.from_folder(corpus))
    assert result["training_overlap"]["longest_copied_notes"] < 20
    # against the original alone: same rhythm and range, every pitch class moved
    alone = CorpusProfile.from_performances([Performance.from_midi(original)], ["original"])
    assert audition_metrics(original, alone)["histograms"]["pitch_class"]["oa"] == pytest.approx(1.0)
    moved_vs_alone = audition_metrics(moved, alone)
    assert moved_vs_alone["histograms"]["pitch_class"]["oa"] < 0.9
    assert moved_vs_alone["histograms"]["ioi"]["oa"] == pytest.approx(1.0)
    assert moved_vs_alone["vs_corpus"]["pitch_range"]["percentile"] == 0.5
    # structure does not depend on the key: a transposed piece reuses itself and fits a key as much
    for name, value in audition_metrics(original, alone)["structure"].items():
        assert moved_vs_alone["structure"][name] == pytest.approx(value), name


def test_an_empty_file_gives_undefined_values_not_an_error(corpus, tmp_path):
    empty = tmp_path / "empty.mid"
    symusic.Score(480).dump_midi(str(empty))
    result = audition_metrics(empty, corpus)  # a folder works as the reference too
    assert result["features"]["notes"] == 0
    assert math.isnan(result["vs_corpus"]["note_density"]["value"])
    assert math.isnan(result["histograms"]["pitch"]["oa"])
    assert result["training_overlap"]["longest_copied_notes"] == 0
    assert all(math.isnan(v) for v in result["structure"].values())


def test_folder_profiles_are_cached_until_the_folder_changes(corpus):
    first = corpus_profile(corpus)
    assert corpus_profile(corpus) is first
    shutil.copy(PIANO[7], corpus / PIANO[7].name)
    try:
        changed = corpus_profile(corpus)
        assert changed is not first and changed.pieces == first.pieces + 1
    finally:
        (corpus / PIANO[7].name).unlink()


def test_report_json_turns_nan_into_null(tmp_path):
    report = {"likelihood": {"bits_per_note": float("nan"), "tokens": 0}, "values": [1.5, float("inf")]}
    json_path, png = write_report(report, tmp_path / "deep" / "r.json", plot=False)
    assert png is None
    text = json_path.read_text()
    assert json.loads(text) == {"likelihood": {"bits_per_note": None, "tokens": 0}, "values": [1.5, None]}
    assert "NaN" not in text and "Infinity" not in text


def test_a_store_profile_matches_the_folder_it_was_prepared_from(corpus, tmp_path):
    from engine.data.store import PrepareConfig, TokenStore, prepare

    prepare(corpus, tmp_path / "store", PrepareConfig(val_fraction=0.0, workers=1))
    store = TokenStore.open(tmp_path / "store")
    from_store = CorpusProfile.from_store(store, split="train")
    from_folder = CorpusProfile.from_folder(corpus)
    assert from_store.pieces == from_folder.pieces == 6
    # decoded tokens keep the notes (quantised in time), so the pitch content is identical
    assert (from_store.histograms["pitch"] == from_folder.histograms["pitch"]).all()
    piece = corpus / PIANO[1].name
    assert audition_metrics(piece, from_store)["histograms"]["pitch"]["oa"] == pytest.approx(
        audition_metrics(piece, from_folder)["histograms"]["pitch"]["oa"])
