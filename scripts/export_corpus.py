"""Export the bundled demo corpus (assets/corpus) from music21's own corpus.

music21 (a dev-only dependency) ships public-domain works encoded under a BSD licence. This
script writes its solo piano pieces and a deterministic subset of the Bach chorales, with every
part played by an acoustic grand piano, as standard MIDI files, plus ATTRIBUTION.md.

    .venv/bin/python scripts/export_corpus.py [--out assets/corpus] [--chorales 160]

Re-running it rewrites the same files (the chorale subset is chosen by sorted BWV path).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (music21 corpus path, output name, composer, title)
PIANO_PIECES = [
    ("joplin/maple_leaf_rag.mxl", "joplin_maple_leaf_rag", "Scott Joplin", "Maple Leaf Rag"),
    ("chopin/mazurka06-2.krn", "chopin_mazurka_op6_no2", "Frédéric Chopin", "Mazurka op. 6 no. 2"),
    ("mozart/k545/movement1_exposition.mxl", "mozart_k545_mvt1_exposition", "W. A. Mozart",
     "Piano Sonata K. 545, first movement (exposition)"),
    ("bach/bwv846.mxl", "bach_bwv846_prelude", "J. S. Bach", "Prelude in C major BWV 846"),
    ("schumann_clara/polonaise_op1n1.mxl", "clara_schumann_polonaise_op1_no1", "Clara Schumann", "Polonaise op. 1 no. 1"),
    ("schumann_clara/polonaise_op1n2.mxl", "clara_schumann_polonaise_op1_no2", "Clara Schumann", "Polonaise op. 1 no. 2"),
    ("schumann_clara/polonaise_op1n3.mxl", "clara_schumann_polonaise_op1_no3", "Clara Schumann", "Polonaise op. 1 no. 3"),
    ("schumann_clara/polonaise_op1n4.mxl", "clara_schumann_polonaise_op1_no4", "Clara Schumann", "Polonaise op. 1 no. 4"),
    ("schoenberg/opus19/movement2.mxl", "schoenberg_op19_no2", "Arnold Schoenberg", "Sechs kleine Klavierstücke op. 19 no. 2"),
    ("schoenberg/opus19/movement6.mxl", "schoenberg_op19_no6", "Arnold Schoenberg", "Sechs kleine Klavierstücke op. 19 no. 6"),
    ("cpebach/h186.mxl", "cpe_bach_h186", "C. P. E. Bach", "Keyboard piece H. 186"),
]


def _as_piano(score):
    """Give every part an acoustic grand piano so the MIDI carries program 0 on every track."""
    from music21 import instrument

    for part in score.parts:
        for old in list(part.recurse().getElementsByClass(instrument.Instrument)):
            old.activeSite.remove(old)
        part.insert(0, instrument.Piano())
    return score


def _write_midi(score, target: Path) -> None:
    """Write MIDI, playing repeats; a score whose repeat marks music21 cannot expand is written once through."""
    from music21 import repeat

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        score.write("midi", fp=str(target))
    except repeat.ExpanderException:
        _drop_repeats(score)
        score.write("midi", fp=str(target))
    _clean(target)


def _clean(target: Path) -> None:
    """Re-write through symusic: music21 writes grace notes as a note-off before its note-on at
    the same tick, which leaves note-ons never released; symusic keeps only the paired notes."""
    import symusic

    symusic.Score(str(target)).dump_midi(str(target))


def _drop_repeats(score) -> None:
    from music21 import bar, repeat

    for mark in list(score.recurse().getElementsByClass((repeat.RepeatMark, repeat.RepeatExpression))):
        mark.activeSite.remove(mark)
    for measure in score.recurse().getElementsByClass("Measure"):
        for side in ("leftBarline", "rightBarline"):
            if isinstance(getattr(measure, side), bar.Repeat):
                setattr(measure, side, bar.Barline("regular"))


def _chorale_paths(count: int) -> list[Path]:
    from music21 import corpus

    paths = sorted(p for p in corpus.getComposer("bach") if p.name.startswith("bwv") and p.suffix == ".mxl"
                   and not p.name.startswith("bwv846"))
    if count >= len(paths):
        return paths
    # evenly spaced over the sorted list, so the subset spans the whole catalogue deterministically
    step = len(paths) / count
    return [paths[int(i * step)] for i in range(count)]


def export(out: Path, chorales: int) -> list[tuple[str, str, str, str]]:
    from music21 import corpus

    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, str, str, str]] = []
    for source, name, composer, title in PIANO_PIECES:
        score = _as_piano(corpus.parse(source))
        target = out / "piano" / f"{name}.mid"
        _write_midi(score, target)
        written.append((str(target.relative_to(out)), source, composer, title))
        print(f"wrote {target.relative_to(REPO) if target.is_relative_to(REPO) else target}")
    for path in _chorale_paths(chorales):
        source = f"bach/{path.name}"
        try:
            score = _as_piano(corpus.parse(path))
        except Exception as exc:  # noqa: BLE001 - a chorale music21 cannot parse is skipped, not fatal
            print(f"skipped {source}: {exc}", file=sys.stderr)
            continue
        target = out / "chorales" / f"{path.stem.replace('.', '_')}.mid"
        _write_midi(score, target)
        written.append((str(target.relative_to(out)), source, "J. S. Bach", f"Chorale {path.stem.upper()}"))
    print(f"wrote {len(written)} files under {out}")
    return written


def write_attribution(out: Path, written: list[tuple[str, str, str, str]]) -> None:
    import music21

    lines = [
        "# Demo corpus attribution",
        "",
        "These MIDI files were exported by `scripts/export_corpus.py` from the corpus that ships with",
        f"[music21](https://github.com/cuthbertLab/music21) {music21.__version__} (software under the",
        "BSD 3-clause licence). The compositions are in the public domain; the encodings are",
        "distributed with music21 by permission of their encoders (see music21's",
        "`corpus/license.txt`). Every part was assigned an acoustic grand piano (GM program 0);",
        "the Bach chorales are the four-part chorales played on the piano.",
        "",
        "| file | music21 source | composer | work |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{f}` | `{s}` | {c} | {t} |" for f, s, c, t in written]
    (out / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "assets" / "corpus")
    parser.add_argument("--chorales", type=int, default=160, help="how many Bach chorales to export")
    args = parser.parse_args(argv)
    try:
        import music21  # noqa: F401
    except ImportError:
        print("music21 is not installed; install the dev extras: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    written = export(args.out, args.chorales)
    write_attribution(args.out, written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
