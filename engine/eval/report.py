"""The evaluation report: likelihood, continuations against the real ones, validity, memorisation.

``evaluate(model, data, options)`` runs everything on tokens already in memory and returns one
JSON-able dict (``REPORT_FORMAT``); ``write_report`` writes it (NaN becomes null) with the PNG of
the distributions beside it. ``audition_metrics`` gives one MIDI file the same musical metrics
against a corpus profile.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.atomic import write_atomic, write_with
from engine.generate.defaults import SamplingConfig

from . import metrics as m
from .continuations import (
    SamplingOptions,
    choose_windows,
    decode_continuation,
    generate_continuations,
)
from .likelihood import LN2, bits_breakdown, evaluate_likelihood, style_of
from .ngram import ORDERS, fit_baseline
from .overlap import NgramIndex, note_symbols
from .structure import BarNotes, in_key_share, key_correlation, self_reuse
from .validity import check_continuation

REPORT_FORMAT = "pianomuse-eval/1"
# A generated continuation may run to this many times the real one's tokens (plus a margin)
# before it is cut: a model that never closes its bars must not stall the evaluation.
MAX_NEW_TOKENS_FACTOR = 3.0
MAX_NEW_TOKENS_MARGIN = 64

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class EvalOptions:
    samples: int = 16
    prompt_bars: int = 4
    bars: int = 8
    seed: int = 0
    temperature: float = SamplingConfig.temperature
    top_p: float = SamplingConfig.top_p
    grammar: bool = True
    # likelihood reads whole validation pieces until this many target tokens (None: all)
    max_likelihood_tokens: int | None = 200_000
    # training pieces scanned for copied n-grams (None: all)
    max_training_pieces: int | None = None
    overlap_with_ioi: bool = True
    # the n-gram baseline: fitted on the training pieces with this transposition augmentation
    # (the model's own training setting), its order chosen on held-out training pieces
    baseline: bool = True
    transpose_range: int = 6


# What the bundled model must reach, all read from one report (README, "The bundled model")
GOALS = {
    "bits_per_note_vs_baseline": ("<=", 0.55),
    "self_reuse": (">=", 0.15),
    "key_correlation": (">=", 0.85),
    "invalid_tokens": ("<=", 0),
    "bars_honoured_share": (">=", 1.0),
}


@dataclass
class EvalData:
    """What ``evaluate`` reads: a tokenizer, validation pieces with their bar starts, training pieces."""

    tokenizer: object
    validation: list[tuple[str, list[int], list[int] | None]]  # (name, tokens, bar starts or None)
    training: list[tuple[str, list[int]]]
    description: str = ""
    trained_transpose_range: int | None = None  # the checkpoint's training augmentation, when known


def _decode_perf(tokenizer, tokens: Sequence[int]) -> m.Performance | None:
    try:
        return m.Performance.from_score(tokenizer.decode(list(tokens)))
    except Exception:  # noqa: BLE001  (a stored piece that does not decode is skipped, not fatal)
        return None


def _overlap_summary(runs) -> dict:
    lengths = [r.notes for r in runs]
    if not lengths:
        return {"longest_copied_notes": math.nan, "mean_copied_notes": math.nan, "source": None}
    best = max(range(len(runs)), key=lambda i: lengths[i])
    return {
        "longest_copied_notes": int(lengths[best]),
        "mean_copied_notes": float(np.mean(lengths)),
        "source": runs[best].source,
    }


def evaluate(model, data: EvalData, options: EvalOptions | None = None, on_progress: Progress | None = None) -> dict:
    """Run the whole evaluation and return the report dict (see docs/eval.md for every field)."""
    options = options or EvalOptions()
    tok = data.tokenizer
    progress = on_progress or (lambda stage, done, total: None)
    started = time.perf_counter()
    if not data.validation:
        raise ValueError("the data has no validation pieces to evaluate on; prepare a store with a validation split.")

    # 1. likelihood over whole validation pieces
    val_tokens = [tokens for _, tokens, _ in data.validation]
    progress("likelihood", 0, len(val_tokens))
    likelihood = evaluate_likelihood(
        model, tok, val_tokens, max_tokens=options.max_likelihood_tokens,
        on_piece=lambda done: progress("likelihood", done, len(val_tokens)),
    )

    val_names = [name for name, _, _ in data.validation]
    scored_names = [val_names[i] for i in likelihood.scored_index]
    model_bits = [nats / LN2 for nats in likelihood.target_nats]
    breakdown = {"model": bits_breakdown(likelihood.scored, scored_names, model_bits, tok)}
    baseline = None
    if options.baseline and data.training:
        progress("baseline", 0, 2)
        baseline, ngram_bits = _baseline(data, tok, likelihood, options, progress)
        baseline["model_over_baseline"] = likelihood.bits_per_note / baseline["bits_per_note"] \
            if baseline["bits_per_note"] else math.nan
        breakdown["baseline"] = bits_breakdown(likelihood.scored, scored_names, ngram_bits, tok)
        progress("baseline", 2, 2)

    # 2. continuations of validation prompts, generated and real
    windows = choose_windows(data.validation, options.samples, options.prompt_bars, options.bars, options.seed)
    if not windows:
        raise ValueError(f"no validation piece is longer than {options.prompt_bars} bars, so there is nothing to "
                         "continue; lower --prompt-bars.")
    caps = [int(MAX_NEW_TOKENS_FACTOR * len(w.real)) + MAX_NEW_TOKENS_MARGIN for w in windows]
    total_cap = sum(caps)
    progress("generate", 0, total_cap)
    sampling = SamplingOptions(options.temperature, options.top_p, options.grammar, options.seed)
    outcomes: list = []
    generated = generate_continuations(
        model, tok, [w.prompt for w in windows], options.bars, caps, sampling,
        on_token=lambda done: progress("generate", done, total_cap), outcomes=outcomes,
    )
    progress("generate", total_cap, total_cap)

    real_perfs, gen_perfs, validity, samples = [], [], [], []
    for w, gen, (gen_bars, stop) in zip(windows, generated, outcomes):
        real = decode_continuation(tok, w.prompt, w.real)
        made = decode_continuation(tok, w.prompt, gen)
        check = check_continuation(gen, tok, made, previous=w.prompt[-1] if w.prompt else None)
        validity.append(check)
        if real is not None:
            real_perfs.append(real)
        if made is not None:
            gen_perfs.append(made)
        samples.append({
            "piece": w.piece,
            "start_bar": w.start_bar,
            "prompt_tokens": len(w.prompt),
            "real_tokens": len(w.real),
            "generated_tokens": len(gen),
            "decoded": made is not None,
            "invalid_tokens": check.invalid_tokens,
            "stuck_notes": check.stuck_notes,
            "real": m.performance_features(real) if real is not None else None,
            "generated": m.performance_features(made) if made is not None else None,
            "style": style_of(w.piece),
            "generated_bars": gen_bars,
            "stop_reason": stop,
            "structure": {"real": _structure(tok, w.prompt, w.real, options.bars),
                          "generated": _structure(tok, w.prompt, gen, options.bars)},
        })
    comparison = m.compare_sets(real_perfs, gen_perfs)
    structure = _structure_summary(samples)

    n_tokens = sum(v.tokens for v in validity)
    n_started = sum(v.notes_started for v in validity)
    validity_report = {
        "tokens": n_tokens,
        "invalid_tokens": sum(v.invalid_tokens for v in validity),
        "invalid_token_rate": sum(v.invalid_tokens for v in validity) / n_tokens if n_tokens else math.nan,
        "decode_failures": sum(not v.decoded for v in validity),
        "notes_started": n_started,
        "notes_unreleased": sum(v.notes_unreleased for v in validity),
        "notes_too_long": sum(v.notes_too_long for v in validity),
        "stuck_notes": sum(v.stuck_notes for v in validity),
        "stuck_note_rate": sum(v.stuck_notes for v in validity) / n_started if n_started else math.nan,
        "stuck_note_limit_s": m.STUCK_NOTE_S,
        "grammar_constrained": options.grammar,
    }

    # 3. memorisation: longest run of notes copied from a training piece
    training = data.training if options.max_training_pieces is None else data.training[: options.max_training_pieces]
    progress("overlap", 0, len(training))
    train_perfs, train_names = [], []
    for i, (name, tokens) in enumerate(training):
        perf = _decode_perf(tok, tokens)
        if perf is not None:
            train_perfs.append(perf)
            train_names.append(name)
        if i % 16 == 15:
            progress("overlap", i + 1, len(training))
    index = NgramIndex.from_performances(train_perfs, train_names, with_ioi=options.overlap_with_ioi)
    gen_runs = [index.longest_copied(note_symbols(p, options.overlap_with_ioi)) for p in gen_perfs]
    real_runs = [index.longest_copied(note_symbols(p, options.overlap_with_ioi)) for p in real_perfs]
    # the same check on intervals: a copy moved to another key is caught too
    any_key = NgramIndex.from_performances(train_perfs, train_names, with_ioi=options.overlap_with_ioi, any_key=True)
    gen_any = [any_key.longest_copied(note_symbols(p, options.overlap_with_ioi, any_key=True)) for p in gen_perfs]
    real_any = [any_key.longest_copied(note_symbols(p, options.overlap_with_ioi, any_key=True)) for p in real_perfs]
    for sample, run, moved in zip([s for s in samples if s["decoded"]], gen_runs, gen_any):
        sample["copied_notes"] = run.notes
        sample["copied_from"] = run.source
        sample["copied_notes_any_key"] = moved.notes
    progress("overlap", len(training), len(training))
    overlap = {
        "symbols": "pitch+ioi" if options.overlap_with_ioi else "pitch",
        "training_pieces": len(train_perfs),
        "training_notes": len(index),
        "generated": _overlap_summary(gen_runs),
        # the same check on the real continuations: what "not copied" looks like in this corpus
        "real": _overlap_summary(real_runs),
        "any_key": {"generated": _overlap_summary(gen_any), "real": _overlap_summary(real_any)},
    }
    bars_honoured = sum(b >= options.bars for b, _ in outcomes)
    continuation_bars = {"requested": options.bars, "honoured": bars_honoured, "samples": len(outcomes),
                         "honoured_share": bars_honoured / len(outcomes) if outcomes else math.nan}
    goals = _goals(likelihood.bits_per_note, baseline, structure, validity_report, continuation_bars)

    return {
        "format": REPORT_FORMAT,
        "data": data.description,
        "options": asdict(options),
        "likelihood": likelihood.to_dict(),
        "continuations": {
            "samples": len(windows),
            "generated_decoded": len(gen_perfs),
            "real_decoded": len(real_perfs),
            **comparison,
        },
        "validity": validity_report,
        "training_overlap": overlap,
        "baseline": baseline,
        "breakdown": breakdown,
        "structure": structure,
        "continuation_bars": continuation_bars,
        "goals": goals,
        "samples": samples,
        "seconds": time.perf_counter() - started,
    }


def _baseline(data: EvalData, tok, likelihood, options: EvalOptions, progress: Progress) -> tuple[dict, list[np.ndarray]]:
    """The n-gram baseline's report entry and its bits per scored target. It depends only on the
    data and the augmentation, never on the model, so it is kept in the cache and fitted once
    (``cached`` says whether this report read it from there)."""
    from engine.data.store import cache_dir

    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps([REPORT_FORMAT, tok.vocab_size, options.transpose_range, list(ORDERS)]).encode())
    for group in ([t for _, t in data.training], likelihood.scored):
        for tokens in group:
            digest.update(np.asarray(tokens, dtype=np.int32).tobytes() + b"|")
        digest.update(b"#")
    path = cache_dir() / "ngram" / f"{digest.hexdigest()}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as saved:
                entry = json.loads(str(saved["entry"]))
                bits = np.split(saved["bits"], saved["cuts"])
            return {**entry, "cached": True}, bits
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache entry is fitted again
    fitted = fit_baseline([tokens for _, tokens in data.training], tok, options.transpose_range,
                          on_stage=lambda stage: progress("baseline", 1 if stage == "fitting" else 0, 2))
    bits = fitted.model.token_bits(likelihood.scored)
    total = float(sum(b.sum() for b in bits))
    entry = {
        "kind": "interpolated Kneser-Ney n-gram",
        "order": fitted.order,
        "transpose_range": fitted.transpose_range,
        "held_out_bits_per_token": {str(k): v for k, v in fitted.held_out_bits_per_token.items()},
        "bits_per_token": total / likelihood.tokens if likelihood.tokens else math.nan,
        "bits_per_note": total / likelihood.notes if likelihood.notes else math.nan,
        "bits_per_second": total / likelihood.seconds if likelihood.seconds > 0 else math.nan,
    }
    try:
        write_with(path, lambda tmp: np.savez(tmp, entry=json.dumps(_json_safe(entry)),
                                              bits=np.concatenate(bits) if bits else np.zeros(0),
                                              cuts=np.cumsum([len(b) for b in bits])[:-1]))
    except OSError:
        pass  # no cache: the next report fits again
    return {**entry, "cached": False}, bits


def _structure(tokenizer, prompt: Sequence[int], continuation: Sequence[int], bars: int) -> dict:
    """Self-reuse, key correlation and in-key share of ``bars`` bars from the bar where the
    continuation's first note falls (the prompt before it is what it may reuse)."""
    nothing = {"self_reuse": math.nan, "key_correlation": math.nan, "in_key_share": math.nan}
    try:
        before = BarNotes.from_score(tokenizer.decode(list(prompt)))
        notes = BarNotes.from_score(tokenizer.decode(list(prompt) + list(continuation)))
    except Exception:  # noqa: BLE001  (a sequence that does not decode has no structure to measure)
        return nothing
    prompt_notes = Counter(zip(np.round(before.onset, 6).tolist(), before.pitch.tolist()))
    added = []
    for onset, pitch in zip(np.round(notes.onset, 6).tolist(), notes.pitch.tolist()):
        if prompt_notes[(onset, pitch)] > 0:
            prompt_notes[(onset, pitch)] -= 1
        else:
            added.append(onset)
    if not added:
        return nothing
    first = int(np.floor(min(added) + 1e-9))
    last = first + bars
    return {
        "self_reuse": self_reuse(notes, first, last),
        "key_correlation": key_correlation(notes, first, last),
        "in_key_share": in_key_share(notes.between(first, last)),
    }


def _structure_summary(samples: list[dict]) -> dict:
    """Means of the structure measures, real and generated, over all samples and per style."""

    def means(rows: list[dict]) -> dict:
        out = {}
        for side in ("real", "generated"):
            for name in ("self_reuse", "key_correlation", "in_key_share"):
                values = [r["structure"][side][name] for r in rows if np.isfinite(r["structure"][side][name])]
                out.setdefault(side, {})[name] = float(np.mean(values)) if values else math.nan
        out["samples"] = len(rows)
        return out

    styles = sorted({s["style"] for s in samples})
    return {**means(samples), "styles": {style: means([s for s in samples if s["style"] == style]) for style in styles}}


def _goals(bits_per_note: float, baseline: dict | None, structure: dict, validity: dict, bars: dict) -> dict:
    values = {
        "bits_per_note_vs_baseline": bits_per_note / baseline["bits_per_note"] if baseline else math.nan,
        "self_reuse": structure["generated"]["self_reuse"],
        "key_correlation": structure["generated"]["key_correlation"],
        "invalid_tokens": validity["invalid_tokens"],
        "bars_honoured_share": bars["honoured_share"],
    }
    out = {}
    for name, (op, target) in GOALS.items():
        value = values[name]
        met = bool(np.isfinite(value) and (value <= target if op == "<=" else value >= target))
        out[name] = {"value": value, "goal": f"{op} {target}", "met": met}
    return out


# --- files -------------------------------------------------------------------------------------

def _json_safe(value):
    """NaN and infinities become None (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def plot_path_for(json_path: str | Path) -> Path:
    """Where the distribution plot of a JSON report goes: beside it, ``NAME.png``."""
    return Path(json_path).with_suffix(".png")


def write_report(report: dict, json_path: str | Path, plot: bool = True) -> tuple[Path, Path | None]:
    """Write the JSON report (atomically) and, with ``plot``, the PNG beside it. Returns both paths."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    png = None
    if plot:
        from .plot import plot_report  # matplotlib loads only when a plot is wanted

        png = plot_report(report, plot_path_for(json_path))
        report = {**report, "plot": str(png)}
    write_atomic(json_path, json.dumps(_json_safe(report), indent=1, allow_nan=False) + "\n")
    return json_path, png


# --- one sample against a corpus (trainer auditions, the TUI) -----------------------------------

@dataclass
class CorpusProfile:
    """What a corpus looks like: pooled histograms, each piece's scalar features, an n-gram index."""

    histograms: dict[str, np.ndarray]
    features: dict[str, list[float]]
    index: NgramIndex
    pieces: int
    description: str = ""

    @classmethod
    def from_performances(cls, perfs: Sequence[m.Performance], names: Sequence[str] | None = None,
                          description: str = "") -> "CorpusProfile":
        rows = [m.performance_features(p) for p in perfs]
        return cls(
            histograms=m.set_histograms(perfs),
            features={name: [row[name] for row in rows] for name in m.SCALAR_FEATURES},
            index=NgramIndex.from_performances(perfs, names),
            pieces=len(perfs),
            description=description,
        )

    @classmethod
    def from_store(cls, store, split: str = "train", max_pieces: int | None = None) -> "CorpusProfile":
        """The pieces of a token store's split, decoded with its tokenizer (e.g. what a run trains on)."""
        tok = store.tokenizer
        pieces = store.pieces(split)[:max_pieces]
        perfs, names = [], []
        for piece in pieces:
            perf = _decode_perf(tok, store.tokens(piece).tolist())
            if perf is not None and perf.n_notes:
                perfs.append(perf)
                names.append(piece.path)
        return cls.from_performances(perfs, names, description=f"{store.path} ({split})")

    @classmethod
    def from_folder(cls, folder: str | Path) -> "CorpusProfile":
        """Every readable MIDI file under ``folder`` (recursively), read with symusic."""
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
        perfs, names = [], []
        for path in files:
            try:
                perf = m.Performance.from_midi(path)
            except Exception:  # noqa: BLE001  (a broken file is left out of the profile)
                continue
            if perf.n_notes:
                perfs.append(perf)
                names.append(str(path.relative_to(folder)))
        return cls.from_performances(perfs, names, description=str(folder))


def _folder_fingerprint(folder: Path) -> tuple:
    files = [p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi")]
    return (len(files), max((p.stat().st_mtime_ns for p in files), default=0))


@lru_cache(maxsize=4)
def _cached_profile(folder: str, fingerprint: tuple) -> CorpusProfile:
    return CorpusProfile.from_folder(folder)


def corpus_profile(folder: str | Path | None = None) -> CorpusProfile:
    """The profile of a MIDI folder (default: the bundled corpus), cached while the folder is unchanged."""
    from engine.paths import CORPUS_DIR

    folder = Path(folder) if folder is not None else CORPUS_DIR
    return _cached_profile(str(folder.resolve()), _folder_fingerprint(folder))


def audition_metrics(midi_path: str | Path, reference: CorpusProfile | str | Path | None = None) -> dict:
    """The evaluation's musical metrics for one MIDI file, against a corpus.

    ``reference`` is a ``CorpusProfile``, a MIDI folder, or None for the bundled corpus. Returns
    ``{"path", "features": {...}, "vs_corpus": {feature: {"value", "corpus_mean", "corpus_std",
    "percentile"}}, "histograms": {name: {"oa", "kl_nats"}}, "training_overlap": {"longest_copied_notes",
    "source"}, "corpus": description}``; NaN where a value is undefined (e.g. an empty file).
    """
    if not isinstance(reference, CorpusProfile):
        reference = corpus_profile(reference)
    perf = m.Performance.from_midi(midi_path)
    features = m.performance_features(perf)
    vs_corpus = {}
    for name in m.SCALAR_FEATURES:
        corpus = np.asarray([v for v in reference.features[name] if np.isfinite(v)], dtype=np.float64)
        value = features[name]
        vs_corpus[name] = {
            "value": value,
            "corpus_mean": float(corpus.mean()) if len(corpus) else math.nan,
            "corpus_std": float(corpus.std()) if len(corpus) else math.nan,
            # share of corpus pieces below this value (ties count half): 0.5 is a typical piece
            "percentile": float(((corpus < value).sum() + 0.5 * (corpus == value).sum()) / len(corpus))
            if len(corpus) and np.isfinite(value) else math.nan,
        }
    sample_h = m.set_histograms([perf])
    histograms = {
        name: {
            "oa": m.overlapping_area(reference.histograms[name], sample_h[name]),
            "kl_nats": m.kl_divergence(reference.histograms[name], sample_h[name]),
        }
        for name in m.HISTOGRAMS
    }
    run = reference.index.longest_copied(note_symbols(perf))
    return {
        "path": str(midi_path),
        "features": features,
        "vs_corpus": vs_corpus,
        "histograms": histograms,
        "training_overlap": {"longest_copied_notes": run.notes, "source": run.source},
        "structure": _file_structure(midi_path),
        "corpus": reference.description,
    }


def _file_structure(midi_path: str | Path) -> dict:
    """Self-reuse (from bar 3 on, against everything before), key correlation and notes in key of a MIDI file."""
    import symusic

    try:
        notes = BarNotes.from_score(symusic.Score(str(midi_path)))
    except Exception:  # noqa: BLE001 - an unreadable file has no structure to measure
        return {"self_reuse": math.nan, "key_correlation": math.nan, "in_key_share": math.nan}
    return {"self_reuse": self_reuse(notes, 2), "key_correlation": key_correlation(notes), "in_key_share": in_key_share(notes)}


def audition_summary(metrics: dict) -> dict:
    """``audition_metrics`` flattened to one level of numbers, for a metrics.jsonl line or a status bar."""
    out = {"notes": metrics["features"]["notes"]}
    for name in m.SCALAR_FEATURES:
        out[name] = metrics["vs_corpus"][name]["value"]
        out[f"{name}_percentile"] = metrics["vs_corpus"][name]["percentile"]
    for name, entry in metrics["histograms"].items():
        out[f"{name}_oa"] = entry["oa"]
    out["copied_notes"] = metrics["training_overlap"]["longest_copied_notes"]
    out.update(metrics.get("structure", {}))
    return _json_safe(out)
