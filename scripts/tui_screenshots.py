"""Screenshots of the three panes from a real session, for the README (SVG; PNG when ImageMagick can).

    .venv/bin/python scripts/tui_screenshots.py --run runs/<a run dir> [--out docs/images]

Dataset: a real scan of the bundled corpus. Train: attached to the given run directory.
Generate: playing --checkpoint (default: the bundled model) to the app's virtual port when a
MIDI system (ALSA sequencer or a JACK server) is there, else the idle pane.
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
        if checkpoint is not None:
            app.generate.use_checkpoint(checkpoint)
        app.generate.start_performance()
        for _ in range(150):  # until notes sound (model load and pre-roll take a while on a CPU)
            if app.generate.query_one("#gen-roll").note_count >= 12:
                break
            await pilot.pause(0.2)
        await pilot.pause(2.0)
        files.append(Path(app.save_screenshot("generate.svg", str(out))))
        await app.stop_everything()
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run directory with metrics and a checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=None, help="model to play (default: the bundled one)")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for svg in asyncio.run(shoot(args.run, args.checkpoint, args.out, (140, 40))):
        print(svg)
        if shutil.which("convert"):
            subprocess.run(["convert", str(svg), str(svg.with_suffix(".png"))], check=False)


if __name__ == "__main__":
    main()
