"""`pianomuse-tui [--headless] generate` and `pianomuse-tui --headless ports`.

generate: continue a prompt (or start from nothing) with a checkpoint, K alternatives at once.
Without a port it writes the files as fast as it can; with --port/--virtual/--synth (or --play) it
plays alternative 1 live while writing all of them; with --in it plays with you. Ctrl-C stops
cleanly: every sounding note is released and what was generated so far is written.
The take is the engine's (``engine.generate.performance.Performance.take``, the object the
Generate pane plays); this module checks the options, prints what the take reports and maps its
end reason to the exit status: 0 done, 130 interrupted by Ctrl-C, SIGTERM or SIGHUP (files
written), 2 bad input, 3 the MIDI port was lost for good.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .console import console, err_console, fail


def run_generate(
    checkpoint: Path | None,
    prompt: Path | None,
    prompt_bars: str | None,
    bars: int | None,
    max_tokens: int | None,
    alternatives: int,
    sampling_kwargs: dict,
    out: Path | None,
    play: bool,
    choice,
    threads: int,
    allow_early_end: bool = False,
    midi_in: str | None = None,
    duet=None,
) -> int:
    """Check the options, run the take through the engine's one take lifecycle, print what it
    reports; the exit status."""
    from engine.generate import DEFAULT_BARS, KnobSettings, SamplingConfig
    from engine.generate.performance import Knobs, Performance, PerformanceSettings

    problem = choice.problem()
    for name, value in (("--bars", bars), ("--max-tokens", max_tokens), ("--alternatives", alternatives)):
        if problem is None and value is not None and value < 1:
            problem = f"{name} must be at least 1, got {value}"  # told before the model loads
    if problem is None and midi_in is not None:
        problem = duet.problem() or ("playing with --in starts from what you play; leave out --prompt" if prompt else None) \
            or ("playing with --in uses one alternative; leave out --alternatives" if alternatives != 1 else None)
    if problem:
        fail(problem)
    if bars is None and max_tokens is None:
        bars = DEFAULT_BARS
    try:
        sampling = SamplingConfig(**sampling_kwargs)
    except ValueError as err:
        fail(str(err))
    settings = PerformanceSettings(
        checkpoint=checkpoint, prompt=prompt, prompt_bars=prompt_bars, output=choice,
        play=midi_in is not None or play or bool(choice.port) or choice.virtual or choice.synth is not None,
        midi_in=midi_in, duet=duet if midi_in is not None else None, sampling=sampling, max_tokens=max_tokens,
        allow_early_end=allow_early_end, threads=threads)
    performance = Performance(settings, Knobs(KnobSettings(alternatives=alternatives, bars=bars)), on_notice=_print_notice)
    end = _take(performance, out)
    if end.generation is not None:
        console.print(_generation_summary(end.generation))
    elif end.telemetry is not None and end.telemetry.duet is not None:
        console.print(_duet_summary(end.telemetry.duet))
    if end.telemetry is not None:
        console.print("timing: " + end.telemetry.scheduler.summary())
    tracks = " (tracks: PianoMuse, You)" if midi_in is not None else ""
    console.print("wrote " + ", ".join(str(p) for p in end.written) + tracks)
    if end.reason == "stopped" and settings.play and midi_in is None:
        console.print("stopped: every note was released")
    return EXIT_CODES[end.reason]


def _take(performance, out: Path | None):
    """The take, in one call into the engine; its errors as one sentence each."""
    from engine.generate import GenerationError
    from engine.generate.performance import TakeInterrupted, TakeWriteError
    from engine.midi import NoMidiSystem, PortError

    duet = performance.settings.midi_in is not None
    try:
        return performance.take(out, on_ready=lambda ready: _print_ready(ready, performance.settings))
    except TakeInterrupted as err:
        fail(f"{err}; nothing was {'played' if duet else 'generated'}.", code=130)
    except TakeWriteError as err:
        fail(f"{err}; give another --out")
    except NoMidiSystem as err:
        if duet:
            fail(str(err))
        fail(f"{err}; or write the music to a file: leave out --play/--port/--virtual and give --out FILE.mid "
             "(--synth builtin plays without a MIDI system).")
    except PortError as err:
        builtin = not duet and performance.settings.output.synth == "builtin" and "sound output" in str(err)
        fail(f"{str(err).rstrip('.')}; or render the take to a file with --out take.wav." if builtin else str(err))
    except GenerationError as err:
        fail(str(err))


def _print_ready(ready, settings) -> None:
    """The engine's ``TakeReady``: which model, and where it plays."""
    if ready.listening is not None:
        duet = settings.duet
        console.print(f"model {ready.checkpoint}; listening on {ready.listening}, playing on {ready.output}; mode "
                      f"{duet.mode} at {duet.tempo:g} qpm (Ctrl-C stops)")
        return
    console.print(f"model {ready.checkpoint} ({ready.model}), {ready.tokenization} tokens"
                  + (f", prompt {settings.prompt} ({ready.prompt_tokens} tokens)" if settings.prompt else ", no prompt"))
    if ready.output is not None:
        console.print(f"playing alternative 1 on {ready.output}, lookahead {ready.lookahead:.2f} s (Ctrl-C stops)")


def _generation_summary(summary) -> str:
    """The engine's ``GenerationSummary`` in one line."""
    per_row = ", ".join(f"#{r + 1}: {row.tokens} tokens, {row.bars} bars, {row.notes} notes ({_stop_words(row, summary)})"
                        for r, row in enumerate(summary.alternatives))
    return (f"generated {summary.tokens} tokens in {summary.seconds:.2f} s ({summary.tokens_per_s:.0f} tokens/s), "
            f"seed {summary.seed}; {per_row}")


def _stop_words(row, summary) -> str:
    words = STOP_WORDS.get(row.stop_reason, "stopped")
    if row.stop_reason == "token_limit":
        words = f"a take's limit of {summary.token_limit:,} tokens reached (--max-tokens sets another)"
    if row.ended_early:
        why = {"eos": "the model ended the piece", "max_tokens": "--max-tokens ran out"}.get(row.stop_reason, words)
        return f"ended early: {why} after {row.bars} of {summary.bars} bars"
    return words


STOP_WORDS = {"bars": "done", "eos": "the model ended the piece", "max_tokens": "--max-tokens reached"}  # why an alternative ended


def _duet_summary(timing) -> str:
    """The engine's ``DuetTiming`` at the end of a duet, in one line."""
    told = (f"the model's first note came {timing.median_answer_ms:.0f} ms (median), at most "
            f"{timing.slowest_answer_ms:.0f} ms after each handover" if timing.median_answer_ms is not None else "no handover")
    n = timing.handovers
    return (f"{n} handover{'' if n == 1 else 's'} ({told}); {timing.notes_heard} of your notes fed to the model, "
            f"{timing.model_notes} notes from the model")


def _print_notice(notice) -> None:
    """The player's news, on stderr: yellow while it goes on, green when it is back, red when it gives up."""
    if notice.kind == "port gone":
        err_console.print(f"[bold red]error:[/] {notice.text}; it is written to the files.")
    else:
        colour = "green" if notice.kind == "reconnected" else "yellow"
        err_console.print(f"[{colour}]{notice.text}[/]")


EXIT_CODES = {"finished": 0, "stopped": 130, "port lost": 3}  # a take's end reason (the engine's) -> exit status
EXIT_CODES_HELP = (f"Exit status: {EXIT_CODES['finished']} finished, {EXIT_CODES['stopped']} stopped by Ctrl-C, SIGTERM "
                   f"or SIGHUP (what was made is written; 130 also before the take began, nothing written), 2 bad input "
                   f"or an output that cannot open, {EXIT_CODES['port lost']} the MIDI port was lost for good (what was "
                   "made is written).")


def run_ports(midi_api: str) -> int:
    from engine.midi import API_CHOICES, NoMidiSystem, PortError, list_ports, resolve_api
    from engine.midi.ports import list_input_ports

    if midi_api not in API_CHOICES:
        fail(f"unknown MIDI API {midi_api!r}; use one of: {', '.join(API_CHOICES)}")
    found = list_ports(midi_api)
    if not found:
        try:
            resolve_api(midi_api)
        except NoMidiSystem as err:
            fail(f"{err}; without one, generate --out FILE.mid writes files and --synth builtin plays.")
        except PortError as err:
            fail(str(err))
    for api, names in found.items():
        console.print(f"[bold]{api}[/] output ports:" if names else f"[bold]{api}[/]: no output ports (use --virtual to create 'PianoMuse')")
        for name in names:
            console.print(f"  {name}")
    for api, names in list_input_ports(midi_api).items():
        console.print(f"[bold]{api}[/] input ports (for --in):" if names else f"[bold]{api}[/]: no input ports (use --in virtual to create 'PianoMuse in')")
        for name in names:
            console.print(f"  {name}")
    return 0


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    # the defaults shown in --help are the engine's, the ones the Generate pane starts from
    from engine.generate.defaults import DEFAULT_BARS, DuetConfig, SamplingConfig, duet_config
    from engine.generate.performance import OutputChoice  # a take's output, as PerformanceSettings holds it

    SAMPLING = SamplingConfig()
    DUET = DuetConfig()

    @app.command("generate", epilog=EXIT_CODES_HELP)
    def generate(
        ctx: typer.Context,
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A .pth file or a training run folder (default: the bundled model)."),
        prompt: Optional[Path] = typer.Option(None, "--prompt", help="A MIDI file to continue."),
        prompt_bars: Optional[str] = typer.Option(None, "--prompt-bars", "--bars-range", help="Which bars of the prompt: N (the last N), A-B or A- (from 1)."),
        bars: Optional[int] = typer.Option(None, "--bars", help=f"Generate M bars (default {DEFAULT_BARS} when --max-tokens is not given)."),
        allow_early_end: bool = typer.Option(False, "--allow-early-end", help="Let the model end the piece before --bars (the summary says when it did)."),
        max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Stop after N tokens (a note is never cut)."),
        alternatives: int = typer.Option(1, "--alternatives", "-k", help="K alternative continuations, generated together and saved separately."),
        temperature: float = typer.Option(SAMPLING.temperature, "--temperature", help="Randomness (0 = always the likeliest token)."),
        top_k: int = typer.Option(SAMPLING.top_k, "--top-k", help="Keep the K likeliest tokens (0 = off)."),
        top_p: float = typer.Option(SAMPLING.top_p, "--top-p", help="Keep the likeliest tokens up to this probability mass (1 = off)."),
        min_p: float = typer.Option(SAMPLING.min_p, "--min-p", help="Drop tokens below this fraction of the likeliest one (0 = off)."),
        repetition_penalty: float = typer.Option(SAMPLING.repetition_penalty, "--repetition-penalty", help="Discourage tokens of the recent window (1 = off)."),
        presence_penalty: float = typer.Option(SAMPLING.presence_penalty, "--presence-penalty", help="Subtract from tokens of the recent window (0 = off)."),
        penalty_window: int = typer.Option(SAMPLING.penalty_window, "--penalty-window", help="How many recent tokens the penalties look at."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Reproducible sampling (default: random, printed at the end)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output .mid (OUT-1.mid .. OUT-K.mid with alternatives); OUT.wav also renders each take with the built-in piano."),
        play: bool = typer.Option(False, "--play", help="Play live (on the virtual port unless --port/--synth says where)."),
        midi_api: str = typer.Option("auto", "--midi-api", help="alsa, jack or auto (ALSA, then JACK)."),
        port: Optional[str] = typer.Option(None, "--port", help="Play to this existing MIDI port (name or part of it)."),
        virtual: bool = typer.Option(False, "--virtual", help="Play to a new virtual port named 'PianoMuse'."),
        synth: Optional[str] = typer.Option(None, "--synth", help="builtin: play through the built-in piano (sound with no MIDI system); fluidsynth: start FluidSynth on the MIDI system and play to it."),
        fluidsynth: bool = typer.Option(False, "--fluidsynth", help="Same as --synth fluidsynth."),
        soundfont: Optional[Path] = typer.Option(None, "--soundfont", help="The .sf2 for the built-in piano, --synth fluidsynth and .wav output (default: a GM font found on the system)."),
        lookahead: float = typer.Option(0.5, "--lookahead", help="Seconds of music generated ahead of the playhead."),
        threads: int = typer.Option(1, "--threads", help="CPU threads for the model (1 keeps per-token latency steady)."),
        midi_in: Optional[str] = typer.Option(None, "--in", help="Play with the model: listen to this MIDI input (name or part of it; 'virtual' makes the port 'PianoMuse in')."),
        mode: str = typer.Option(DUET.mode, "--mode", help=DuetConfig.help("mode")),
        takeover_cc: int = typer.Option(DUET.takeover_cc, "--takeover-cc", help=DuetConfig.help("takeover_cc")),
        pause: float = typer.Option(DUET.pause, "--pause", help=DuetConfig.help("pause")),
        takeback: str = typer.Option(DUET.takeback, "--takeback", help=DuetConfig.help("takeback")),
        turn_bars: int = typer.Option(DUET.turn_bars, "--turn-bars", help=DuetConfig.help("turn_bars")),
        count_in: int = typer.Option(DUET.count_in, "--count-in", help=DuetConfig.help("count_in")),
        click: bool = typer.Option(DUET.click, "--click/--no-click", help=DuetConfig.help("click")),
        split: int = typer.Option(DUET.split, "--split", help=DuetConfig.help("split")),
        tempo: float = typer.Option(DUET.tempo, "--tempo", help=DuetConfig.help("tempo")),
        tap_tempo: bool = typer.Option(DUET.tap_tempo, "--tap-tempo", help=DuetConfig.help("tap_tempo")),
        lead: float = typer.Option(DUET.lead, "--lead", help=DuetConfig.help("lead")),
        thru: bool = typer.Option(DUET.thru, "--thru/--no-thru", help=DuetConfig.help("thru")),
    ) -> None:
        """Continue a MIDI prompt with a model: write files, or play live to a MIDI port or FluidSynth."""
        from ..cli import open_app, wants_app  # cli imports this module
        from ..requests import GenerateArgs

        if fluidsynth:
            synth = "fluidsynth"
        try:  # the same DuetConfig the Generate pane builds from its fields
            duet = duet_config(mode=mode, takeover_cc=takeover_cc, pause=pause, takeback=takeback, turn_bars=turn_bars,
                               count_in=count_in, click=click, split=split, tempo=tempo, tap_tempo=tap_tempo,
                               lead=lead, thru=thru)
        except ValueError as err:
            fail(str(err))
        if wants_app(ctx):
            open_app("generate", GenerateArgs(
                checkpoint=str(checkpoint) if checkpoint else None, prompt=str(prompt) if prompt else None,
                prompt_bars=prompt_bars, bars=bars or DEFAULT_BARS, alternatives=alternatives, temperature=temperature,
                top_p=top_p, seed=seed, midi_api=midi_api, port=port, synth=synth, midi_in=midi_in, duet=duet,
            ))
            return
        sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                    "repetition_penalty": repetition_penalty, "presence_penalty": presence_penalty,
                    "penalty_window": penalty_window, "seed": seed}
        choice = OutputChoice(api=midi_api, port=port, virtual=virtual, synth=synth, soundfont=soundfont, lookahead=lookahead)
        code = run_generate(checkpoint, prompt, prompt_bars, bars, max_tokens, alternatives, sampling, out, play,
                            choice, threads, allow_early_end, midi_in, duet)
        if code:
            raise typer.Exit(code)

    @app.command("ports")
    def ports(midi_api: str = typer.Option("auto", "--midi-api", help="alsa, jack or auto.")) -> None:
        """List the MIDI output ports you can play to and the inputs you can play with (--in)."""
        code = run_ports(midi_api)
        if code:
            raise typer.Exit(code)
