"""Export the bundled demo corpus (assets/corpus) from music21's own corpus.

music21 (a dev-only dependency) ships public-domain works encoded under a BSD licence. This
script writes, with every part played by an acoustic grand piano, as standard MIDI files, one
folder per style (the folder is the style tag that `eval` splits its results by):
- piano/: its solo keyboard pieces;
- chorales/: all of its four-part Bach chorales;
- quartets/: string-quartet movements (Haydn, Mozart, Beethoven, Robert Schumann);
- madrigals/: vocal polyphony (Monteverdi's madrigals, a spread of Palestrina's mass movements);
plus ATTRIBUTION.md with every file's source, composer and work.

    .venv/bin/python scripts/export_corpus.py [--out assets/corpus] [--chorales 0 (all)] [--palestrina 60]

Re-running it rewrites the same files (subsets are chosen evenly over sorted music21 paths).
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


# (music21 corpus path, style folder, output name, composer, title): works that sound right on a
# piano, four or five voices each, whole movements kept short enough for the size budget
QUARTETS = [
    *[(f"haydn/opus74no1/movement{i}.mxl", f"haydn_op74_no1_mvt{i}", "Joseph Haydn", f"String Quartet op. 74 no. 1, movement {i}")
      for i in (1, 2, 3, 4)],
    *[(f"haydn/opus1no1/movement{i}.mxl", f"haydn_op1_no1_mvt{i}", "Joseph Haydn", f"String Quartet op. 1 no. 1, movement {i}")
      for i in (1, 2, 3, 4, 5)],
    *[(f"mozart/k{k}/movement{i}.mxl", f"mozart_k{k}_mvt{i}", "W. A. Mozart", f"String Quartet K. {k}, movement {i}")
      for k, n in ((80, 4), (155, 3), (156, 4), (458, 4)) for i in range(1, n + 1)],
    *[(f"beethoven/opus18no1/movement{i}.mxl", f"beethoven_op18_no1_mvt{i}", "Ludwig van Beethoven",
       f"String Quartet op. 18 no. 1, movement {i}") for i in (1, 2, 3, 4)],
    *[(f"beethoven/opus59no{n}/movement{i}.mxl", f"beethoven_op59_no{n}_mvt{i}", "Ludwig van Beethoven",
       f"String Quartet op. 59 no. {n}, movement {i}") for n in (1, 2, 3) for i in (1, 2, 3, 4)],
    *[(f"schumann_robert/opus41no1/movement{i}.mxl", f"schumann_op41_no1_mvt{i}", "Robert Schumann",
       f"String Quartet op. 41 no. 1, movement {i}") for i in (1, 2, 3, 4)],  # no. 5's encoding stacks 67 onsets in a second
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
    if count <= 0 or count >= len(paths):
        return paths
    # evenly spaced over the sorted list, so the subset spans the whole catalogue deterministically
    step = len(paths) / count
    return [paths[int(i * step)] for i in range(count)]


def _madrigal_works(palestrina: int) -> list[tuple[str, str, str, str]]:
    """Monteverdi's madrigals (every .mxl) and ``palestrina`` of Palestrina's movements, evenly spread."""
    from music21 import corpus

    root = Path(corpus.getComposer("bach")[0]).parents[1]  # music21's corpus folder
    works = []
    for path in sorted(p for p in corpus.getComposer("monteverdi") if p.suffix == ".mxl" and "_old" not in p.name):
        book, number = path.stem.split(".")[1:3]
        works.append((str(path.relative_to(root)), f"monteverdi_madrigal_{book}_{number}", "Claudio Monteverdi",
                      f"Madrigal, book {book} no. {number}"))
    masses = sorted(p for p in corpus.getComposer("palestrina") if p.suffix in (".krn", ".mxl", ".xml"))
    step = max(1, len(masses) / max(1, palestrina))
    for path in [masses[int(i * step)] for i in range(min(palestrina, len(masses)))]:
        works.append((str(path.relative_to(root)), f"palestrina_{path.stem.lower()}".replace(".", "_").replace("-", "_"),
                      "Giovanni Pierluigi da Palestrina", f"Mass movement: {path.stem.replace('_', ' ')}"))
    return works


def _note_fingerprint(target: Path) -> tuple:
    import symusic

    score = symusic.Score(str(target))
    return tuple(sorted((n.time, n.duration, n.pitch) for t in score.tracks for n in t.notes))


def _export_works(out: Path, folder: str, works, written: list, seen: set) -> None:
    """Write each work as OUT/FOLDER/NAME.mid; one music21 cannot parse, or whose notes an earlier
    file already has (the same chorale under two numbers), is left out with a message."""
    from music21 import corpus

    for source, name, composer, title in works:
        try:
            score = _as_piano(corpus.parse(source))
        except Exception as exc:  # noqa: BLE001 - a work music21 cannot parse is skipped, not fatal
            print(f"skipped {source}: {exc}", file=sys.stderr)
            continue
        target = out / folder / f"{name}.mid"
        _write_midi(score, target)
        fingerprint = _note_fingerprint(target)
        if fingerprint in seen:
            target.unlink()
            print(f"skipped {source}: the same notes as an earlier file", file=sys.stderr)
            continue
        seen.add(fingerprint)
        written.append((str(target.relative_to(out)), str(source), composer, title))
        print(f"wrote {target.relative_to(REPO) if target.is_relative_to(REPO) else target}")


def export(out: Path, chorales: int, palestrina: int = 60) -> list[tuple[str, str, str, str]]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, str, str, str]] = []
    seen: set = set()
    _export_works(out, "piano", PIANO_PIECES, written, seen)
    _export_works(out, "quartets", QUARTETS, written, seen)
    _export_works(out, "madrigals", _madrigal_works(palestrina), written, seen)
    chorale_works = [(f"bach/{path.name}", path.stem.replace(".", "_"), "J. S. Bach", f"Chorale {path.stem.upper()}")
                     for path in _chorale_paths(chorales)]
    _export_works(out, "chorales", chorale_works, written, seen)
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
        "`corpus/license.txt`). Every part was assigned an acoustic grand piano (GM program 0):",
        "the Bach chorales, the string quartets and the madrigals and masses are played on the piano.",
        "Each folder is a style: piano (keyboard works), chorales, quartets, madrigals (vocal polyphony).",
        "",
        "| file | music21 source | composer | work |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{f}` | `{s}` | {c} | {t} |" for f, s, c, t in written]
    (out / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "assets" / "corpus")
    parser.add_argument("--chorales", type=int, default=0, help="how many Bach chorales to export (0: all)")
    parser.add_argument("--palestrina", type=int, default=60, help="how many Palestrina movements to export")
    args = parser.parse_args(argv)
    try:
        import music21  # noqa: F401
    except ImportError:
        print("music21 is not installed; install the dev extras: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    written = export(args.out, args.chorales, args.palestrina)
    write_attribution(args.out, written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
