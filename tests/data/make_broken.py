"""Write the hand-made broken MIDI files in tests/data/broken/ from raw bytes.

Each file breaks one thing a real-world collection breaks. Re-run to regenerate:
    .venv/bin/python tests/data/make_broken.py
"""
from __future__ import annotations

import random
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent / "broken"


def vlq(value: int) -> bytes:
    """MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def header(fmt: int, ntracks: int, division: int = 480) -> bytes:
    return b"MThd" + struct.pack(">IHHH", 6, fmt, ntracks, division)


def track(events: bytes, end: bool = True) -> bytes:
    body = events + (b"\x00\xff\x2f\x00" if end else b"")
    return b"MTrk" + struct.pack(">I", len(body)) + body


def notes(pitches, channel: int = 0, step: int = 240, velocity: int = 80) -> bytes:
    out = b""
    for p in pitches:
        out += b"\x00" + bytes([0x90 | channel, p, velocity])
        out += vlq(step) + bytes([0x80 | channel, p, 0])
    return out


TEMPO = b"\x00\xff\x51\x03\x07\xa1\x20"  # 500000 us per quarter = 120 bpm
MELODY = [60, 62, 64, 65, 67, 69, 71, 72]


def files() -> dict[str, bytes]:
    good = header(0, 1) + track(TEMPO + notes(MELODY))
    rng = random.Random(3)
    return {
        "empty.mid": b"",
        "random_bytes.mid": bytes(rng.randrange(256) for _ in range(2048)),
        "header_only.mid": header(1, 1),
        "zero_tracks.mid": header(1, 0),
        # the track chunk claims more bytes than the file holds
        "truncated.mid": good[: len(good) - 20],
        # a data byte where a status byte must come first
        "running_status_no_status.mid": header(0, 1) + track(b"\x00\x3c\x50" + notes(MELODY)),
        # a sysex whose length runs past the end of the track
        "unterminated_sysex.mid": header(0, 1) + track(b"\x00\xf0" + vlq(5000) + b"\x7e\x7f\x09\x01", end=False),
        # a delta time of ~2^28 ticks between two notes (about 3 days at 120 bpm)
        "huge_delta.mid": header(0, 1) + track(TEMPO + notes(MELODY[:4]) + vlq(0x0FFFFFFF) + b"\x90\x40\x50" + vlq(240) + b"\x80\x40\x00"),
        # format 2: independent sequences
        "format2.mid": header(2, 2) + track(TEMPO + notes(MELODY)) + track(notes(MELODY[::-1])),
        # only channel 10 (drums)
        "drums_only.mid": header(0, 1) + track(TEMPO + notes([36, 38, 42, 46] * 4, channel=9)),
        # a note-on never released, plus notes outside the piano range
        "hanging_and_range.mid": header(0, 1) + track(TEMPO + b"\x00\x90\x3c\x50" + notes([10, 60, 64, 120])),
        "meta_only.mid": header(0, 1) + track(TEMPO),
        # SMPTE time division: 25 frames per second, 40 ticks per frame (0xE7 = -25)
        "smpte.mid": b"MThd" + struct.pack(">IHHBB", 6, 0, 1, 0xE7, 40) + track(notes(MELODY, step=500)),
        # 16 777 215 us per quarter (the largest a tempo event holds) = 3.6 bpm
        "absurd_tempo.mid": header(0, 1) + track(b"\x00\xff\x51\x03\xff\xff\xff" + notes(MELODY[:2], step=10)),
        "not_midi.mid": b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(64),
    }


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for name, data in files().items():
        (HERE / name).write_bytes(data)
    print(f"wrote {len(files())} files to {HERE}")


if __name__ == "__main__":
    main()
