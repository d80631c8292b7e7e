"""A byte-level walk over a Standard MIDI File: what a parser hides but a dataset check must report.

symusic parses leniently (it drops note-ons that are never released, accepts SMPTE and format 2
files silently), so this walk reads the header and every event once, without building objects,
and counts what the checks need. It raises ``MidiStructureError`` for files no parser should
trust: not MIDI, truncated, no tracks, a data byte with no running status, an unterminated sysex.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass


class MidiStructureError(ValueError):
    """The file is not a usable Standard MIDI File; ``reason`` is the report's reason text."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class MidiBytesInfo:
    format: int
    declared_tracks: int
    track_chunks: int
    division: int  # ticks per quarter; 0 when SMPTE
    smpte: bool
    note_ons: int
    unreleased_note_ons: int
    max_delta: int
    length_ticks: int = 0  # the longest track's end, in ticks: what a parser expands into bars


def walk_midi_bytes(data: bytes) -> MidiBytesInfo:
    if len(data) == 0:
        raise MidiStructureError("unreadable: the file is empty")
    if data[:4] != b"MThd":
        raise MidiStructureError("not a MIDI file: it does not start with an MThd header")
    if len(data) < 14:
        raise MidiStructureError("truncated: the file ends inside the MIDI header")
    header_len, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if header_len < 6:
        raise MidiStructureError("unreadable: the MIDI header is too short")
    smpte = bool(division & 0x8000)
    if ntracks == 0:
        raise MidiStructureError("no tracks: the header declares zero tracks")
    pos = 8 + header_len
    chunks = note_ons = unreleased = max_delta = length = 0
    size = len(data)
    while pos + 8 <= size:
        kind = data[pos:pos + 4]
        (length,) = struct.unpack(">I", data[pos + 4:pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end > size:
            raise MidiStructureError(f"truncated: track {chunks + 1} needs {end - size} more bytes than the file holds")
        if kind == b"MTrk":
            ons, left, delta, ticks = _walk_track(data, start, end, chunks + 1)
            note_ons += ons
            unreleased += left
            max_delta = max(max_delta, delta)
            length = max(length, ticks)
            chunks += 1
        pos = end
    if chunks == 0:
        raise MidiStructureError(f"truncated: the header declares {ntracks} track(s) but the file holds none")
    return MidiBytesInfo(fmt, ntracks, chunks, 0 if smpte else division, smpte, note_ons, unreleased, max_delta, length)


def _walk_track(data: bytes, i: int, end: int, number: int) -> tuple[int, int, int, int]:
    """(note-ons, note-ons never released, largest delta time, total ticks) of one MTrk chunk."""
    status = 0
    active: dict[int, int] = {}
    note_ons = 0
    max_delta = 0
    ticks = 0
    while i < end:
        delta = 0
        while True:
            if i >= end:
                raise MidiStructureError(f"truncated: track {number} ends inside a delta time")
            b = data[i]
            i += 1
            delta = (delta << 7) | (b & 0x7F)
            if b < 0x80:
                break
        ticks += delta
        if delta > max_delta:
            max_delta = delta
        if i >= end:
            raise MidiStructureError(f"truncated: track {number} ends after a delta time")
        b = data[i]
        if b == 0xFF or b == 0xF0 or b == 0xF7:
            i += 2 if b == 0xFF else 1
            length = 0
            while True:
                if i >= end:
                    raise MidiStructureError(f"truncated: track {number} ends inside a meta or sysex event")
                c = data[i]
                i += 1
                length = (length << 7) | (c & 0x7F)
                if c < 0x80:
                    break
            if i + length > end:
                what = "an unterminated sysex" if b != 0xFF else "a meta event longer than its track"
                raise MidiStructureError(f"unreadable: track {number} holds {what}")
            i += length
            if b != 0xFF:
                status = 0  # a sysex cancels running status
            continue
        if b & 0x80:
            status = b
            i += 1
        elif status == 0:
            raise MidiStructureError(f"unreadable: track {number} has a data byte with no running status")
        kind = status & 0xF0
        width = 1 if kind in (0xC0, 0xD0) else 2
        if i + width > end:
            raise MidiStructureError(f"truncated: track {number} ends inside a channel message")
        if kind == 0x90 or kind == 0x80:
            key = ((status & 0x0F) << 7) | data[i]
            if kind == 0x90 and data[i + 1] > 0:
                note_ons += 1
                active[key] = active.get(key, 0) + 1
            elif active.get(key):
                active[key] -= 1
        i += width
    return note_ons, sum(active.values()), max_delta, ticks
