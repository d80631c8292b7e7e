"""Hostile Standard MIDI Files built byte by byte, as a careless or malicious user would hand them over:
tiny files that expand without bound, huge files, no time division, SMPTE timing, absurd note
lengths and silences, out-of-range data, drums only. Shared by the fault tests and bench/fault_suite.py.
"""
from __future__ import annotations

import struct
from pathlib import Path

TPQ = 480  # ticks per quarter; at the default 120 bpm one second is 960 ticks


def vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def smf(events: list[tuple[int, bytes]], division: int = TPQ) -> bytes:
    """A format-0 file from (delta ticks, message bytes) pairs, end of track added."""
    body = b"".join(vlq(d) + m for d, m in events) + b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, division) + b"MTrk" + struct.pack(">I", len(body)) + body


def on(pitch: int, velocity: int = 80, channel: int = 0) -> bytes:
    return bytes([0x90 | channel, pitch, velocity])


def off(pitch: int, channel: int = 0) -> bytes:
    return bytes([0x80 | channel, pitch, 0])


def phrase(n: int = 8, step: int = TPQ // 2) -> list[tuple[int, bytes]]:
    events = []
    for i in range(n):
        events += [(0 if i == 0 else step // 2, on(60 + i % 12)), (step // 2, off(60 + i % 12))]
    return events


MAX_DELTA = 0x0FFFFFFF  # the largest delta a variable-length quantity holds


def gap_bomb() -> bytes:
    """About 80 bytes: four notes each after a 2^28-tick gap (days of empty bars)."""
    events = []
    for i in range(4):
        events += [(MAX_DELTA, on(60 + i)), (TPQ, off(60 + i))]
    return smf(events)


def huge_file(megabytes: float = 50.0) -> bytes:
    """Dense sixteenth notes with running status until the file is ``megabytes`` large."""
    pair = vlq(TPQ // 8) + bytes([60, 80]) + vlq(TPQ // 8) + bytes([60, 0])  # note-on, then velocity-0 release
    count = int(megabytes * 2**20) // len(pair)
    body = b"\x00" + bytes([0x90, 60, 80]) + b"\x00" + bytes([60, 0]) + pair * count + b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, TPQ) + b"MTrk" + struct.pack(">I", len(body)) + body


def zero_division() -> bytes:
    return smf(phrase(), division=0)


def smpte() -> bytes:
    """25 frames/s x 40 ticks (1000 ticks a second): legal, and what some sequencers write."""
    return smf([(d * 1000 // 960, m) for d, m in phrase()], division=(0x100 - 25) << 8 | 40)


def absurd_note() -> bytes:
    """One note held for 2^28 ticks (77.7 hours at 120 bpm)."""
    return smf(phrase() + [(0, on(72)), (MAX_DELTA, off(72))])


def hour_of_silence() -> bytes:
    return smf(phrase() + [(3600 * 960, on(72)), (TPQ, off(72))])


def loud_velocity() -> bytes:
    """A velocity of 147: the parser refuses it with a terse message of its own."""
    return smf(phrase() + [(0, bytes([0x90, 64, 147])), (TPQ, off(64))])


def drums_only() -> bytes:
    return smf([(d, bytes([(m[0] & 0xF0) | 9, *m[1:]])) for d, m in phrase()])


HOSTILE = {
    "gap-bomb": gap_bomb,
    "zero-division": zero_division,
    "absurd-note": absurd_note,
    "hour-of-silence": hour_of_silence,
    "loud-velocity": loud_velocity,
    "drums-only": drums_only,
    "huge-50mb": huge_file,
}


def write_all(folder: Path, names=HOSTILE) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        paths[name] = folder / f"{name}.mid"
        paths[name].write_bytes(HOSTILE[name]())
    return paths
