"""`pianomuse-tui --headless eval`: likelihood and musical metrics of a checkpoint on held-out music."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .console import console, err_console, fail

STAGE_LABELS = {
    "likelihood": "likelihood of validation pieces",
    "generate": "generating continuations (tokens)",
    "overlap": "indexing training notes",
    "baseline": "fitting the n-gram baseline",
}


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _mean_std(summary: dict) -> str:
    if not summary or summary.get("n", 0) == 0:
        return "-"
    return f"{_num(summary['mean'], 2)} ± {_num(summary['std'], 2)}"


def report_tables(report: dict) -> list[Table]:
    """The report as rich tables: likelihood, distributions, validity and memorisation."""
    lik = report["likelihood"]
    t1 = Table(title=f"Likelihood on the validation split ({_num(lik['pieces'])} pieces, {_num(lik['seconds'], 1)} s of music)",
               title_justify="left")
    t1.add_column("")
    for col in ("nats/tok", "bits/tok", "bits/note", "bits/s", "tokens", "notes"):
        t1.add_column(col, justify="right")
    t1.add_row("model", _num(lik["nats_per_token"]), _num(lik["bits_per_token"]), _num(lik["bits_per_note"]),
               _num(lik["bits_per_second"], 1), _num(lik["tokens"]), _num(lik["notes"]))
    base = report.get("baseline")
    if base:
        t1.add_row(f"{base['order']}-gram", _num(base["bits_per_token"] * math.log(2)), _num(base["bits_per_token"]),
                   _num(base["bits_per_note"]), _num(base["bits_per_second"], 1))
        t1.caption = (f"n-gram: interpolated Kneser-Ney on the training pieces (transposed +-{base['transpose_range']}, "
                      f"order chosen on held-out training pieces); model / n-gram bits per note: "
                      f"{_num(base['model_over_baseline'], 2)}")
    tables = [t1]
    breakdown = report.get("breakdown") or {}
    if breakdown.get("model"):
        t_kind = Table(title="Where the bits go (bits per note of the validation split)", title_justify="left")
        t_kind.add_column("token kind / style")
        t_kind.add_column("model", justify="right")
        t_kind.add_column("n-gram", justify="right")
        other = breakdown.get("baseline") or {"kinds": {}, "styles": {}}
        for kind, entry in breakdown["model"]["kinds"].items():
            t_kind.add_row(kind, _num(entry["bits_per_note"], 2), _num(other["kinds"].get(kind, {}).get("bits_per_note"), 2))
        for style, entry in breakdown["model"]["styles"].items():
            t_kind.add_row(f"style {style} ({entry['pieces']} pieces)", _num(entry["bits_per_note"], 2),
                           _num(other["styles"].get(style, {}).get("bits_per_note"), 2))
        tables.append(t_kind)

    cont = report["continuations"]
    opts = report.get("options", {})
    t2 = Table(title=f"{cont['samples']} generated continuations vs the real ones "
                     f"({opts.get('prompt_bars', '?')} bars of prompt, {opts.get('bars', '?')} bars continued)",
               title_justify="left")
    for col, justify in (("distribution", "left"), ("real", "right"), ("generated", "right"),
                         ("OA", "right"), ("KL nats", "right")):
        t2.add_column(col, justify=justify)
    for name, entry in cont["features"].items():
        t2.add_row(name.replace("_", " "), _mean_std(entry["real"]), _mean_std(entry["generated"]),
                   _num(entry["oa"]), _num(entry["kl_nats"]))
    for name, entry in cont["histograms"].items():
        t2.add_row(f"{name.replace('_', ' ')} hist.", "", "", _num(entry["oa"]), _num(entry["kl_nats"]))
    t2.caption = "OA: overlapping area (1 = same distribution); KL(real || generated) in nats (0 = same)"

    val, ov = report["validity"], report["training_overlap"]
    t3 = Table(title="Validity and memorisation", title_justify="left")
    t3.add_column("check")
    t3.add_column("value", justify="right")
    t3.add_column("detail")
    grammar = "grammar-constrained sampling" if val["grammar_constrained"] else "free sampling"
    t3.add_row("invalid-token rate", _num(val["invalid_token_rate"], 4),
               f"{val['invalid_tokens']} of {val['tokens']} tokens, {val['decode_failures']} failed to decode ({grammar})")
    t3.add_row("stuck-note rate", _num(val["stuck_note_rate"], 4),
               f"{val['notes_unreleased']} never released + {val['notes_too_long']} held > {val['stuck_note_limit_s']:g} s, "
               f"of {val['notes_started']} notes")
    gen, real = ov["generated"], ov["real"]
    t3.add_row("longest copied run (generated)", _num(gen["longest_copied_notes"]),
               f"notes ({ov['symbols']}) from {Path(gen['source']).name if gen['source'] else '-'}; "
               f"mean {_num(gen['mean_copied_notes'], 1)}")
    t3.add_row("longest copied run (real)", _num(real["longest_copied_notes"]),
               f"the real continuations, for scale; mean {_num(real['mean_copied_notes'], 1)}")
    if "any_key" in ov:
        moved = ov["any_key"]
        t3.add_row("longest copied run in any key", _num(moved["generated"]["longest_copied_notes"]),
                   f"intervals, so transposed copies count; real continuations {_num(moved['real']['longest_copied_notes'])}")
    bars = report.get("continuation_bars")
    if bars:
        t3.add_row("--bars honoured", f"{bars['honoured']}/{bars['samples']}", f"continuations that reached {bars['requested']} bars")
    tables += [t2, t3]
    structure = report.get("structure")
    if structure:
        t4 = Table(title="Structure of the continuations (real / generated)", title_justify="left")
        t4.add_column("")
        for col in ("2-bar self-reuse", "key correlation (4 bars)", "notes in key", "samples"):
            t4.add_column(col, justify="right")
        rows = [("all", structure)] + [(f"style {k}", v) for k, v in structure.get("styles", {}).items()]
        for label, entry in rows:
            t4.add_row(label, *(f"{_num(entry['real'][n], 2)} / {_num(entry['generated'][n], 2)}"
                                for n in ("self_reuse", "key_correlation", "in_key_share")), _num(entry["samples"]))
        tables.append(t4)
    goals = report.get("goals")
    if goals:
        t5 = Table(title="Goals of the bundled model", title_justify="left")
        for col in ("goal", "value", "target", "met"):
            t5.add_column(col)
        for name, entry in goals.items():
            t5.add_row(name.replace("_", " "), _num(entry["value"], 3), entry["goal"], "yes" if entry["met"] else "no")
        tables.append(t5)
    return tables


class PlainStageLines:
    """Progress of each stage as plain lines on stderr: the first, every tenth and the last."""

    def __init__(self) -> None:
        import time

        self._clock = time.monotonic
        self._began: dict[str, float] = {}
        self._next: dict[str, int] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        began = self._began.setdefault(label, self._clock())
        if done < self._next.get(label, 0) and done != total:
            return
        self._next[label] = done + max(1, total // 10)
        err_console.print(f"eval: {label} {done}/{total} ({self._clock() - began:.0f} s)", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""

    @app.command("eval")
    def eval_command(
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint .pth (or a run folder); default: the bundled model in assets/models/."),
        data: Optional[Path] = typer.Option(None, "--data", help="Token store, or a folder of MIDI files to prepare; default: the bundled corpus."),
        samples: int = typer.Option(16, "--samples", help="Continuations to generate and compare with the real ones."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write every number to this JSON file, and the plot beside it (.png)."),
        prompt_bars: int = typer.Option(4, "--prompt-bars", help="Bars of each validation piece given as the prompt."),
        bars: int = typer.Option(8, "--bars", help="Bars to continue (and of real music to compare with)."),
        seed: int = typer.Option(0, "--seed", help="Seed for choosing prompts and for sampling."),
        temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
        top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling threshold (1 = off)."),
        grammar: bool = typer.Option(True, "--grammar/--no-grammar", help="Constrain sampling to the token grammar (off: measure the raw model's invalid tokens)."),
        max_tokens: int = typer.Option(200_000, "--max-tokens", help="Validation tokens scored for the likelihood (0 = all)."),
        device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
        threads: int = typer.Option(0, "--threads", help="CPU threads for torch (0 = torch's default; 1 is often fastest for small models on a busy machine)."),
        baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Fit the Kneser-Ney n-gram baseline on the training pieces (about a minute for the demo corpus)."),
        transpose_range: Optional[int] = typer.Option(None, "--transpose-range", help="Transposition augmentation of the baseline, semitones either way (default: what the checkpoint was trained with, else 6)."),
    ) -> None:
        """Score a checkpoint: likelihood (bits/note), continuations vs real music, validity, memorisation."""
        from engine.eval.report import EvalOptions

        for name, value, low in (("--samples", samples, 1), ("--prompt-bars", prompt_bars, 1), ("--bars", bars, 1),
                                 ("--max-tokens", max_tokens, 0), ("--threads", threads, 0),
                                 ("--transpose-range", 0 if transpose_range is None else transpose_range, 0)):
            if value < low:
                fail(f"{name} must be at least {low}; got {value}.")
        if temperature <= 0 or not 0 < top_p <= 1:
            fail(f"--temperature must be above 0 and --top-p in (0, 1]; got {temperature} and {top_p}.")
        if json_out is not None and json_out.is_dir():
            fail(f"--json {json_out} is a folder; give a file name such as {json_out / 'eval.json'}.")
        options = EvalOptions(samples=samples, prompt_bars=prompt_bars, bars=bars, seed=seed, temperature=temperature,
                              top_p=top_p, grammar=grammar, max_likelihood_tokens=max_tokens or None, baseline=baseline)

        import torch

        threads_before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            run_eval(checkpoint, data, device, options, json_out, transpose_range)
        finally:
            torch.set_num_threads(threads_before)  # the command may run inside a longer-lived process


def run_eval(checkpoint: Path | None, data: Path | None, device: str, options, json_out: Path | None,
             transpose_range: int | None = None) -> None:
    """Load, evaluate, write the files, print the tables; user errors end in one sentence."""
    from engine.eval.report import evaluate, write_report
    from engine.eval.sources import EvalError, load_eval_inputs

    if not err_console.is_terminal:
        err_console.print("eval: loading the checkpoint and the data", highlight=False, markup=False)
    try:
        with err_console.status("loading the checkpoint and the data") as status:
            def on_prepare(done: int, total: int, record: dict) -> None:
                status.update(f"preparing the data with the checkpoint's tokenizer: {done}/{total} files")

            model, eval_data, ckpt_path = load_eval_inputs(checkpoint, data, device=device, on_progress=on_prepare)
    except EvalError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted while loading; nothing was evaluated or written.", code=130)

    options.transpose_range = next(r for r in (transpose_range, eval_data.trained_transpose_range, 6) if r is not None)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=err_console, transient=True)
    tasks: dict[str, int] = {}

    plain = PlainStageLines()  # rich draws no bar into a pipe: plain lines there, as check prints

    def on_progress(stage: str, done: int, total: int) -> None:
        if not err_console.is_terminal:
            plain(STAGE_LABELS.get(stage, stage), done, total)
            return
        if stage not in tasks:
            tasks[stage] = progress.add_task(STAGE_LABELS.get(stage, stage), total=max(total, 1))
        progress.update(tasks[stage], completed=done, total=max(total, 1))

    try:
        with progress:
            report = evaluate(model, eval_data, options, on_progress=on_progress)
    except ValueError as exc:  # GenerationError and evaluate's own checks: one sentence each
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; nothing was written (run again, perhaps with fewer --samples or --max-tokens).", code=130)
    report["checkpoint"] = str(ckpt_path)
    report["model"] = {**model.config.to_dict(), "parameters": model.parameter_count()}

    written, write_error = None, None
    if json_out is not None:
        try:
            written = write_report(report, json_out)
        except OSError as exc:
            write_error = f"could not write {json_out} ({exc.strerror}); the results are printed above, pick another --json path."
    console.print(f"checkpoint {ckpt_path}  ({model.config.describe()})")
    console.print(f"data {eval_data.description}")
    for table in report_tables(report):
        console.print(table)
    if written:
        console.print(f"wrote {written[0]} and {written[1]}")
    if write_error:
        fail(write_error, code=1)
