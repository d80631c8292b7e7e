"""Screenshots of the Generate pane playing with a pianist, one per mode, for the README's "Play with it".

    .venv/bin/python scripts/play_screenshots.py [--out docs/images]

A private dummy JACK server is started; the pane listens on its virtual input 'PianoMuse in' and
plays to its virtual output; a scripted pianist (an rtmidi JACK client) plays the opening of the
Bach prelude from the corpus into the input. Each mode runs until the model has answered, then
the screen is saved as play-<mode>.svg (and .png when ``rsvg-convert`` is installed). A docs step:
neither the tests nor CI need it.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def phrase(n: int = 12) -> list[tuple[float, float, int, int]]:
    import symusic

    score = symusic.Score(str(ROOT / "assets" / "corpus" / "piano" / "bach_bwv846_prelude.mid"), ttype="second")
    notes = sorted((x for t in score.tracks for x in t.notes), key=lambda x: (x.time, x.pitch))[:n]
    return [(x.time - notes[0].time, min(x.duration, 0.5), x.pitch, max(40, x.velocity)) for x in notes]


def pianist(notes, transpose: int = 0) -> None:
    import rtmidi

    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "pianist")
    names = out.get_ports()
    out.open_port(next(i for i, n in enumerate(names) if "PianoMuse in" in n), "keys")
    start = time.monotonic()
    timed = sorted([(t, 1, (0x90, p + transpose, v)) for t, d, p, v in notes] + [(t + d, 0, (0x80, p + transpose, 0)) for t, d, p, v in notes])
    for at, _, data in timed:
        time.sleep(max(0.0, start + at - time.monotonic()))
        out.send_message(list(data))
    out.close_port()
    out.delete()


async def shoot(mode: str, out: Path, size: tuple[int, int]) -> Path:
    from pianomuse_tui.app import PianoMuseApp
    from pianomuse_tui.messages import PortsListed
    from engine.generate.defaults import DuetConfig
    from pianomuse_tui.requests import GenerateArgs

    seen: list = []
    checkpoint = Path("assets/models/pianomuse-v8-small.pth")  # project-relative on screen
    app = PianoMuseApp(pane="generate", args=GenerateArgs(checkpoint=str(checkpoint), midi_api="jack", midi_in="virtual", duet=DuetConfig(mode=mode)))
    async with app.run_test(size=size, message_hook=seen.append) as pilot:
        pane = app.generate
        for _ in range(100):
            if any(isinstance(m, PortsListed) for m in seen):
                break
            await pilot.pause(0.1)
        pane.focus_main()
        pane.query_one("#gen-in").value = "virtual"
        pane.query_one("#gen-mode").value = mode
        pane.start_performance()
        for _ in range(300):
            if pane.performance is not None and pane.performance.duet is not None:
                break
            await pilot.pause(0.1)
        await pilot.pause(0.5)
        if mode == "call-and-response":
            await pilot.pause(pane.performance.duet.seconds_per_bar - 0.8)  # the count-in
        player = threading.Thread(target=pianist, args=(phrase(), 12 if mode == "accompany" else 0), daemon=True)
        player.start()
        await pilot.pause({"continue": 5.5, "call-and-response": 6.5, "accompany": 4.5}[mode])
        path = Path(app.save_screenshot(f"play-{mode}.svg", str(out)))
        await app.stop_everything()
        player.join(5)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"shots-{uuid.uuid4().hex[:6]}"
    os.environ.update(JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1")
    jack = subprocess.Popen(["jackd", "-n", name, "-d", "dummy", "-r", "48000", "-p", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        for mode in ("continue", "call-and-response", "accompany"):
            svg = asyncio.run(shoot(mode, args.out, (140, 42)))
            print(svg)
            if shutil.which("rsvg-convert"):
                subprocess.run(["rsvg-convert", "-o", str(svg.with_suffix(".png")), str(svg)], check=True)
                print(svg.with_suffix(".png"))
    finally:
        jack.terminate()
        jack.wait(5)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    main()
