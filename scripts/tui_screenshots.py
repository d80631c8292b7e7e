"""Screenshots of the three panes from a real session, for the README (SVG, and PNG from the SVG).

    .venv/bin/python scripts/tui_screenshots.py --run runs/<a run dir> [--out docs/images]

Run it from the project folder: every path on screen is then project-relative. Dataset: a real
scan of the bundled corpus. Train: attached to the given run directory (docs/images/train.png
shows the bundled model's own run: its .metrics.jsonl and .train.toml copied into
runs/pianomuse-v8-small/ as metrics.jsonl and config.toml, its .pth linked as
checkpoints/step-00000600/model.pth). Generate: playing --checkpoint
(default: the bundled model) to the app's virtual port when a MIDI system (ALSA sequencer or a
JACK server) is there, else the idle pane; the committed one played to a private dummy JACK
server (``JACK_DEFAULT_SERVER=shots jackd -n shots -d dummy &`` before running this script).

The PNGs are made from the SVGs by ``rsvg-convert`` (Debian/Ubuntu: ``apt-get install
librsvg2-bin``), which draws the text with the system's monospace font (DejaVu Sans Mono here);
without it only the SVGs are written. This is a docs step: neither the tests nor CI need it.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
from pathlib import Path


async def shoot(run: Path, checkpoint: Path | None, out: Path, size: tuple[int, int]) -> list[Path]:
    from pianomuse_tui.app import PianoMuseApp
    from pianomuse_tui.messages import ScanFinished
    from engine.generate.performance import default_checkpoint

    seen: list = []
    files = []
    app = PianoMuseApp(pane="dataset", args={"scan": True})
    async with app.run_test(size=size, message_hook=seen.append) as pilot:
        for _ in range(600):
            if any(isinstance(m, ScanFinished) for m in seen):
                break
            await pilot.pause(0.2)
        await pilot.pause(1.0)
        files.append(Path(app.save_screenshot("dataset.svg", str(out))))
        app.action_show_pane("train")
        app.train.attach(run)
        for _ in range(100):
            if app.train.records_seen:
                break
            await pilot.pause(0.2)
        await pilot.pause(1.0)
        files.append(Path(app.save_screenshot("train.svg", str(out))))
        app.action_show_pane("generate")
        await pilot.pause(2.0)  # the port list
        checkpoint = checkpoint or default_checkpoint()
        if checkpoint is not None:
            app.generate.use_checkpoint(_project_relative(checkpoint))
        app.generate.start_performance()
        for _ in range(150):  # until notes sound (model load and pre-roll take a while on a CPU)
            if app.generate.query_one("#gen-roll").note_count >= 12:
                break
            await pilot.pause(0.2)
        await pilot.pause(2.0)
        files.append(Path(app.save_screenshot("generate.svg", str(out))))
        await app.stop_everything()
    return files


def _project_relative(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run directory with metrics and a checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=None, help="model to play (default: the bundled one)")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for svg in asyncio.run(shoot(args.run, args.checkpoint, args.out, (140, 40))):
        print(svg)
        if shutil.which("rsvg-convert"):
            png = svg.with_suffix(".png")
            subprocess.run(["rsvg-convert", "-o", str(png), str(svg)], check=True)
            print(png)


if __name__ == "__main__":
    main()
