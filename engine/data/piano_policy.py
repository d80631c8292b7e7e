"""Which tracks of a MIDI file become the piano part: the policies, by General MIDI program.

Light on purpose (no symusic, no MidiTok): the check settings, the CLI and the panes name and
validate a policy without loading the tokenizer; ``engine.data.tokenizer.piano_tracks`` applies it.
"""
from __future__ import annotations

PIANO_PROGRAMS = range(0, 8)  # GM acoustic and electric pianos, harpsichord, clavinet
KEYBOARD_PROGRAMS = frozenset([*range(0, 9), *range(16, 21)])  # the pianos, celesta (8) and the organs (16-20)
PIANO_POLICIES = {
    "auto": "the piano tracks (GM 0-7) when a file has any, else every pitched (non-drum) track, merged as piano",
    "keyboard": "merge the non-drum tracks whose GM program is a piano (0-7), the celesta (8) or an organ (16-20)",
    "all": "merge every non-drum track as piano",
}
DEFAULT_PIANO_POLICY = "auto"


class PianoPolicyError(ValueError):
    """An unknown piano policy (one sentence)."""


def check_piano_policy(policy: str) -> None:
    """Raise PianoPolicyError (a ValueError) with one sentence unless ``policy`` is in PIANO_POLICIES."""
    if policy not in PIANO_POLICIES:
        raise PianoPolicyError(f"unknown piano policy {policy!r}; use one of: {', '.join(PIANO_POLICIES)}")
