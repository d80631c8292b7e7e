"""Shared, cached set-ups of the data tests: scans and stores are built once per test process."""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import symusic

from engine.paths import CORPUS_DIR

REPO = Path(__file__).resolve().parents[2]
BROKEN_DIR = REPO / "tests" / "data" / "broken"
PIANO_DIR = CORPUS_DIR / "piano"
CHORALE_DIR = CORPUS_DIR / "chorales"

_TMP = Path(tempfile.mkdtemp(prefix="pianomuse-data-tests-"))
atexit.register(shutil.rmtree, _TMP, True)


def scratch(name: str) -> Path:
    path = _TMP / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def multi_instrument_file(path: Path) -> Path:
    """A real MIDI file with a piano, a violin (GM 40) and a drum track, written by symusic."""
    score = symusic.Score(480)
    for name, program, is_drum, pitches in (("piano", 0, False, [60, 64, 67]), ("violin", 40, False, [72, 74]),
                                            ("drums", 0, True, [36, 38])):
        track = symusic.Track(name, program, is_drum)
        for i, p in enumerate(pitches):
            track.notes.append(symusic.Note(i * 480, 480, p, 80))
        score.tracks.append(track)
    score.dump_midi(str(path))
    return path


@functools.lru_cache(maxsize=None)
def mixed_folder() -> Path:
    """Broken files, three corpus files, a byte-different copy with the same notes, a multi-instrument file."""
    folder = scratch("mixed")
    for f in BROKEN_DIR.glob("*.mid"):
        shutil.copy(f, folder / f.name)
    good = folder / "good"
    good.mkdir(exist_ok=True)
    for name in ("joplin_maple_leaf_rag.mid", "mozart_k545_mvt1_exposition.mid", "schoenberg_op19_no2.mid"):
        shutil.copy(PIANO_DIR / name, good / name)
    # same notes, different bytes (re-written with another time division): a duplicate by note content
    copy = symusic.Score(str(PIANO_DIR / "mozart_k545_mvt1_exposition.mid")).resample(960)
    copy.dump_midi(str(good / "zz_copy_of_k545.MIDI"))
    multi_instrument_file(folder / "multi_instrument.kar")
    (folder / "notes.txt").write_text("not a MIDI suffix: never scanned")
    return folder


@functools.lru_cache(maxsize=None)
def mixed_report():
    from engine.data.check import scan

    return scan(mixed_folder(), workers=2)


@functools.lru_cache(maxsize=None)
def demo_store_path() -> Path:
    """The bundled corpus prepared through ``default_store`` into a private cache."""
    from engine.data.store import default_store

    old = os.environ.get("PIANOMUSE_CACHE")
    os.environ["PIANOMUSE_CACHE"] = str(scratch("cache"))
    try:
        return default_store({"workers": 2})
    finally:
        if old is None:
            os.environ.pop("PIANOMUSE_CACHE", None)
        else:
            os.environ["PIANOMUSE_CACHE"] = old


@functools.lru_cache(maxsize=None)
def demo_store():
    from engine.data.store import TokenStore

    return TokenStore.open(demo_store_path())
