"""A training run's folder: the one module that knows its layout and its rules.

Both faces and the trainer call this module for everything about a run folder: where each file
lives, which checkpoints exist and which of them are intact, where ``--resume`` continues, which
run is the newest, how to ask a run to stop, who holds a run, and how to read its metrics::

    runs/<YYYYmmdd-HHMMSS>-<name>/
      config.toml            the resolved TrainConfig (written when the run starts or resumes)
      env.json               the software and hardware the run used
      metrics.jsonl          one record per line, appended (``MetricRecord``)
      run.lock               held (``filelock``) by the one trainer writing this run
      control/stop           created to ask the trainer to save and stop at the next step
      control/owner.json     who holds run.lock (process, host, since when)
      checkpoints/step-XXXXXXXX/{model.pth, model.json, trainer.pt}
      checkpoints/latest     the name of the newest checkpoint
      auditions/step-XXXXXXXX.mid

A checkpoint is published by renaming a finished temporary folder, and its sidecar (model.json)
holds the SHA-256 of model.pth and trainer.pt, so a damaged file is found before anything is
loaded or pruned. Resuming continues the newest intact checkpoint of the run asked for, or
stops with one sentence saying why it cannot; it never picks another run.

Nothing here imports torch at module level: the app lists runs and tails metrics with it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import tomllib
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from engine.atomic import file_sha256, fsync_dir, fsync_file, write_atomic
from engine import paths
from engine.metric_records import MetricRecord, StatusRecord, TrainRecord, parse_record

CONFIG = "config.toml"
ENV = "env.json"
METRICS = "metrics.jsonl"
LOCK = "run.lock"
CONTROL = "control"
STOP = "stop"
OWNER = "owner.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_STEM = "model"
WEIGHTS = f"{MODEL_STEM}.pth"
SIDECAR = f"{MODEL_STEM}.json"
TRAINER_STATE = "trainer.pt"
AUDITIONS = "auditions"
DAMAGED_PREFIX = ".damaged-"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
# what a trainer leaves in a run folder; a folder holding anything else is never removed
_TRAINER_FILES = {CONFIG, ENV, METRICS, LOCK, CONTROL, CHECKPOINTS, AUDITIONS, "tensorboard"}


class RunError(RuntimeError):
    """A run folder cannot be used as asked (one sentence saying why and what to do)."""



class RunBusy(RunError):
    """Another trainer holds the run."""


# ---- names -------------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_step(path: Path) -> int | None:
    match = _STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


def stop_file(run_dir: Path) -> Path:
    return Path(run_dir) / CONTROL / STOP


def audition_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / AUDITIONS / f"{checkpoint_name(step)}.mid"


def is_run_dir(path: Path) -> bool:
    """A folder a trainer made: it has its config.toml or its metrics.jsonl."""
    path = Path(path)
    return (path / CONFIG).is_file() or (path / METRICS).is_file()


def new_run_dir(root: Path, name: str) -> Path:
    """A fresh ``<UTC stamp>-<name>`` folder under ``root`` (a ``-2``, ``-3`` suffix if taken)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{name}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


# ---- runs in a folder ------------------------------------------------------------------------------

def _activity(run: Path) -> float:
    """When a run last started or wrote: its newest of folder, config.toml and metrics.jsonl."""
    times = []
    for p in (run, run / CONFIG, run / METRICS):
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def runs_in(root: Path) -> list[Path]:
    """The run folders directly under ``root``, least recently active first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_run_dir(p)]
    return sorted(runs, key=lambda p: (_activity(p), p.name))


def newest_run(root: Path) -> Path | None:
    """``root`` itself if it is a run, else the run under it that started or wrote last."""
    root = Path(root)
    if is_run_dir(root):
        return root
    runs = runs_in(root)
    return runs[-1] if runs else None


# ---- checkpoints -------------------------------------------------------------------------------------

def is_complete(ckpt_dir: Path) -> bool:
    ckpt_dir = Path(ckpt_dir)
    return (ckpt_dir / WEIGHTS).is_file() and (ckpt_dir / SIDECAR).is_file() and (ckpt_dir / TRAINER_STATE).is_file()


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (intact or not: see ``checkpoint_problem``)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None and is_complete(p)]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, or the newest complete one if the marker is missing or stale.

    This reads names only (cheap, for listings); ``newest_intact_checkpoint`` also checks the files.
    """
    root = Path(run_dir) / CHECKPOINTS
    marker = root / LATEST
    if marker.is_file():
        named = root / marker.read_text().strip()
        if named.is_dir() and is_complete(named):
            return named
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


_verified: dict[tuple, str | None] = {}  # (folder, sizes, mtimes) -> problem; a file that changes is checked again


def checkpoint_problem(ckpt_dir: Path) -> str | None:
    """Why checkpoint folder ``ckpt_dir`` cannot be used (a short phrase), or None if it is intact.

    Checked against the SHA-256 sums in its sidecar; a checkpoint written before the sums existed
    is checked with the CRC-32 of every record in its zip files instead.
    """
    ckpt_dir = Path(ckpt_dir)
    files = [ckpt_dir / WEIGHTS, ckpt_dir / SIDECAR, ckpt_dir / TRAINER_STATE]
    try:
        stats = [f.stat() for f in files]
    except OSError:
        return "it is incomplete (model.pth, model.json or trainer.pt is missing)"
    key = (str(ckpt_dir.resolve()), tuple((s.st_size, s.st_mtime_ns) for s in stats))
    if key not in _verified:
        _verified[key] = _check_files(ckpt_dir)
    return _verified[key]


def _check_files(ckpt_dir: Path) -> str | None:
    try:
        sidecar = json.loads((ckpt_dir / SIDECAR).read_text())
    except (OSError, ValueError):
        return "its model.json is not readable JSON"
    sums = sidecar.get("sha256") if isinstance(sidecar, dict) else None
    for name, key in ((WEIGHTS, "weights"), (TRAINER_STATE, TRAINER_STATE)):
        path = ckpt_dir / name
        if isinstance(sums, dict) and isinstance(sums.get(key), str):
            if file_sha256(path) != sums[key]:
                return f"its {name} does not match the checksum in model.json (the file is damaged)"
        else:
            problem = _zip_problem(path)
            if problem:
                return f"its {name} {problem}"
    return None


def _zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return "is truncated or not a PyTorch file"
    return f"is damaged (record {bad} fails its CRC check)" if bad else None


@dataclass(frozen=True)
class IntactCheckpoint:
    path: Path | None  # the newest checkpoint folder whose files check out, or None
    damaged: tuple[tuple[Path, str], ...] = ()  # newer ones that did not, with the reason

    def note(self) -> str:
        """One sentence about the damaged ones skipped ("" when none were)."""
        if not self.damaged:
            return ""
        skipped = "; ".join(f"{p.name}: {why}" for p, why in self.damaged)
        target = f"using {self.path.name}, the newest intact one" if self.path else "no intact checkpoint is left"
        return f"skipped damaged checkpoint(s) ({skipped}); {target}"


def newest_intact_checkpoint(run_dir: Path) -> IntactCheckpoint:
    """The newest checkpoint of a run that passes ``checkpoint_problem``, and the newer damaged ones."""
    candidates = list_checkpoints(run_dir)
    named = latest_checkpoint(run_dir)
    if named is not None and named in candidates:  # `latest` first, then the others newest first
        candidates.remove(named)
        candidates.append(named)
    damaged = []
    for ckpt in reversed(candidates):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return IntactCheckpoint(ckpt, tuple(damaged))
        damaged.append((ckpt, problem))
    return IntactCheckpoint(None, tuple(damaged))


def set_aside(damaged: Iterable[Path]) -> list[Path]:
    """Rename damaged checkpoint folders out of the step sequence (kept for inspection, never loaded or pruned)."""
    moved = []
    for ckpt in damaged:
        target = ckpt.with_name(f"{DAMAGED_PREFIX}{ckpt.name}")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(ckpt, target)
        moved.append(target)
    return moved


def write_checkpoint(run_dir: Path, step: int, write_model: Callable[[Path, dict], object], trainer_state: dict,
                     keep: int = 3, pause_s: float = 0.0) -> Path:
    """Write checkpoint ``step`` atomically and return its folder.

    ``write_model(stem, sums)`` writes ``stem.pth`` and its sidecar ``stem.json`` holding ``sums``
    (the SHA-256 of trainer.pt, which is written first) beside the weights' own sum. The folder
    is renamed into place only when complete and synced; ``latest`` is then replaced atomically,
    the new checkpoint is read back against its sums, and only then are old ones pruned.
    """
    import torch  # the listing functions above stay torch-free

    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        torch.save(trainer_state, tmp / TRAINER_STATE)
        write_model(tmp / MODEL_STEM, {TRAINER_STATE: file_sha256(tmp / TRAINER_STATE)})
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
        if pause_s > 0:  # fault injection: a window in which tests kill or interrupt the process mid-save
            time.sleep(pause_s)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays the latest
        raise
    if final.exists():  # saving the same step twice (stop right after a periodic save)
        old = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    write_atomic(root / LATEST, final.name + "\n", durable=True)
    if checkpoint_problem(final) is None:  # never prune on the strength of a checkpoint that does not read back
        prune_checkpoints(run_dir, keep, protect=(final,))
    return final


def prune_checkpoints(run_dir: Path, keep: int, protect: Iterable[Path] = ()) -> None:
    """Keep the newest ``keep`` checkpoints plus ``protect`` and the one ``latest`` names."""
    spared = {Path(p) for p in protect} | {latest_checkpoint(run_dir)}
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if old not in spared:
            shutil.rmtree(old, ignore_errors=True)


def sweep_leftovers(run_dir: Path) -> list[Path]:
    """Remove what killed saves left in ``checkpoints/`` (temporary and replaced folders and markers).

    Only safe while holding the run's lock: then no other process is writing there.
    """
    root = Path(run_dir) / CHECKPOINTS
    removed = []
    for stale in [*root.glob(".tmp-*"), *root.glob(".old-*"), *root.glob(f".{LATEST}.tmp-*")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def load_trainer_state(ckpt_dir: Path) -> dict:
    """The optimizer, schedule, RNG and data position saved with a checkpoint."""
    import torch

    path = Path(ckpt_dir) / TRAINER_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 (torch raises many kinds for a bad file)
        raise RunError(f"cannot read {path} ({type(exc).__name__}): the file is damaged; resume from an "
                       "earlier checkpoint with --resume PATH") from None


# ---- resuming ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResumePoint:
    run_dir: Path
    checkpoint: Path
    note: str = ""  # one sentence when damaged checkpoints were skipped
    damaged: tuple[Path, ...] = ()


def resume_run(spec: str, run_root: Path) -> Path:
    """The run folder ``--resume auto|PATH`` names (checked for existence only; cheap)."""
    if spec == "auto":
        run = newest_run(run_root)
        if run is None:
            raise RunError(f"there is no run to resume in {run_root}; start a new run without --resume, or pass "
                           "--run-dir pointing at the folder that holds your runs")
        return run
    path = Path(spec)
    if checkpoint_step(path) is not None and path.parent.name == CHECKPOINTS and path.is_dir():
        return path.parent.parent
    if path.is_dir() and is_run_dir(path):
        return path
    raise RunError(f"{path} is neither a run directory nor a checkpoint folder; pass --resume auto or a path under runs/")


def find_resume_point(spec: str, run_root: Path) -> ResumePoint:
    """Where ``--resume auto|PATH`` continues, or a RunError saying why it cannot.

    ``auto`` is the newest run in ``run_root`` (or ``run_root`` itself when it is a run); PATH is
    a run folder or one of its checkpoint folders. A run continues from its newest intact
    checkpoint; damaged newer ones are named in ``note``. The run asked for is never swapped for
    another one, and nothing is written here.
    """
    run = resume_run(spec, run_root)
    path = Path(spec)
    if spec != "auto" and checkpoint_step(path) is not None and path.parent.name == CHECKPOINTS:
        if not is_complete(path):
            raise RunError(f"checkpoint {path} is incomplete; pass the run folder {run} to resume its newest complete one")
        problem = checkpoint_problem(path)
        if problem is not None:
            raise RunError(f"checkpoint {path} cannot be resumed: {problem}; {_intact_hint(run)}")
        return ResumePoint(run, path)
    intact = newest_intact_checkpoint(run)
    if intact.path is None:
        if intact.damaged:
            raise RunError(f"run {run} cannot be resumed: {intact.note()}; start a new run without --resume")
        raise RunError(f"run {run} has no checkpoint yet (it stopped before its first save), so there is nothing to "
                       f"resume; start a new run without --resume, or pass --resume PATH of another run")
    return ResumePoint(run, intact.path, intact.note(), tuple(p for p, _ in intact.damaged))


def _intact_hint(run: Path) -> str:
    intact = newest_intact_checkpoint(run)
    if intact.path is None:
        return f"run {run} has no intact checkpoint"
    return f"the newest intact checkpoint of the run is {intact.path}"


# ---- the run lock -------------------------------------------------------------------------------------------

class RunLock:
    """The one trainer writing a run holds ``run.lock`` (a ``filelock`` lock, released by the OS if
    the process dies); ``control/owner.json`` says who that is, for the message others get."""

    def __init__(self, run_dir: Path) -> None:
        from filelock import FileLock  # only trainers need it

        self.run_dir = Path(run_dir)
        self._lock = FileLock(str(self.run_dir / LOCK), timeout=0)

    def acquire(self) -> "RunLock":
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise RunBusy(f"run {self.run_dir} is in use by {describe_owner(self.run_dir)}; stop that trainer first "
                          "(or wait for it to finish), or start a new run") from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3)}
        write_atomic(self.run_dir / CONTROL / OWNER, json.dumps(owner) + "\n")
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            (self.run_dir / CONTROL / OWNER).unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def describe_owner(run_dir: Path) -> str:
    """"process 1234 on host, since 06:10:05 UTC" from control/owner.json (or "another process")."""
    try:
        owner = json.loads((Path(run_dir) / CONTROL / OWNER).read_text())
        since = datetime.fromtimestamp(float(owner["since"]), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"process {int(owner['pid'])} on {owner['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _owner_pid(run_dir: Path) -> int | None:
    try:
        return int(json.loads((Path(run_dir) / CONTROL / OWNER).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_held_by(root: Path, pid: int) -> Path | None:
    """The run (``root`` itself or a folder in it) whose lock process ``pid`` took."""
    root = Path(root)
    candidates = [root, *(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    return next((run for run in candidates if _owner_pid(run) == pid), None)


def is_locked(run_dir: Path) -> bool:
    """Whether a live trainer holds the run (tries the lock without waiting)."""
    if not (Path(run_dir) / LOCK).exists():
        return False
    lock = RunLock(run_dir)
    try:
        lock._lock.acquire()
    except Exception:  # noqa: BLE001 (filelock.Timeout: someone holds it)
        return True
    lock._lock.release()
    return False


def tidy_siblings(root: Path, keep: Path) -> list[str]:
    """Clean the unlocked runs beside ``keep`` in ``root``; returns one line per thing removed.

    Killed saves leave temporary checkpoint folders (removed); a run killed before its first
    checkpoint leaves a folder nothing can resume (removed when it holds only trainer files).
    """
    lines = []
    for run in runs_in(root):
        if run == keep or is_locked(run):
            continue
        with RunLock(run):
            leftovers = sweep_leftovers(run)
            if leftovers:
                lines.append(f"removed {len(leftovers)} unfinished save(s) left in {run / CHECKPOINTS}")
            orphan = (not list_checkpoints(run) and not any((run / CHECKPOINTS).glob(f"{DAMAGED_PREFIX}*"))
                      and {p.name for p in run.iterdir()} <= _TRAINER_FILES)
        if orphan:
            shutil.rmtree(run, ignore_errors=True)
            lines.append(f"removed run folder {run}: it stopped before its first checkpoint, so nothing in it could be resumed")
    return lines


# ---- stopping ------------------------------------------------------------------------------------------------

def request_stop(run_dir: Path) -> Path:
    """Ask the trainer of ``run_dir`` to save and exit at the next step boundary."""
    stop = stop_file(run_dir)
    stop.parent.mkdir(parents=True, exist_ok=True)
    stop.touch()
    return stop


def stop_requested(run_dir: Path) -> bool:
    return stop_file(run_dir).exists()


def clear_stop(run_dir: Path) -> None:
    stop_file(run_dir).unlink(missing_ok=True)


# ---- metrics ---------------------------------------------------------------------------------------------------

ARTIFACT_KINDS = ("checkpoint", "audition")


def drop_redone(records: Iterable[MetricRecord]) -> list[MetricRecord]:
    """The records without the steps a resumed run did again.

    A trainer killed after step N but resumed from checkpoint M < N logs steps M+1..N twice;
    its first record on resuming marks M (``resumed_at``), and the records before that marker
    with a later step are the ones the run went back over.
    """
    out: list[MetricRecord] = []
    for rec in records:
        mark = rec.resumed_at
        if mark is not None:
            out = [r for r in out if r.step <= mark]
        out.append(rec)
    return out


def _parse_lines(lines: Iterable[bytes | str]) -> tuple[list[MetricRecord], int]:
    records, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = parse_record(json.loads(line))
        except ValueError:
            rec = None
        if rec is None:
            bad += 1
        else:
            records.append(rec)
    return records, bad


def read_metrics(path: Path) -> list[MetricRecord]:
    """The complete records of a metrics.jsonl (or a run folder's), re-done steps dropped."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    records, _ = _parse_lines(path.read_text(encoding="utf-8").splitlines())
    return drop_redone(records)


class MetricsTail:
    """Reads the records appended to a run's ``metrics.jsonl`` since the last read.

    A line is only taken once its newline is there, so a record the trainer is half-way through
    writing is read whole on the next poll. Records wait in ``pending`` until the UI drains
    them; a resume marker among them drops the re-done steps still pending, and the reader cuts
    what it already drew after ``MetricRecord.resumed_at``.
    """

    def __init__(self, run_dir: Path) -> None:
        import threading

        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS
        self._offset = 0
        self._partial = b""
        self._lock = threading.Lock()
        self.pending: list[MetricRecord] = []
        self.bad_lines = 0
        # running counts, so the watcher knows when to read the run's files again without
        # looking into the records the UI drains
        self.records_read = 0
        self.artifact_records = 0  # "checkpoint" and "audition" records: new files in the run

    def poll(self) -> int:
        """Read what was appended; return how many new records are waiting."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return len(self.pending)
        if size < self._offset:  # the file was replaced: read it again from the start
            self._offset, self._partial = 0, b""
        if size == self._offset:
            return len(self.pending)
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(size - self._offset)
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        records, bad = _parse_lines(lines)
        self.bad_lines += bad
        self.records_read += len(records)
        self.artifact_records += sum(r.kind in ARTIFACT_KINDS for r in records)
        with self._lock:
            self.pending = drop_redone([*self.pending, *records])
            return len(self.pending)

    def drain(self) -> list[MetricRecord]:
        with self._lock:
            records, self.pending = self.pending, []
        return records


class EtaClock:
    """Time left in a run, from its records: the rate since this session of the run began.

    A resumed run logs steps from where it left off while its ``elapsed_s`` starts again at 0, so
    the rate is measured from the last ``started``/``resumed`` status record, never from step 0.
    Both faces feed it the records they read.
    """

    def __init__(self) -> None:
        self.origin: tuple[int, float] | None = None  # (step, elapsed_s) where this session began
        self.latest: tuple[int, float] | None = None

    def feed(self, record: MetricRecord) -> None:
        step, elapsed = record.step, record.elapsed_s
        if isinstance(record, StatusRecord) and record.began:
            self.origin = (step, elapsed)
            self.latest = None
        elif isinstance(record, TrainRecord):
            if self.origin is None:  # a log read from its middle: measure from the first step seen
                self.origin = (step, elapsed)
            self.latest = (step, elapsed)

    def eta_s(self, max_steps: int | None) -> float | None:
        """Seconds until ``max_steps`` at this session's pace; None until two points are known."""
        if not max_steps or self.origin is None or self.latest is None:
            return None
        (s0, e0), (s1, e1) = self.origin, self.latest
        if s1 <= s0 or e1 <= e0:
            return None
        return (e1 - e0) / (s1 - s0) * max(0, max_steps - s1)


# ---- what the Train pane shows of a run's folder ---------------------------------------------------------

@dataclass
class CheckpointEntry:
    name: str
    path: Path  # the model .pth
    step: int | None


@dataclass
class RunFiles:
    """A run's folder besides its metrics, read in one go off the UI thread."""

    run_dir: Path
    config: dict
    checkpoints: list[CheckpointEntry]  # newest first
    auditions: list[Path]  # newest first

    @property
    def max_steps(self) -> int | None:
        value = (self.config.get("train") or {}).get("max_steps")
        return int(value) if isinstance(value, int) else None

    @property
    def model_line(self) -> str:
        model = self.config.get("model") or {}
        if not model:
            return ""
        preset = self.config.get("preset") or "custom"
        return f"preset {preset} (L{model.get('n_layer')} D{model.get('n_embd')} {model.get('arch')})"


def read_config(run_dir: Path) -> dict:
    """The run's resolved ``config.toml``, or {} while it is missing or half-written."""
    try:
        return tomllib.loads((Path(run_dir) / CONFIG).read_text())
    except (OSError, ValueError):
        return {}


def audition_step(path: Path) -> int | None:
    """The step of an audition file (``auditions/step-XXXXXXXX.mid``), or None for another name."""
    return checkpoint_step(Path(path).with_suffix(""))


def list_auditions(run_dir: Path) -> list[Path]:
    files = (Path(run_dir) / AUDITIONS).glob("*.mid")
    return sorted(files, key=lambda p: (audition_step(p) or -1, p.name), reverse=True)


def read_run_files(run_dir: Path) -> RunFiles:
    entries = [CheckpointEntry(p.name, p / WEIGHTS, checkpoint_step(p)) for p in reversed(list_checkpoints(run_dir))]
    return RunFiles(Path(run_dir), read_config(run_dir), entries, list_auditions(run_dir))


# ---- a --checkpoint argument -----------------------------------------------------------------------------

def bundled_checkpoint() -> Path | None:
    """The bundled model (``assets/models/*.pth`` with its sidecar ``.json``), or None if there is none.

    With several bundled checkpoints the first by name wins, so the choice is stable. A ``.pth``
    without its sidecar is not a bundled model: it carries no tokenizer to generate with.
    """
    if not paths.MODELS_DIR.is_dir():
        return None
    for pth in sorted(paths.MODELS_DIR.glob("*.pth")):
        if pth.with_suffix(".json").is_file():
            return pth
    return None


def marked_checkpoint(folder: Path) -> Path | None:
    """The checkpoint folder a run folder's (or a checkpoints/ folder's) ``latest`` marker names."""
    for root in (Path(folder) / CHECKPOINTS, Path(folder)):
        marker = root / LATEST
        if marker.is_file():
            name = marker.read_text().strip()
            return Path(name) if Path(name).is_absolute() else root / name
    return None


def resolve_checkpoint(path: str | Path | None, error: type[Exception] = FileNotFoundError,
                       on_note: Callable[[str], None] | None = None) -> Path:
    """The checkpoint ``.pth`` that a ``--checkpoint`` argument names; ``None`` means the bundled model.

    ``path`` may be a ``.pth`` file (or its name without the suffix, as ``save_checkpoint`` takes it),
    a checkpoint folder holding ``model.pth``, a training run folder (its newest intact
    checkpoint; ``on_note`` hears about damaged newer ones skipped) or a run's ``checkpoints/``
    folder. Anything else raises ``error`` (the caller's own user-error type) with one sentence.
    """
    if path is None:
        bundled = bundled_checkpoint()
        if bundled is None:
            raise error("there is no bundled model in assets/models/ and no --checkpoint was given; pass "
                        "--checkpoint PATH (a .pth file, a checkpoint folder or a training run folder).")
        return bundled
    path = Path(path)
    if path.is_dir():
        if (path / WEIGHTS).is_file():
            return path / WEIGHTS
        run = path.parent if path.name == CHECKPOINTS else path
        intact = newest_intact_checkpoint(run)
        if intact.path is not None:
            if intact.damaged and on_note is not None:
                on_note(intact.note())
            return intact.path / WEIGHTS
        if intact.damaged:
            raise error(f"there is no intact checkpoint in {path}: {intact.note()}; pass another checkpoint")
        named = marked_checkpoint(path)
        if named is not None and (named / WEIGHTS).is_file():
            return named / WEIGHTS
        raise error(f"there is no checkpoint at {path}: the folder holds none; pass a .pth file, a checkpoint "
                    "folder or a training run folder with checkpoints/ in it.")
    if path.is_file():
        return path
    with_suffix = path.with_name(path.name + ".pth")
    if path.suffix != ".pth" and with_suffix.is_file():
        return with_suffix
    raise error(f"there is no checkpoint at {path}: it does not exist; pass a .pth file, a checkpoint folder "
                "or a training run folder.")


def damaged_hint(pth: Path) -> str:
    """For a damaged checkpoint inside a run: where the newest intact one of that run is ("" otherwise)."""
    ckpt = Path(pth).parent
    if checkpoint_step(ckpt) is None or ckpt.parent.name != CHECKPOINTS:
        return ""
    intact = newest_intact_checkpoint(ckpt.parent.parent)
    if intact.path is None or intact.path == ckpt:
        return ""
    return f"; the newest intact checkpoint of that run is {intact.path}"

