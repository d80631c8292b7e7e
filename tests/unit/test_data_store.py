"""Token store: prepare, incremental re-prepare, deterministic split, the bundled default store."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import symusic

from data_helpers import BROKEN_DIR, CHORALE_DIR, PIANO_DIR, demo_store, demo_store_path, scratch
from engine.data.check import ScanError
from engine.data.store import PrepareConfig, StoreError, TokenStore, prepare, split_of, store_for
from engine.data.tokenizer import PianoTokenizer
from engine.paths import CORPUS_DIR


def _small_corpus(name: str) -> list:
    folder = scratch(name)
    files = sorted(PIANO_DIR.glob("*.mid"))[:4] + sorted(CHORALE_DIR.glob("*.mid"))[:4]
    for f in files:
        shutil.copy(f, folder / f.name)
    shutil.copy(BROKEN_DIR / "truncated.mid", folder / "truncated.mid")
    return folder


@pytest.mark.slow
def test_prepare_then_reprepare_incrementally():
    folder = _small_corpus("incremental")
    out = scratch("incremental-store") / "store"
    first = prepare(folder, out, {"workers": 2})
    assert (first.pieces, first.tokenized, first.reused, first.skipped) == (8, 8, 0, 1)
    store = TokenStore.open(out)
    tok = store.tokenizer
    for piece in store.pieces():
        expected = tok.encode_file(piece.path)
        assert store.tokens(piece).tolist() == expected
        bars = store.bars(piece).tolist()
        bar_tokens = [i for i, t in enumerate(expected) if t == tok.token_id("Bar_None")]
        assert set(bar_tokens) <= set(bars) and bars == sorted(set(bars))
        # bars MidiTok enters through a Rest start at their Position token, right after the rest
        for i in set(bars) - set(bar_tokens):
            assert tok.token_kind(expected[i]) == "Position" and tok.token_kind(expected[i - 1]) == "Rest"
    assert store.report.summary.status["error"] == 1

    again = prepare(folder, out, {"workers": 2})
    assert (again.pieces, again.tokenized, again.reused) == (8, 0, 9)  # the broken file is not re-read either
    reopened = TokenStore.open(out)
    assert [reopened.tokens(p).tolist() for p in reopened.pieces()] == [store.tokens(p).tolist() for p in store.pieces()]
    assert [p.split for p in reopened.pieces()] == [p.split for p in store.pieces()]

    # change one piece, add one, delete one: only the changed and the new one are tokenized
    changed = sorted(folder.glob("*.mid"))[0]
    score = symusic.Score(str(changed))
    score.tracks[0].notes.pop()
    score.dump_midi(str(changed))
    shutil.copy(PIANO_DIR / "joplin_maple_leaf_rag.mid", folder / "new_joplin.mid")
    removed = sorted(folder.glob("bwv*.mid"))[-1]
    removed.unlink()
    third = prepare(folder, out, {"workers": 2})
    assert (third.pieces, third.tokenized, third.reused) == (8, 2, 7)
    final = TokenStore.open(out)
    assert str(removed) not in {p.path for p in final.pieces()}
    for piece in final.pieces():
        assert final.tokens(piece).tolist() == tok.encode_file(piece.path)


def test_another_tokenizer_config_retokenizes_everything():
    folder = _small_corpus("retokenize")
    out = scratch("retokenize-store") / "store"
    prepare(folder, out, {"workers": 1})
    tsd = prepare(folder, out, {"workers": 1, "tokenizer": {"tokenization": "TSD"}})
    assert tsd.tokenized == 8 and tsd.reused == 0
    store = TokenStore.open(out)
    assert store.tokenizer.tokenization == "TSD"
    assert store.tokenizer == PianoTokenizer.from_config(store.tokenizer_config)


def test_split_is_by_piece_content_and_stable():
    hashes = [f"{i:032x}" for i in range(2000)]
    splits = [split_of(h, 0.1, 0) for h in hashes]
    assert 0.07 < splits.count("val") / len(splits) < 0.13
    assert splits == [split_of(h, 0.1, 0) for h in hashes]
    assert splits != [split_of(h, 0.1, 1) for h in hashes]


def test_default_store_holds_the_bundled_corpus():
    store = demo_store()
    assert demo_store_path().name == store_for(CORPUS_DIR, PrepareConfig()).name
    assert len(store) == len(list(CORPUS_DIR.rglob("*.mid")))
    train, val = store.pieces("train"), store.pieces("val")
    assert train and val and not {p.note_hash for p in train} & {p.note_hash for p in val}
    assert store.num_tokens() == store.num_tokens("train") + store.num_tokens("val") > 100_000
    assert store.tokens(0).dtype == np.int16 and not store.tokens(0).flags.writeable


def test_bad_inputs_are_one_sentence(tmp_path):
    with pytest.raises(StoreError, match="run `pianomuse-tui --headless prepare"):
        TokenStore.open(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a token store"):
        prepare(PIANO_DIR, tmp_path / "junk")
    assert (tmp_path / "junk" / "keep.txt").read_text() == "mine"
    with pytest.raises(ScanError, match="does not exist"):
        prepare(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown data setting"):
        PrepareConfig.from_dict({"tokeniser": {}})
    config = tmp_path / "data.toml"
    config.write_text('[tokenizer]\ntokenization = "TSD"\n[split]\nval_fraction = 0.2\nseed = 3\n[check]\ntimeout_s = 5\n')
    loaded = PrepareConfig.load(config)
    assert (loaded.tokenizer, loaded.val_fraction, loaded.split_seed, loaded.check) == ({"tokenization": "TSD"}, 0.2, 3, {"timeout_s": 5})


@pytest.mark.slow
def test_a_cancelled_prepare_keeps_the_files_done_and_the_next_one_resumes():
    folder = _small_corpus("resume")
    out = scratch("resume-store") / "store"

    class Stop(Exception):
        pass

    def cancel_after_three(done, total, record):
        if done == 3:
            raise Stop  # what the Dataset pane's cancel does: its progress callback raises

    with pytest.raises(Stop):
        prepare(folder, out, {"workers": 1}, on_progress=cancel_after_three)
    assert not (out / "index.json").exists() and len(list((out / "pending").glob("*.npz"))) == 3

    resumed = prepare(folder, out, {"workers": 1})
    assert (resumed.resumed, resumed.tokenized, resumed.reused, resumed.pieces) == (3, 5, 0, 8)  # the broken file is read again, not counted
    assert not (out / "pending").exists()  # committed: the store itself is the record now
    store = TokenStore.open(out)
    for piece in store.pieces():
        assert store.tokens(piece).tolist() == store.tokenizer.encode_file(piece.path)
    assert store.report.summary.status["error"] == 1

    # results kept for another tokenizer are not used
    with pytest.raises(Stop):
        prepare(folder, out, {"workers": 1, "tokenizer": {"tokenization": "TSD"}}, on_progress=cancel_after_three)
    tsd = prepare(folder, out, {"workers": 1, "tokenizer": {"tokenization": "TSD"}})
    assert tsd.resumed == 3 and TokenStore.open(out).tokenizer.tokenization == "TSD"
    remi = prepare(folder, out, {"workers": 1})
    assert (remi.resumed, remi.tokenized) == (0, 8)


def test_store_for_is_one_rule_for_equal_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("PIANOMUSE_CACHE", str(tmp_path))
    default = store_for(PIANO_DIR)
    full = PianoTokenizer().to_config()  # what a checkpoint's sidecar carries
    assert store_for(PIANO_DIR, {"tokenizer": full}) == default == store_for(PIANO_DIR / ".." / "piano", {"check": {"piano_policy": "auto"}})
    assert default.parent == tmp_path / "stores" and default.name.startswith("piano-REMI-")
    assert store_for(PIANO_DIR, {"tokenizer": {"tokenization": "TSD"}}) != default
    assert store_for(PIANO_DIR, {"split": {"seed": 1}}) != default
    assert store_for(CHORALE_DIR) != default


def test_the_store_lock_is_filelocks_reader_writer_lock():
    """A prepare holds ``.lock`` as filelock's writer, an open as a reader (one locking library for
    runs and stores): an open waits for a writer and readers share, whichever process holds it."""
    import threading
    import time

    from filelock import ReadWriteLock

    folder = scratch("lock-corpus")
    for f in sorted(PIANO_DIR.glob("*.mid"))[:2]:
        shutil.copy(f, folder / f.name)
    out = scratch("lock-store") / "store"
    prepare(folder, out, {"workers": 1})

    def open_in_thread() -> tuple[threading.Thread, list]:
        opened: list = []
        thread = threading.Thread(target=lambda: opened.append(TokenStore.open(out)), daemon=True)
        thread.start()
        return thread, opened

    writer = ReadWriteLock(out / ".lock", is_singleton=False)
    with writer.write_lock():
        thread, opened = open_in_thread()
        time.sleep(0.5)
        assert opened == [] and thread.is_alive()  # a prepare is replacing the files: the open waits
    thread.join(30)
    assert len(opened) == 1 and len(opened[0].pieces()) == 2
    writer.close()

    reader = ReadWriteLock(out / ".lock", is_singleton=False)
    with reader.read_lock():
        thread, opened = open_in_thread()
        thread.join(30)
        assert len(opened) == 1  # another reader: no wait
    reader.close()


def test_check_and_prepare_read_the_piano_policy_by_one_rule():
    """[check] names the piano policy, else the tokenizer does, else the default; a command's flag wins."""
    from engine.data.piano_policy import DEFAULT_PIANO_POLICY

    assert PrepareConfig().check_policy().piano_policy == DEFAULT_PIANO_POLICY
    from_tokenizer = PrepareConfig.from_dict({"tokenizer": {"piano_policy": "all"}})
    assert from_tokenizer.check_policy().piano_policy == "all"
    both = PrepareConfig.from_dict({"tokenizer": {"piano_policy": "all"}, "check": {"piano_policy": "keyboard", "timeout_s": 5}})
    assert (both.check_policy().piano_policy, both.check_policy().timeout_s) == ("keyboard", 5)
    flagged = both.check_policy(piano_policy="auto", timeout_s=None)  # None: the flag was not given
    assert (flagged.piano_policy, flagged.timeout_s) == ("auto", 5)
    assert both.tokenizer_for(flagged).to_config()["piano_policy"] == "auto"
