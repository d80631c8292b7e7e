"""`PianoTokenizer`: MidiTok (REMI by default, TSD or MIDILike selectable) on symusic, one token
sequence per piece.

MidiTok does the tokenization. What this module adds is what the rest of PianoMuse needs around
it: the piano-extraction policy applied before encoding (all kept tracks merged into one piano
track, so a piece is one sequence), a JSON config that round-trips through token stores and
checkpoints, token kinds and the grammar of which kinds may follow which, bar starts, and the
per-id lookup tables that augmentation uses.
"""
from __future__ import annotations

import copy
import importlib.metadata
import inspect
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import symusic

from .piano_policy import DEFAULT_PIANO_POLICY, KEYBOARD_PROGRAMS, PIANO_PROGRAMS, check_piano_policy

CONFIG_FORMAT = "pianomuse-tokenizer/1"
TOKENIZATIONS = ("REMI", "TSD", "MIDILike")
PIANO_LOW, PIANO_HIGH = 21, 108  # A0..C8, the 88 keys
SPECIAL_KINDS = ("PAD", "BOS", "EOS")

# MidiTok parameters PianoMuse uses unless a config says otherwise (MidiTok's serialised form:
# beat_res keys are "start_end" strings so the dict is JSON as it is).
DEFAULT_MIDITOK_PARAMS: dict[str, Any] = {
    "pitch_range": [PIANO_LOW, PIANO_HIGH],  # inclusive in MidiTok
    "beat_res": {"0_4": 8, "4_12": 4},
    # rests in whole beats: in REMI the Position after a rest places the next note exactly, so a
    # fine rest grid only adds a Rest token after every detached note
    "beat_res_rest": {"0_12": 1},
    "num_velocities": 32,
    "special_tokens": ["PAD", "BOS", "EOS"],
    "use_velocities": True,
    "use_rests": True,
    "use_tempos": True,
    "use_time_signatures": True,
    "use_sustain_pedals": True,
    "sustain_pedal_duration": False,
    "use_chords": False,
    "use_programs": False,
    "use_pitchdrum_tokens": False,
    "num_tempos": 32,
    "tempo_range": [40, 250],
}

# Named settings for kinds of data (``preset`` in a tokenizer config; its other keys override the
# preset's). Measured on the performance-like test set: bench/performance_roundtrip.py, bench/RESULTS.md.
TOKENIZER_PRESETS: dict[str, dict[str, Any]] = {
    # quantised score MIDI (notation exports, the demo corpus): bars, positions, tempo and metre tokens
    "score": {"tokenization": "REMI"},
    "score-tsd": {"tokenization": "TSD"},
    "midilike": {"tokenization": "MIDILike"},
    # performances (MAESTRO, GiantMIDI-Piano, your own playing): every piece re-timed to one 120 qpm
    # tempo with its seconds kept, so the beat grid is a clock (1/32 beat = 15.6 ms); time shifts and
    # durations on that grid, no tempo or metre tokens, the full velocity range and the pedal
    "performance": {
        "tokenization": "TSD",
        "fixed_tempo": 120.0,
        "beat_res": {"0_4": 32, "4_12": 4},
        "use_tempos": False,
        "use_time_signatures": False,
        "use_sustain_pedals": True,
        "num_velocities": 32,
    },
}

# Parameters MidiTok's tokenizations read from ``additional_params`` (MidiTok 3.1)
MIDITOK_EXTRA_PARAMS = {"add_trailing_bars", "max_bar_embedding", "use_bar_end_tokens", "max_duration",
                        "use_microtiming", "num_microtiming_bins", "max_microtiming_shift", "ticks_per_quarter"}

# Piano-extraction policies: which tracks of a multi-track file become the one piano track.


class TokenizerConfigError(ValueError):
    """A tokenizer config that cannot be used; the message is one sentence saying what to fix."""


def _miditok_config(params: dict[str, Any]):
    """MidiTok ``TokenizerConfig`` from its JSON form (undoing MidiTok's own serialisation)."""
    from miditok import TokenizerConfig

    params = copy.deepcopy(params)
    for key in ("beat_res", "beat_res_rest"):
        if key in params:
            params[key] = {tuple(int(x) for x in str(k).split("_")): int(v) for k, v in params[key].items()}
    if "time_signature_range" in params:
        params["time_signature_range"] = {int(k): list(v) for k, v in params["time_signature_range"].items()}
    for key in ("pitch_range", "tempo_range", "chord_unknown", "pitch_bend_range", "drums_pitch_range"):
        if key in params and params[key] is not None:
            params[key] = tuple(params[key])
    if "chord_maps" in params:
        params["chord_maps"] = {q: tuple(v) for q, v in params["chord_maps"].items()}
    params.update(params.pop("additional_params", None) or {})
    # MidiTok files unknown keywords away as "additional params"; a typo must not pass silently
    known = (set(inspect.signature(TokenizerConfig.__init__).parameters) - {"self", "kwargs"}) | MIDITOK_EXTRA_PARAMS
    unknown = sorted(set(params) - known)
    if unknown:
        raise TokenizerConfigError(f"unknown MidiTok parameter(s) in the tokenizer config: {', '.join(unknown)}; check the spelling or remove them")
    try:
        return TokenizerConfig(**params)
    except (TypeError, ValueError) as exc:
        raise TokenizerConfigError(f"the tokenizer config is not valid for MidiTok ({exc})") from exc


def merge_tracks(score: symusic.Score, tracks) -> symusic.Score:
    """A new score (same time division, tempos, time signatures) whose only track merges ``tracks``."""
    merged = symusic.Track("piano", 0, False)
    for track in tracks:
        merged.notes.extend(track.notes)
        merged.pedals.extend(track.pedals)
        merged.controls.extend(track.controls)
    merged.notes.sort()
    merged.pedals.sort()
    merged.controls.sort()
    out = symusic.Score(score.ticks_per_quarter)
    out.tempos = score.tempos
    out.time_signatures = score.time_signatures
    out.key_signatures = score.key_signatures
    out.tracks.append(merged)
    return out


def retime(score: symusic.Score, qpm: float) -> symusic.Score:
    """The score with one tempo, ``qpm``, and every event at the second it had (same ticks per quarter)."""
    seconds = score.to("second")
    seconds.tempos.clear()
    seconds.tempos.append(symusic.Tempo(0.0, float(qpm), ttype="second"))
    return seconds.to("tick")


def piano_tracks(score: symusic.Score, policy: str = DEFAULT_PIANO_POLICY):
    """(kept tracks, dropped tracks) under a piano-extraction policy (see ``engine.data.piano_policy.PIANO_POLICIES``)."""
    check_piano_policy(policy)
    tracks = list(score.tracks)  # one list: its track objects are compared by identity below
    pitched = [t for t in tracks if not t.is_drum]
    if policy == "all":
        keep = pitched
    elif policy == "keyboard":
        keep = [t for t in pitched if t.program in KEYBOARD_PROGRAMS]
    else:
        keep = [t for t in pitched if t.program in PIANO_PROGRAMS and len(t.notes)] or pitched
    kept_ids = {id(t) for t in keep}
    return keep, [t for t in tracks if id(t) not in kept_ids]


def extract_piano(score: symusic.Score, policy: str = DEFAULT_PIANO_POLICY) -> symusic.Score:
    """The piece as one piano track, per the policy (see ``engine.data.piano_policy.PIANO_POLICIES``)."""
    kept, _ = piano_tracks(score, policy)
    return merge_tracks(score, kept)


class PianoTokenizer:
    """One token sequence per piece; ids 0, 1, 2 are PAD, BOS, EOS."""

    def __init__(self, tokenization: str = "REMI", miditok_params: dict[str, Any] | None = None,
                 piano_policy: str = DEFAULT_PIANO_POLICY, fixed_tempo: float | None = None) -> None:
        """``fixed_tempo``: re-time every piece to this one tempo (qpm) before tokenizing, keeping its
        seconds, so ticks are a clock; decoded pieces carry that tempo (performance data)."""
        import miditok  # engine.model must import without miditok; keep it local here too

        if tokenization not in TOKENIZATIONS:
            raise TokenizerConfigError(f"unknown tokenization {tokenization!r}; use one of: {', '.join(TOKENIZATIONS)}")
        check_piano_policy(piano_policy)
        if fixed_tempo is not None and not (isinstance(fixed_tempo, (int, float)) and 10 <= fixed_tempo <= 400):
            raise TokenizerConfigError(f"fixed_tempo must be a tempo in quarter notes per minute (10-400), not {fixed_tempo!r}")
        self.fixed_tempo = float(fixed_tempo) if fixed_tempo is not None else None
        params = copy.deepcopy(DEFAULT_MIDITOK_PARAMS)
        params.update(copy.deepcopy(miditok_params or {}))
        # PianoMuse's own invariants: one stream without program tokens, PAD/BOS/EOS first.
        params["use_programs"] = False
        specials = [s for s in params.get("special_tokens", []) if s.split("_", 1)[0] not in SPECIAL_KINDS]
        params["special_tokens"] = ["PAD", "BOS", "EOS", *specials]
        self.tokenization = tokenization
        self.piano_policy = piano_policy
        self._miditok = getattr(miditok, tokenization)(_miditok_config(params))
        vocab = self._miditok.vocab
        self._id_to_token = [""] * len(vocab)
        for token, i in vocab.items():
            self._id_to_token[i] = token
        if self._id_to_token[:3] != ["PAD_None", "BOS_None", "EOS_None"]:
            raise TokenizerConfigError("the tokenizer's first ids must be PAD, BOS, EOS; leave special_tokens to PianoMuse")

    # ---- config --------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None) -> "PianoTokenizer":
        """Build from a saved config (``to_config``) or a short user dict.

        A user dict may name ``tokenization``, ``piano_policy`` and any MidiTok parameter at its top
        level (e.g. ``{"tokenization": "TSD", "num_velocities": 16}``); a saved config carries the
        full MidiTok parameters under ``"miditok"``.
        """
        config = dict(config or {})
        preset = config.pop("preset", None)
        if preset is not None:
            if preset not in TOKENIZER_PRESETS:
                raise TokenizerConfigError(f"unknown tokenizer preset {preset!r}; use one of: {', '.join(TOKENIZER_PRESETS)}")
            config = {**copy.deepcopy(TOKENIZER_PRESETS[preset]), **config}
        fixed_tempo = config.pop("fixed_tempo", None)
        tokenization = config.pop("tokenization", "REMI")
        policy = config.pop("piano_policy", "keyboard")  # configs from before "auto" meant keyboard
        params = dict(config.pop("miditok", {}) or {})
        for key in ("format", "vocab_size", "miditok_version", "symusic_version"):
            config.pop(key, None)
        params.update(config)
        return cls(tokenization, params, policy, fixed_tempo)

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable; ``from_config(to_config())`` gives the same vocabulary."""
        params = self._miditok.config.to_dict(serialize=True)
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
        params["time_signature_range"] = {str(k): list(v) for k, v in params["time_signature_range"].items()}
        params["chord_maps"] = {q: list(v) for q, v in params.get("chord_maps", {}).items()}
        # MidiTok puts unknown kwargs here; keep them flat so from_config reads them back
        params.update(params.pop("additional_params", {}) or {})
        config = {
            "format": CONFIG_FORMAT,
            "tokenization": self.tokenization,
            "piano_policy": self.piano_policy,
            "vocab_size": self.vocab_size,
            "miditok_version": importlib.metadata.version("miditok"),
            "miditok": params,
        }
        if self.fixed_tempo is not None:
            config["fixed_tempo"] = self.fixed_tempo
        return config

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PianoTokenizer) and self._id_to_token == other._id_to_token \
            and self.tokenization == other.tokenization and self.piano_policy == other.piano_policy \
            and self.fixed_tempo == other.fixed_tempo

    def __repr__(self) -> str:
        return f"PianoTokenizer({self.tokenization}, vocab_size={self.vocab_size}, piano_policy={self.piano_policy!r})"

    # ---- vocabulary ----------------------------------------------------------------------------
    @property
    def miditok(self):
        """The wrapped MidiTok tokenizer (for what this class does not wrap)."""
        return self._miditok

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    pad_id = 0
    bos_id = 1
    eos_id = 2

    @property
    def time_division(self) -> int:
        """Ticks per quarter of decoded scores."""
        return int(self._miditok.time_division)

    def token_str(self, token_id: int) -> str:
        """MidiTok's name of a token, e.g. ``"Pitch_60"``."""
        return self._id_to_token[token_id]

    def token_id(self, token: str) -> int:
        return self._miditok.vocab[token]

    def token_kind(self, token_id: int) -> str:
        """Kind of a token: Bar, Position, Pitch, Velocity, Duration, Pedal, Tempo, TimeSig, ..."""
        return self._id_to_token[token_id].split("_", 1)[0]

    @cached_property
    def kinds(self) -> tuple[str, ...]:
        """Every kind in the vocabulary, in order of first id."""
        return tuple(dict.fromkeys(tok.split("_", 1)[0] for tok in self._id_to_token))

    @cached_property
    def kind_of_id(self) -> np.ndarray:
        """int16 [vocab]: index into ``kinds`` for each id (vectorised kind look-ups)."""
        index = {k: i for i, k in enumerate(self.kinds)}
        return np.array([index[t.split("_", 1)[0]] for t in self._id_to_token], dtype=np.int16)

    def kind_ids(self, kind: str) -> list[int]:
        """All ids of one kind, ascending (empty when the kind is not in this vocabulary)."""
        if kind not in self.kinds:
            return []
        return np.flatnonzero(self.kind_of_id == self.kinds.index(kind)).tolist()

    def note_start_ids(self) -> list[int]:
        """Ids of the token that opens each note (Pitch in REMI/TSD, NoteOn in MIDILike): one per note."""
        return sorted(self.kind_ids("Pitch") + self.kind_ids("NoteOn"))

    def token_value(self, token_id: int) -> str:
        """The value part of a token (``"60"`` for ``Pitch_60``)."""
        parts = self._id_to_token[token_id].split("_", 1)
        return parts[1] if len(parts) > 1 else ""

    @cached_property
    def _grammar(self) -> dict[str, set[str]]:
        graph = self._miditok.tokens_types_graph
        kinds = set(self.kinds)
        content = kinds - set(SPECIAL_KINDS)
        grammar: dict[str, set[str]] = {}
        for kind in content:
            # MidiTok names some specials with their "_None" suffix; normalise, keep only what exists
            follows = {k.split("_", 1)[0] for k in graph.get(kind, set())}
            grammar[kind] = (follows & content) | {"EOS"}
        # a piece opens as MidiTok opens it: REMI with Bar, the time-shift tokenizations with a
        # global event or the first note/time token
        if self.tokenization == "REMI":
            first = {"Bar"}
        else:
            first = content - {"Velocity", "Duration", "NoteOff", "PedalOff"}
        grammar["BOS"] = first & content
        grammar["EOS"] = set()
        grammar["PAD"] = set()
        return grammar

    def grammar_next_kinds(self, kind: str) -> set[str]:
        """Kinds that may follow a token of ``kind`` (for constrained sampling). PAD is never a
        successor; EOS may follow any content token."""
        if kind not in self._grammar:
            raise KeyError(f"unknown token kind {kind!r}; known kinds: {', '.join(self.kinds)}")
        return set(self._grammar[kind])

    @cached_property
    def grammar_matrix(self) -> np.ndarray:
        """bool [len(kinds), vocab]: row k marks the ids allowed after a token of kind k."""
        allowed = np.zeros((len(self.kinds), self.vocab_size), dtype=bool)
        for k, kind in enumerate(self.kinds):
            for nxt in self._grammar.get(kind, set()):
                allowed[k, self.kind_of_id == self.kinds.index(nxt)] = True
        return allowed

    # ---- per-id tables for augmentation and windows ----------------------------------------------
    @cached_property
    def pitch_of_id(self) -> np.ndarray:
        """int16 [vocab]: the MIDI pitch a token carries (Pitch, NoteOn, NoteOff), else -1."""
        out = np.full(self.vocab_size, -1, dtype=np.int16)
        for i, tok in enumerate(self._id_to_token):
            kind, _, value = tok.partition("_")
            if kind in ("Pitch", "NoteOn", "NoteOff") and value.lstrip("-").isdigit():
                out[i] = int(value)
        return out

    def transpose_table(self, semitones: int) -> np.ndarray | None:
        """int32 [vocab] mapping each id to its transposed id (non-pitch ids map to themselves);
        -1 where the vocabulary has no token for the transposed pitch (off the keyboard)."""
        table = np.arange(self.vocab_size, dtype=np.int32)
        for i in np.flatnonzero(self.pitch_of_id >= 0):
            kind = self.token_kind(int(i))
            target = f"{kind}_{int(self.pitch_of_id[i]) + semitones}"
            j = self._miditok.vocab.get(target)
            if j is None:
                table[i] = -1
            else:
                table[i] = j
        return table

    @cached_property
    def value_order(self) -> dict[str, list[int]]:
        """For ordered kinds (Velocity, Tempo), their ids sorted by value (for jitter by bins)."""
        out = {}
        for kind in ("Velocity", "Tempo"):
            ids = self.kind_ids(kind)
            out[kind] = sorted(ids, key=lambda i: float(self.token_value(i)))
        return out

    # ---- encode / decode -----------------------------------------------------------------------
    def prepare_score(self, score: symusic.Score) -> symusic.Score:
        """Apply the piano policy and merge to one track (what ``encode_score`` tokenizes); with a
        ``fixed_tempo``, re-time it to that one tempo, every note and pedal at its own second."""
        piano = extract_piano(score, self.piano_policy)
        return piano if self.fixed_tempo is None else retime(piano, self.fixed_tempo)

    def _encode(self, score: symusic.Score):
        piano = self.prepare_score(score)
        seqs = self._miditok.encode(piano)
        return seqs[0] if isinstance(seqs, list) else seqs

    def encode_score(self, score: symusic.Score, bos_eos: bool = False) -> list[int]:
        """Token ids of a piece (one sequence). ``bos_eos`` wraps it in BOS ... EOS."""
        ids = list(self._encode(score).ids)
        return [self.bos_id, *ids, self.eos_id] if bos_eos else ids

    def encode_with_bars(self, score: symusic.Score) -> tuple[list[int], list[int]]:
        """(ids, bar_starts): bar_starts[i] is the index of the token where a bar begins.

        A bar begins at the first token at or after its tick that can open a bar: with REMI a Bar
        token, or, for a bar MidiTok enters through a Rest (REMI writes no Bar token there), the
        bar's first Position token; with the time-shift tokenizations, the first event. Bars with
        no event of their own (inside a long rest) are skipped, so every cut falls between events.
        """
        seq = self._encode(score)
        ids = list(seq.ids)
        times = np.array([e.time for e in seq.events], dtype=np.int64)
        if self.tokenization == "REMI":
            opening = {"Bar", "Position"}
            can_open = np.array([e.type_ in opening for e in seq.events], dtype=bool)
        else:
            can_open = np.ones(len(ids), dtype=bool)
        candidates = np.flatnonzero(can_open)
        starts: list[int] = []
        for tick in seq._ticks_bars:
            j = int(np.searchsorted(times[candidates], tick, side="left")) if len(candidates) else 0
            if j < len(candidates):
                i = int(candidates[j])
                if not starts or i > starts[-1]:
                    starts.append(i)
        return ids, starts

    def encode_file(self, path: str | Path, bos_eos: bool = False) -> list[int]:
        return self.encode_score(symusic.Score(str(path)), bos_eos=bos_eos)

    def decode(self, ids) -> symusic.Score:
        """A score (one piano track, ``time_division`` ticks per quarter) from token ids.

        PAD/BOS/EOS are dropped, and an EOS ends the piece.
        """
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        ids = [i for i in ids if i > self.eos_id]
        score = self._miditok.decode([ids])
        if self.fixed_tempo is not None:
            score.tempos.clear()
            score.tempos.append(symusic.Tempo(0, self.fixed_tempo))
        for track in score.tracks:
            track.program = 0
            track.is_drum = False
        return score
