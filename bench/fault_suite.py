"""The fault suite (issue 18): kills, corrupt checkpoints, hostile MIDI and double signals, tried as a
careless or malicious user would, each checked for what it may not do: a traceback, anything
already saved lost, a note left sounding, a command past 2 GB of memory.

    .venv/bin/python bench/fault_suite.py [--kills 12] [--signal-trials 6] [--seed 0] [--out bench/results/faults.md]

Every command is a real process (the console's `python -m pianomuse_tui.cli --headless ...`): the
trainer on a micro model and real corpus files, `check` and `generate --prompt` on the hostile files
of tests/unit/hostile_midi.py, live play on a private JACK server. Peak memory is the kernel's peak
resident size of the command and the processes it waited for (its check workers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "unit"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from engine import rundir  # noqa: E402

CLI = [sys.executable, "-m", "pianomuse_tui.cli", "--headless"]
GIB = 2**30


@dataclass
class Tally:
    area: str
    tried: int = 0
    survived: int = 0
    notes_left: int = 0
    peak_mb: float = 0.0
    failures: list[str] = field(default_factory=list)

    def record(self, ok: bool, what: str) -> None:
        self.tried += 1
        self.survived += ok
        if not ok:
            self.failures.append(what)


def peak_run(command: list[str], timeout: float = 300, **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``command``; (result, peak resident MB of it and the children it waited for)."""
    probe = ("import json, resource, subprocess, sys\n"
             "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
             "print(json.dumps({'rc': done.returncode, 'out': done.stdout, 'err': done.stderr, 'peak': peak}))\n")
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, timeout=timeout, **kwargs)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return subprocess.CompletedProcess(command, result["rc"], result["out"], result["err"]), result["peak"]


def micro_train_args(store: Path, root: Path, **extra) -> list[str]:
    from train_helpers import micro_overrides

    words = []
    for item in micro_overrides(store, root, **extra):
        key, value = item.split("=", 1)
        if key not in ("data.path", "run.root"):
            words += [f"--{key}", value]
    return ["train", "--run-dir", str(root), "--data", str(store), *words]


# ---- kills at random points, mid-save included --------------------------------------------------------

def newest_intact_step(root: Path) -> int:
    run = rundir.newest_run(root)
    if run is None:
        return 0
    found = rundir.newest_intact_checkpoint(run).path
    return rundir.checkpoint_step(found) if found is not None else 0


def kill_loop(store: Path, root: Path, kills: int, seed: int, max_steps: int = 60) -> Tally:
    """Start (or resume) a run, kill -9 it at a random moment, check nothing saved was lost; repeat.

    Saves are slowed (debug.save_pause_s) so that a good share of the kills land mid-save. The
    run then finishes unkilled, and its metrics must list every step exactly once.
    """
    rng = random.Random(seed)
    tally = Tally("kill -9 during training at random moments")
    mid_saves = 0
    args = micro_train_args(store, root, **{"train.max_steps": max_steps, "run.checkpoint_every": 3,
                                            "debug.save_pause_s": 0.4, "eval.val_every": 0})
    for _ in range(kills):
        saved_before = newest_intact_step(root)
        resuming = saved_before > 0
        proc = subprocess.Popen(CLI + args + (["--resume", "auto"] if resuming else []),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(3.0, 9.0))  # start-up takes ~3 s on two busy cores: kills land at every stage
        mid_save = any(root.glob("*/checkpoints/.tmp-step-*"))
        mid_saves += mid_save
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
        after = newest_intact_step(root)
        ok = after >= saved_before and "Traceback" not in err
        tally.record(ok, f"kill{' mid-save' if mid_save else ''}: newest intact step {saved_before} -> {after}; {err[-300:]}")
    proc = subprocess.run(CLI + args + (["--resume", "auto"] if newest_intact_step(root) else []),
                          capture_output=True, text=True, timeout=600)
    run = rundir.newest_run(root)
    steps = [r.step for r in rundir.read_metrics(run) if r.kind == "train"]
    complete = proc.returncode == 0 and steps == list(range(1, max_steps + 1))
    tally.record(complete, f"the finishing run: exit {proc.returncode}, steps {steps[:5]}...; {proc.stderr[-300:]}")
    tally.area += f" ({kills} kills, {mid_saves} of them mid-save, then a run to the end)"
    return tally


# ---- corrupt and truncated checkpoints -------------------------------------------------------------------

def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


DAMAGE = {
    "bit flip in model.pth": lambda c: _flip(c / "model.pth"),
    "bit flip in trainer.pt": lambda c: _flip(c / "trainer.pt"),
    "truncated model.pth": lambda c: _truncate(c / "model.pth"),
    "truncated trainer.pt": lambda c: _truncate(c / "trainer.pt"),
    "model.json not JSON": lambda c: (c / "model.json").write_text("{"),
    "model.pth deleted": lambda c: (c / "model.pth").unlink(),
    "latest marker names a missing step": lambda c: (c.parent / "latest").write_text("step-99999999\n"),
}


def corrupt_checkpoints(store: Path, work: Path, kinds: tuple[str, ...] = tuple(DAMAGE)) -> Tally:
    """Each damage to the newest checkpoint of a finished 6-step run, then `--resume`, `generate` and
    `eval`-style loading: the run continues from the newest intact one (or says why not), the
    damaged one is never loaded, nothing intact is deleted."""
    tally = Tally("corrupt or truncated newest checkpoint, then resume and generate")
    for name in kinds:
        damage = DAMAGE[name]
        root = work / "".join(ch if ch.isalnum() else "-" for ch in name)
        args = micro_train_args(store, root, **{"train.max_steps": 6, "run.checkpoint_every": 2})
        first = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300)
        run = rundir.newest_run(root)
        if run is None:
            tally.record(False, f"{name}: the first run did not start (exit {first.returncode}): {first.stderr[-300:]}")
            continue
        newest = run / "checkpoints" / "step-00000006"
        damage(newest)
        resumed = subprocess.run(CLI + args + ["--resume", "auto", "--max-steps", "8"], capture_output=True, text=True, timeout=300)
        intact_left = [p.name for p in rundir.list_checkpoints(run) if rundir.checkpoint_problem(p) is None]
        resumed_from = [r.checkpoint or "" for r in rundir.read_metrics(run) if r.resumed_at is not None]
        expected_from = "step-00000006" if "marker" in name else "step-00000004"  # the newest intact one
        played, peak = peak_run(CLI + ["generate", "--checkpoint", str(run), "--bars", "1", "--max-tokens", "16",
                                       "--out", str(root / "take.mid")])
        ok = (first.returncode == 0 and resumed.returncode == 0 and resumed_from and resumed_from[-1].endswith(expected_from)
              and "step-00000008" in intact_left and played.returncode == 0
              and not any("Traceback" in t for t in (resumed.stderr, played.stderr)))
        tally.peak_mb = max(tally.peak_mb, peak)
        tally.record(ok, f"{name}: resume exit {resumed.returncode} from {resumed_from} ({resumed.stderr.strip()[-200:]}), intact {intact_left}, "
                         f"generate exit {played.returncode}")
    return tally


# ---- hostile MIDI -------------------------------------------------------------------------------------------

def hostile_inputs(work: Path) -> Tally:
    import hostile_midi

    tally = Tally("hostile MIDI through check and generate --prompt")
    files = hostile_midi.write_all(work / "hostile")
    (work / "hostile" / "smpte.mid").write_bytes(hostile_midi.smpte())
    done, peak = peak_run(CLI + ["check", str(work / "hostile"), "--workers", "1"])
    tally.peak_mb = max(tally.peak_mb, peak)
    tally.record(done.returncode in (1, 3) and "Traceback" not in done.stderr and peak < 2048,
                 f"check: exit {done.returncode}, {peak:.0f} MB; {done.stderr[-300:]}")
    for name, path in {**files, "smpte": work / "hostile" / "smpte.mid"}.items():
        begun = time.monotonic()
        done, peak = peak_run(CLI + ["generate", "--prompt", str(path), "--bars", "1", "--max-tokens", "16",
                                     "--out", str(work / f"{name}-take.mid")])
        tally.peak_mb = max(tally.peak_mb, peak)
        expected = 0 if name == "smpte" else 2
        tally.record(done.returncode == expected and "Traceback" not in done.stderr + done.stdout and peak < 2048,
                     f"generate --prompt {name}: exit {done.returncode}, {peak:.0f} MB, {time.monotonic() - begun:.1f} s; "
                     f"{done.stderr.strip()[-200:]}")
    return tally


# ---- double signals during live play ---------------------------------------------------------------------

def signal_trials(work: Path, trials: int, seed: int) -> Tally:
    import mido
    from jack_server import JackServer, MidiReceiver, sounding_after

    from engine.data.tokenizer import PianoTokenizer
    from engine.model import RWKV7, ModelConfig, save_checkpoint

    rng = random.Random(seed)
    tally = Tally("2-6 SIGINT/SIGTERM 20-150 ms apart during live play (real JACK)")
    tok = PianoTokenizer("REMI")
    ckpt = save_checkpoint(RWKV7(ModelConfig(n_layer=2, n_embd=64, head_size=32, vocab_size=tok.vocab_size)),
                           work / "tiny.pth", tokenizer=tok.to_config())
    with JackServer():
        for trial in range(trials):
            receiver = MidiReceiver(f"pm-fault-{trial}")
            out = work / f"live-{trial}.mid"
            proc = subprocess.Popen(CLI + ["generate", "--checkpoint", str(ckpt), "--bars", "64", "--max-tokens", "3000",
                                           "--seed", str(trial), "--midi-api", "jack", "--port", receiver.port_name,
                                           "--lookahead", "0.3", "--out", str(out)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            deadline = time.monotonic() + 60
            while not any(d[0] & 0xF0 == 0x90 for _, d in receiver.received()) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.3, 1.5))
            names = [rng.choice(["SIGINT", "SIGTERM"]) for _ in range(rng.randint(2, 6))]
            for name in names:
                if proc.poll() is None:
                    proc.send_signal(getattr(signal, name))
                time.sleep(rng.uniform(0.02, 0.15))
            output = proc.communicate(timeout=60)[0]
            time.sleep(0.2)
            got = [d for _, d in receiver.received()]
            receiver.close()
            left = sounding_after([d for d in got if not (d[0] & 0xF0 == 0xB0 and d[1] in (120, 123))])
            tally.notes_left += sum(left.values())
            written = out.is_file() and any(m.type == "note_on" for m in mido.MidiFile(out))
            tally.record(not left and written and "Traceback" not in output,
                         f"{'+'.join(names)}: exit {proc.returncode}, {sum(left.values())} notes left, take written {written}")
    return tally


def table(tallies: list[Tally]) -> str:
    lines = ["| faults | tried | survived | notes left sounding | peak memory of a command |", "|---|---|---|---|---|"]
    for t in tallies:
        peak = f"{t.peak_mb:.0f} MB" if t.peak_mb else "-"
        notes = str(t.notes_left) if "live" in t.area else "-"
        lines.append(f"| {t.area} | {t.tried} | {t.survived} | {notes} | {peak} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--signal-trials", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=["kills", "checkpoints", "hostile", "signals"])
    args = ap.parse_args()

    from train_helpers import small_store

    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    tallies = []
    with tempfile.TemporaryDirectory(prefix="pianomuse-faults-") as tmp:
        work = Path(tmp)
        store = small_store()
        if "kills" in args.only:
            tallies.append(kill_loop(store, work / "kills", args.kills, args.seed))
        if "checkpoints" in args.only:
            tallies.append(corrupt_checkpoints(store, work / "ckpt"))
        if "hostile" in args.only:
            tallies.append(hostile_inputs(work))
        if "signals" in args.only:
            tallies.append(signal_trials(work, args.signal_trials, args.seed))
    print(f"# fault suite, {began}, {platform.processor() or platform.machine()}, load {load:.1f}")
    print(table(tallies))
    for t in tallies:
        for failure in t.failures:
            print(f"FAILED {t.area}: {failure}")
    return 0 if all(t.tried == t.survived for t in tallies) else 1


if __name__ == "__main__":
    raise SystemExit(main())
