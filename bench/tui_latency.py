"""Key-press latency of the app: idle, versus a training run AND a live performance at once.

The app runs headless (Textual's Pilot) with its real workers: a tiny training run in its own
spawned process (metrics tailed from its run directory) and a live generation played to a port of
a private JACK server (dummy driver). For each key press we time the moment the key is sent to the
moment its action runs on the UI thread (the user's "the app answered"), and the moment the
app is idle again with the redraw done (the whole round trip). The peer is the same app idle.

    .venv/bin/python bench/tui_latency.py [--presses 60] [--out bench/results/tui.md]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

FAST_TINY = [
    "train.batch_size=2", "train.micro_batch_size=2", "data.ctx_len=128", "run.log_every=1",
    "eval.val_every=5", "eval.val_max_batches=1", "eval.audition_every=0", "run.checkpoint_every=0",
]


def tiny_checkpoint(folder: Path) -> Path:
    import torch

    from engine.data.tokenizer import PianoTokenizer
    from engine.model import RWKV7, ModelConfig, save_checkpoint

    tok = PianoTokenizer("REMI")
    torch.manual_seed(0)
    model = RWKV7(ModelConfig(n_layer=2, n_embd=64, head_size=32, vocab_size=tok.vocab_size))
    return save_checkpoint(model, folder / "tiny.pth", tokenizer=tok.to_config())


async def press_many(pilot, app, key: str, action_times: list[float], n: int) -> tuple[list[float], list[float]]:
    """Press ``key`` n times at random gaps; return (answer ms, round-trip ms) per press."""
    answers, trips = [], []
    for _ in range(n):
        await asyncio.sleep(random.uniform(0.03, 0.12))
        before = len(action_times)
        t0 = time.perf_counter()
        await pilot.press(key)
        t1 = time.perf_counter()
        if len(action_times) > before:
            answers.append((action_times[before] - t0) * 1e3)
            trips.append((t1 - t0) * 1e3)
    return answers, trips


async def measure_both_panes(pilot, app, action_times: list[float], presses: int, state: str) -> list:
    rows = []
    for pane, key, label in (("train", "l", "train pane: l (log scale)"),
                             ("generate", "plus", "generate pane: + (temperature)")):
        app.action_show_pane(pane)
        await pilot.pause(0.2)
        app.pane(pane).focus_main()
        answers, trips = await press_many(pilot, app, key, action_times, presses)
        rows.append((state, label, answers, trips))
    return rows


def summary(values: list[float]) -> tuple[int, float, float, float, float]:
    ordered = sorted(values)
    if not ordered:
        return 0, float("nan"), float("nan"), float("nan"), float("nan")
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return len(ordered), statistics.median(ordered), pick(0.95), pick(0.99), ordered[-1]


def note(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run(presses: int) -> list[tuple[str, str, list[float], list[float]]]:
    from jack_server import JackServer, MidiReceiver

    from pianomuse_tui.app import PianoMuseApp
    from pianomuse_tui.panes.generate import GeneratePane
    from pianomuse_tui.panes.train import TrainPane
    from pianomuse_tui.widgets.loss_plot import LossPlot

    action_times: list[float] = []
    original_log = TrainPane.action_log_scale
    original_nudge = GeneratePane.action_nudge

    def timed_log(self):
        action_times.append(time.perf_counter())
        original_log(self)

    def timed_nudge(self, name, delta):
        action_times.append(time.perf_counter())
        original_nudge(self, name, delta)

    TrainPane.action_log_scale = timed_log
    GeneratePane.action_nudge = timed_nudge
    rows = []
    with tempfile.TemporaryDirectory() as tmp, JackServer():
        tmp = Path(tmp)
        ckpt = tiny_checkpoint(tmp)
        receiver = MidiReceiver()
        try:
            app = PianoMuseApp(pane="train", args={})
            async with app.run_test(size=(140, 40)) as pilot:
                await pilot.pause(0.5)
                note("idle presses")
                rows += await measure_both_panes(pilot, app, action_times, presses, "idle")
                note("starting the training run")
                app.generate.query_one("#gen-temperature").value = "0.9"

                # busy: a training run and a live performance at the same time
                app.action_show_pane("train")
                app.train.query_one("#tr-runs").value = str(tmp / "runs")
                app.train.query_one("#tr-overrides").value = " ".join(FAST_TINY + ["train.max_steps=100000"])
                app.train.query_one("#tr-preset").value = "tiny"
                app.train.action_new_run()
                plot = app.train.query_one(LossPlot)
                deadline = time.monotonic() + 300
                while len(plot.train_points) < 2 and time.monotonic() < deadline:
                    await pilot.pause(0.5)
                if len(plot.train_points) < 2:
                    raise SystemExit("the training run produced no metrics in 300 s: " + app.train.proc.log_tail())
                note("training metrics flow; starting the performance")
                gen = app.generate
                gen.query_one("#gen-ckpt").value = str(ckpt)
                gen.query_one("#gen-api").value = "jack"
                gen._pending_port = "pm-test-recv"
                gen.action_refresh_ports()
                deadline = time.monotonic() + 60
                while "pm-test-recv" not in str(gen.query_one("#gen-port").value) and time.monotonic() < deadline:
                    await pilot.pause(0.2)
                gen.query_one("#gen-bars").value = "512"
                gen.start_performance()
                deadline = time.monotonic() + 120
                while not [m for _, m in receiver.received() if m[0] & 0xF0 == 0x90] and time.monotonic() < deadline:
                    await pilot.pause(0.2)
                if not receiver.received():
                    raise SystemExit("the performance sent no note: " + "; ".join(n.message for n in app._notifications))
                note("busy presses")
                rows += await measure_both_panes(pilot, app, action_times, presses, "training + performance")
                telemetry = gen.performance.telemetry() if gen.performance else None
                notes = len([m for _, m in receiver.received() if m[0] & 0xF0 == 0x90 and m[2]])
                steps = len(plot.train_points)
                await app.stop_everything()
            rows.append(("context", f"{steps} train points plotted, {notes} notes played, "
                         f"lateness p99 {telemetry.scheduler.lateness_p99_ms if telemetry else 0:.2f} ms, "
                         f"underruns {telemetry.scheduler.underruns if telemetry else 0}", [], []))
        finally:
            receiver.close()
    return rows


def render(rows) -> str:
    import psutil

    lines = [
        f"## TUI key-press latency ({datetime.date.today()}, {platform.node()}, {psutil.cpu_count()} CPU cores, "
        f"load avg {' '.join(f'{x:.1f}' for x in psutil.getloadavg())})",
        "",
        "Answer = key sent -> its action runs on the UI thread; round trip = until the app is idle again "
        "(redraw done). Goal: answered within 100 ms while training and performing.",
        "",
        "| app state | key | presses | answer p50 ms | p95 | p99 | max | round trip p50 ms | p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    context = []
    for state, key, answers, trips in rows:
        if state == "context":
            context.append(key)
            continue
        n, p50, p95, p99, mx = summary(answers)
        _, t50, _, t99, _ = summary(trips)
        lines.append(f"| {state} | {key} | {n} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {mx:.1f} | {t50:.1f} | {t99:.1f} |")
    lines += ["", "Busy run: " + "; ".join(context)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None, help="append the table to this markdown file")
    args = parser.parse_args()
    rows = asyncio.run(run(args.presses))
    text = render(rows)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
