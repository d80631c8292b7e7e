"""Dataset checks on real files: the demo corpus, hand-made broken files, a hanging parse."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_helpers import PIANO_DIR, mixed_folder, mixed_report, scratch
from engine.data.check import CheckPolicy, FileRecord, ReasonCount, ScanError, ScanReport, find_midi_files, scan
from engine.data.midi_bytes import MidiStructureError, walk_midi_bytes

# file -> (status, reason categories that must be present)
EXPECTED = {
    "empty.mid": ("error", {"unreadable"}),
    "random_bytes.mid": ("error", {"not a MIDI file"}),
    "not_midi.mid": ("error", {"not a MIDI file"}),
    "header_only.mid": ("error", {"truncated"}),
    "zero_tracks.mid": ("error", {"no tracks"}),
    "truncated.mid": ("error", {"truncated"}),
    "running_status_no_status.mid": ("error", {"unreadable"}),
    "unterminated_sysex.mid": ("error", {"unreadable"}),
    "meta_only.mid": ("error", {"no notes"}),
    "drums_only.mid": ("error", {"no usable piano notes", "drums left out"}),
    "huge_delta.mid": ("error", {"over the duration limit"}),  # days of empty bars: refused before expanding
    "format2.mid": ("warning", {"format 2"}),
    "smpte.mid": ("warning", {"SMPTE timing"}),
    "absurd_tempo.mid": ("warning", {"absurd tempo"}),
    "hanging_and_range.mid": ("warning", {"note-ons never released", "notes outside the piano range"}),
    "multi_instrument.kar": ("warning", {"drums left out", "non-piano programs dropped"}),
    "good/joplin_maple_leaf_rag.mid": ("ok", set()),
    "good/mozart_k545_mvt1_exposition.mid": ("ok", set()),
    "good/schoenberg_op19_no2.mid": ("ok", set()),
    "good/zz_copy_of_k545.MIDI": ("warning", {"duplicate"}),
}


def _by_name(report: ScanReport) -> dict[str, FileRecord]:
    root = mixed_folder()
    return {str(Path(r.path).relative_to(root)): r for r in report.files}


@pytest.mark.slow
def test_every_file_once_with_its_status_and_reasons():
    records = _by_name(mixed_report())
    assert sorted(records) == sorted(EXPECTED)  # notes.txt is not scanned; .MIDI and .kar are
    for name, (status, categories) in EXPECTED.items():
        record = records[name]
        found = {reason.split(":", 1)[0] for reason in record.reasons + record.notes}  # notes: drums left out
        assert record.status == status, (name, record.reasons)
        assert categories <= found, (name, record.reasons)
        assert (status == "ok") == (record.reasons == [])


def test_report_schema_and_summary(tmp_path):
    report = mixed_report()
    path = tmp_path / "report.json"
    report.write(path)
    data = json.loads(path.read_text())
    assert set(data) == {"files", "summary"}
    for record in data["files"]:
        assert set(record) == {"path", "status", "reasons", "notes", "stats"}
        assert record["status"] in ("ok", "warning", "error")
        assert all(isinstance(r, str) and r for r in record["reasons"])
    summary = data["summary"]
    assert summary["files"] == len(data["files"]) == len(EXPECTED)
    statuses = [r["status"] for r in data["files"]]
    assert summary["status"] == {s: statuses.count(s) for s in ("ok", "warning", "error")}
    ranked = [item["files"] for item in summary["reasons"]]
    assert ranked == sorted(ranked, reverse=True)
    assert summary["reasons"][0]["files"] >= 3  # unreadable: empty, bad running status, sysex
    usable = [r for r in data["files"] if r["status"] != "error"]
    assert summary["tokens"] == sum(r["stats"]["tokens"] for r in usable) > 0
    assert summary["hours"] == pytest.approx(sum(r["stats"]["duration_s"] for r in usable) / 3600, abs=1e-3)
    assert ScanReport.read(path).files == report.files


def test_stats_of_a_real_piece():
    stats = _by_name(mixed_report())["good/joplin_maple_leaf_rag.mid"].stats
    assert stats.notes == 2308 and stats.kept_tracks == 2
    low, high = stats.pitch_range
    assert 21 <= low < high <= 108
    assert sum(stats.velocity_histogram) == stats.notes
    assert stats.notes_per_s == pytest.approx(stats.notes / stats.duration_s, rel=1e-3)
    assert 2 <= stats.max_polyphony <= 10
    assert stats.tokens > stats.notes * 3  # Pitch, Velocity, Duration per note at least
    assert stats.time_signature_changes >= 0 and stats.tempo_changes >= 0
    assert set(stats.sustain_pedal) == {"presses", "down_fraction"}


def test_pitch_histogram_counts_the_notes_the_piano_extraction_keeps(tmp_path):
    import symusic

    from engine.data.tokenizer import extract_piano

    report = mixed_report()
    records = _by_name(report)
    # a corpus piece, and a file with notes outside the piano range (they count, as in "notes")
    for name in ("good/joplin_maple_leaf_rag.mid", "hanging_and_range.mid"):
        stats = records[name].stats
        histogram = stats.pitch_histogram
        assert len(histogram) == 128 and all(isinstance(n, int) and n >= 0 for n in histogram)
        assert sum(histogram) == stats.notes
        played = [pitch for pitch, n in enumerate(histogram) if n]
        assert [played[0], played[-1]] == stats.pitch_range
    low, high = records["hanging_and_range.mid"].stats.pitch_range
    assert low < 21 or high > 108
    # the same counts as reading the file again through the engine's piano extraction
    score = extract_piano(symusic.Score(str(PIANO_DIR / "joplin_maple_leaf_rag.mid")), "keyboard")
    counted = [0] * 128
    for note in score.tracks[0].notes:
        counted[note.pitch] += 1
    assert records["good/joplin_maple_leaf_rag.mid"].stats.pitch_histogram == counted
    # the violin and the drums of a multi-track file are left out
    trio = records["multi_instrument.kar"].stats.pitch_histogram
    assert {pitch: n for pitch, n in enumerate(trio) if n} == {60: 1, 64: 1, 67: 1}
    # one line per file: the 128 counts do not take a line each in the written report
    path = tmp_path / "report.json"
    report.write(path)
    assert len(path.read_text()) < 1.1 * len(json.dumps(report.to_dict()))
    assert json.loads(path.read_text()) == json.loads(json.dumps(report.to_dict()))


def test_multi_instrument_policy_all_keeps_the_violin():
    folder = scratch("policy")
    from data_helpers import multi_instrument_file

    multi_instrument_file(folder / "trio.mid")
    keyboard = scan(folder, workers=1, policy={"piano_policy": "keyboard"}).files[0]
    everything = scan(folder, workers=1, policy=CheckPolicy(piano_policy="all")).files[0]
    assert keyboard.stats.notes == 3 and everything.stats.notes == 5
    assert not any(r.startswith("non-piano") for r in everything.reasons)
    # a misspelt policy stops the scan before any work, with one sentence
    with pytest.raises(ValueError, match="unknown piano policy 'pianos'; use one of: auto, keyboard, all"):
        scan(folder, workers=1, policy={"piano_policy": "pianos", "tokenize": False})


def test_a_hanging_parse_times_out_and_the_scan_goes_on():
    """A real file whose parse and tokenization take far longer than the configured timeout: the
    worker is killed and replaced, the other files are still checked."""
    folder = scratch("hang")
    _huge_file(folder / "a_huge.mid")  # ~600k notes: seconds of parsing and tokenizing, against a 1 s timeout
    for name in ("mozart_k545_mvt1_exposition.mid", "schoenberg_op19_no6.mid"):
        shutil.copy(PIANO_DIR / name, folder / name)
    # the token limit (checked before any expansion) would refuse it first: lift it so the timeout is what acts
    report = scan(folder, workers=1, policy={"timeout_s": 1.0, "limit_tokens": 10_000_000})
    by_name = {r.path.rsplit("/", 1)[1]: r for r in report.files}
    assert by_name["a_huge.mid"].status == "error"
    assert by_name["a_huge.mid"].reasons[0].startswith("timed out")
    assert by_name["mozart_k545_mvt1_exposition.mid"].status == "ok"
    assert by_name["schoenberg_op19_no6.mid"].status == "ok"
    assert report.summary.reasons == [ReasonCount("timed out", 1)]


def test_missing_folder_is_one_sentence(tmp_path):
    with pytest.raises(ScanError, match="does not exist"):
        scan(tmp_path / "nope")
    (tmp_path / "file.mid").write_bytes(b"")
    with pytest.raises(ScanError, match="is a file"):
        find_midi_files(tmp_path / "file.mid")
    (tmp_path / "empty_dir").mkdir()
    empty = scan(tmp_path / "empty_dir")
    assert empty.files == [] and empty.summary.files == 0


def test_byte_walk_counts_what_the_parser_hides():
    info = walk_midi_bytes((PIANO_DIR / "joplin_maple_leaf_rag.mid").read_bytes())
    assert (info.format, info.declared_tracks, info.track_chunks, info.division) == (1, 2, 2, 10080)
    assert info.note_ons == 2308 and info.unreleased_note_ons == 0
    with pytest.raises(MidiStructureError, match="no running status"):
        walk_midi_bytes(b"MThd" + bytes([0, 0, 0, 6, 0, 0, 0, 1, 1, 0xE0]) + b"MTrk" + bytes([0, 0, 0, 4]) + bytes([0, 0x3C, 0x40, 0]))


def _symusic_file(path: Path, ticks_per_quarter: int, notes: list[tuple[int, int, int, int]], pedals=(), tempos=((0, 120.0),),
                  time_signatures=((0, 4, 4),)) -> Path:
    """A real MIDI file written by symusic: notes (tick, duration, pitch, velocity), sustain pedal
    spans (down tick, up tick) as CC64 events, tempo and time-signature changes."""
    import symusic

    score = symusic.Score(ticks_per_quarter)
    for tick, qpm in tempos:
        score.tempos.append(symusic.Tempo(tick, qpm))
    for tick, num, den in time_signatures:
        score.time_signatures.append(symusic.TimeSignature(tick, num, den))
    track = symusic.Track("piano", 0, False)
    for tick, duration, pitch, velocity in notes:
        track.notes.append(symusic.Note(tick, duration, pitch, velocity))
    for down, up in pedals:
        track.controls.append(symusic.ControlChange(down, 64, 127))
        track.controls.append(symusic.ControlChange(up, 64, 0))
    score.tracks.append(track)
    score.dump_midi(str(path))
    return path


def test_absurd_time_division_and_extreme_density_are_warnings(tmp_path):
    from engine.data.check import inspect_file

    coarse = _symusic_file(tmp_path / "coarse.mid", 12, [(i * 12, 12, 60 + i, 80) for i in range(8)])
    # 100 onsets 4 ticks apart at 480 ticks per quarter and 120 bpm: all within 0.42 s
    dense = _symusic_file(tmp_path / "dense.mid", 480, [(i * 4, 4, 40 + i % 40, 80) for i in range(100)])
    policy = CheckPolicy(tokenize=False)
    record, _, _ = inspect_file(coarse, policy)
    assert record.status == "warning" and record.reasons == ["absurd time division: 12 ticks per quarter"]
    record, _, _ = inspect_file(dense, policy)
    assert record.status == "warning" and record.reasons == ["extreme note density: 100 onsets within one second"]
    assert record.stats.max_onsets_per_s == 100
    # the limits are settings: looser ones accept both files
    loose = CheckPolicy(tokenize=False, min_ticks_per_quarter=8, max_onsets_per_s=120)
    assert inspect_file(coarse, loose)[0].status == inspect_file(dense, loose)[0].status == "ok"


def test_stats_of_a_hand_made_piece_are_exact(tmp_path):
    """3 s of music: a three-note chord, two later notes, two pedal presses, a tempo change
    (120 -> 60 bpm) and a time-signature change at bar 2."""
    from engine.data.check import inspect_file
    from engine.data.tokenizer import PianoTokenizer

    path = _symusic_file(
        tmp_path / "exact.mid", 480,
        [(0, 960, 60, 10), (0, 960, 64, 40), (0, 960, 67, 80), (960, 480, 72, 100), (1920, 480, 48, 127)],
        pedals=[(0, 480), (1920, 2400)], tempos=[(0, 120.0), (1920, 60.0)], time_signatures=[(0, 4, 4), (1920, 3, 4)],
    )
    tokenizer = PianoTokenizer()
    record, ids, bars = inspect_file(path, CheckPolicy(), tokenizer)
    stats = record.stats
    assert record.status == "ok" and record.reasons == []
    assert stats.duration_s == 3.0 and stats.notes == 5 and stats.notes_per_s == pytest.approx(5 / 3, abs=1e-3)
    assert stats.pitch_range == [48, 72] and stats.max_polyphony == 3
    assert stats.velocity_histogram == [1, 0, 1, 0, 0, 1, 1, 1]  # bins of 16: 10, 40, 80, 100, 127
    # pedal down one beat at 120 bpm (0.5 s) and one beat at 60 bpm (1 s), of 3 s
    assert stats.sustain_pedal == {"presses": 2, "down_fraction": 0.5}
    assert stats.longest_silence_s == 0.5  # between the note ending at 1.5 s and the one at 2 s
    assert (stats.tempo_changes, stats.tempo_bpm, stats.time_signature_changes) == (1, [60.0, 120.0], 1)
    assert stats.tokens == len(ids) == len(tokenizer.encode_file(path)) and stats.bars == len(bars) >= 2


def _huge_file(path: Path, n: int = 600_000) -> Path:
    """A valid MIDI file of n notes one tick apart: seconds of parsing and tokenizing."""
    pitches = 40 + (np.arange(n) % 40)
    events = np.empty((n, 8), dtype=np.uint8)
    events[:, 0], events[:, 1], events[:, 2], events[:, 3] = 0x00, 0x90, pitches, 80
    events[:, 4], events[:, 5], events[:, 6], events[:, 7] = 0x01, 0x80, pitches, 0
    body = events.tobytes() + b"\x00\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + b"\x00\x00\x00\x01\x01\xe0"
    path.write_bytes(header + b"MTrk" + len(body).to_bytes(4, "big") + body)
    return path


def test_a_worker_that_dies_mid_file_is_reported_and_the_scan_goes_on(tmp_path):
    """A parser crash kills the worker process (here: SIGKILL while it reads a huge file); that
    file gets an error record, a fresh worker takes over, the other files are still checked."""
    import threading

    import psutil

    folder = tmp_path / "crash"
    folder.mkdir()
    shutil.copy(PIANO_DIR / "schoenberg_op19_no2.mid", folder / "a_piece.mid")
    _huge_file(folder / "b_huge.mid")
    shutil.copy(PIANO_DIR / "schoenberg_op19_no6.mid", folder / "c_piece.mid")
    killed: list[int] = []

    def kill_the_worker():
        # the one worker was forked by the forkserver, a child of this process
        for server in psutil.Process().children():
            if "forkserver" in " ".join(server.cmdline()):
                for worker in server.children():
                    worker.kill()
                    killed.append(worker.pid)

    def on_progress(done, total, record):
        if done == 1:  # the worker has just been handed the huge file: it takes seconds
            threading.Timer(0.3, kill_the_worker).start()

    report = scan(folder, workers=1, policy={"timeout_s": 60.0}, on_progress=on_progress)
    by_name = {Path(r.path).name: r for r in report.files}
    assert len(killed) == 1
    assert by_name["b_huge.mid"].status == "error" and by_name["b_huge.mid"].reasons[0].startswith("parser crashed")
    for name in ("a_piece.mid", "c_piece.mid"):
        assert by_name[name].status == "ok" and by_name[name].stats.tokens > 0


def _gm_file(path, tracks):
    """A General MIDI file written by symusic: (program, is_drum, pitches) per track."""
    import symusic

    score = symusic.Score(480)
    for program, is_drum, pitches in tracks:
        track = symusic.Track(f"gm{program}", program, is_drum)
        for i, p in enumerate(pitches):
            track.notes.append(symusic.Note(i * 480, 480, p, 80))
        score.tracks.append(track)
    score.dump_midi(str(path))
    return path


def test_the_default_policy_serves_general_midi_files(tmp_path):
    """Issue 18 item 8: a GM band without a piano was rejected by default, dropped drums made every file a
    warning, the rejection never named --policy all, and 'keyboard' left out organs and celesta."""
    from engine.data.check import CheckPolicy, inspect_file

    band = _gm_file(tmp_path / "band.mid", [(48, False, [60, 64, 67]), (33, False, [36, 43]), (0, True, [36, 38])])
    record, _, _ = inspect_file(band, CheckPolicy())  # the default: auto
    assert record.status == "warning" and record.stats.notes == 5
    assert record.reasons == ["no piano track: merged the 2 pitched track(s) (GM program(s) 33, 48) as piano"]
    assert record.notes == ["drums left out: 1 drum track(s), 2 notes"]
    rejected, _, _ = inspect_file(band, CheckPolicy(piano_policy="keyboard"))
    assert rejected.status == "error" and "--policy all merges every pitched track" in rejected.reasons[0]

    with_piano = _gm_file(tmp_path / "song.mid", [(0, False, [60, 62]), (40, False, [72]), (0, True, [36])])
    record, _, _ = inspect_file(with_piano, CheckPolicy())
    assert record.stats.notes == 2 and record.notes == ["drums left out: 1 drum track(s), 1 notes"]
    assert record.reasons == ["non-piano programs dropped: 1 track(s), GM program(s) 40; --policy all merges them too"]

    piano_and_drums = _gm_file(tmp_path / "pop.mid", [(0, False, [60, 64]), (0, True, [36, 38])])
    assert inspect_file(piano_and_drums, CheckPolicy())[0].status == "ok"  # drums alone are no warning

    organ_and_celesta = _gm_file(tmp_path / "chapel.mid", [(19, False, [48, 55]), (8, False, [84])])
    record, _, _ = inspect_file(organ_and_celesta, CheckPolicy(piano_policy="keyboard"))
    assert record.status == "ok" and record.stats.notes == 3


@pytest.mark.slow
def test_prepare_takes_the_same_policy_choice(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "gm"
    folder.mkdir()
    _gm_file(folder / "band.mid", [(48, False, [60, 64, 67, 72]), (0, True, [36, 38])])
    cli = [sys.executable, "-m", "pianomuse_tui.cli", "--headless", "prepare", str(folder), "--workers", "1"]
    done = subprocess.run(cli + ["--policy", "keyboard", "--out", str(tmp_path / "kb")], capture_output=True, text=True, timeout=240)
    assert done.returncode == 3 and "the store is empty" in done.stderr  # keyboard: no piano, nothing usable
    done = subprocess.run(cli + ["--policy", "all", "--out", str(tmp_path / "all")], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and "1 pieces" in done.stdout, done.stderr
    done = subprocess.run(cli + ["--policy", "pianos"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 2 and "unknown piano policy 'pianos'; use one of: auto, keyboard, all" in done.stderr
