"""`pianomuse-tui [--headless] generate` and `pianomuse-tui --headless ports`.

generate: continue a prompt (or start from nothing) with a checkpoint, K alternatives at once.
Without a port it writes the files as fast as it can; with --port/--virtual/--synth (or --play) it
plays alternative 1 live through the lookahead scheduler while writing all of them. Ctrl-C stops
cleanly: every sounding note is released and what was generated so far is written.
Exit status: 0 done, 130 interrupted by Ctrl-C, SIGTERM or SIGHUP (files written), 2 bad input, 3 the MIDI
port was lost for good.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from engine.signals import signals_call

from .console import console, err_console, fail

def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written, checked before generating so that no take is lost; else None."""
    folder = path.parent
    while not folder.exists():  # the writer creates missing folders
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        return f"cannot write {path}: {folder} is not a writable folder; give another --out"
    return None


def _write_all(session, paths: list[Path], wav: bool = False, soundfont: Path | None = None) -> list[Path]:
    """Each alternative as .mid; with ``wav`` also rendered by the built-in piano as .wav beside it."""
    written = []
    for row, path in enumerate(paths):
        try:
            written.append(session.write_midi(row, path))
            if wav:
                from engine.midi.builtin_synth import render_wav

                written.append(render_wav(session.events(row), path.with_suffix(".wav"), soundfont))
        except OSError as exc:
            fail(f"could not write {path} ({exc.strerror or exc}); give another --out")
    return written


def _generation_summary(session, seconds: float) -> str:
    rows = session.rows
    rate = session.tokens_generated / seconds if seconds > 0 else 0.0
    per_row = ", ".join(f"#{r + 1}: {len(row.tokens)} tokens, {max(row.bars, 0)} bars, {len(row.decoder.notes)} notes ({_stop_words(session, r)})" for r, row in enumerate(rows))
    return f"generated {session.tokens_generated} tokens in {seconds:.2f} s ({rate:.0f} tokens/s), seed {session.seed}; {per_row}"


def _stop_words(session, r: int) -> str:
    row = session.rows[r]
    if session.ended_early(r):
        why = "the model ended the piece" if row.stop_reason == "eos" else "--max-tokens ran out"
        return f"ended early: {why} after {max(row.bars, 0)} of {session.bars} bars"
    return row.stop_reason or "stopped"


@contextlib.contextmanager
def _termination_stops_like_ctrl_c():
    """SIGTERM and SIGHUP (a closed terminal) stop the run as Ctrl-C does: notes released, files written."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    saved = {}
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        for name in ("SIGTERM", "SIGHUP"):
            if hasattr(signal, name):
                saved[getattr(signal, name)] = signal.signal(getattr(signal, name), stop)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def run_generate(*args, **kwargs) -> int:
    with _termination_stops_like_ctrl_c():
        return _run_generate(*args, **kwargs)


def _run_generate(
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
    import torch

    from engine.generate import DEFAULT_BARS, GenerationError, SamplingConfig
    from engine.generate.live import HARD_TOKEN_CAP, build_session, load_generator
    from engine.midi import LivePlayer, NoMidiSystem, PortError, take_paths

    if threads > 0:
        torch.set_num_threads(threads)
    problem = choice.problem()
    wav = out is not None and out.suffix.lower() == ".wav"
    if problem is None and wav:
        from engine.midi.builtin_synth import builtin_problem

        problem = builtin_problem(choice.soundfont)  # before the model loads: rendering needs the synth
    for name, value in (("--bars", bars), ("--max-tokens", max_tokens), ("--alternatives", alternatives)):
        if problem is None and value is not None and value < 1:
            problem = f"{name} must be at least 1, got {value}"  # told before the model loads
    if problem is None and midi_in is not None:
        problem = duet.problem() or ("playing with --in starts from what you play; leave out --prompt" if prompt else None) \
            or ("playing with --in uses one alternative; leave out --alternatives" if alternatives != 1 else None)
    if problem:
        fail(problem)
    if midi_in is not None:
        return _run_duet(checkpoint, sampling_kwargs, out, wav, choice, midi_in, duet)
    if bars is None and max_tokens is None:
        bars = DEFAULT_BARS
    try:
        sampling = SamplingConfig(**sampling_kwargs)
    except ValueError as err:
        fail(str(err))

    live = play or bool(choice.port) or choice.virtual or choice.synth is not None
    player = None
    if live:
        # The output first: a wrong name or a missing MIDI system is told before the model loads.
        player = LivePlayer(choice, on_notice=_print_notice)
        try:
            player.open()
        except NoMidiSystem as err:
            fail(f"{err}; or write the music to a file: leave out --play/--port/--virtual and give --out FILE.mid "
                 "(--synth builtin plays without a MIDI system).")
        except PortError as err:
            builtin = choice.synth == "builtin" and "sound output" in str(err)
            fail(f"{str(err).rstrip('.')}; or render the take to a file with --out take.wav." if builtin else str(err))
    try:
        model, tokenizer, pth = load_generator(checkpoint)
        session = build_session(model, tokenizer, prompt=prompt, prompt_bars=prompt_bars, sampling=sampling,
                                alternatives=alternatives, bars=bars, max_tokens=max_tokens or HARD_TOKEN_CAP,
                                allow_early_end=allow_early_end)
        paths = take_paths(out, alternatives, session.seed)
        problem = _unwritable(paths[0])
        if problem:
            raise GenerationError(problem)
    except (GenerationError, KeyboardInterrupt) as err:
        if player is not None:
            player.close()
        if isinstance(err, KeyboardInterrupt):
            fail("interrupted while loading the model; nothing was generated.", code=130)
        fail(str(err))
    console.print(f"model {pth} ({model.config.describe()}), {tokenizer.tokenization} tokens"
                  + (f", prompt {prompt} ({len(session.prompt)} tokens)" if prompt else ", no prompt"))

    started = time.perf_counter()
    if not live:
        interrupted = False
        try:
            session.run()
        except KeyboardInterrupt:
            interrupted = True
        session.finish()
        elapsed = time.perf_counter() - started
        written = _write_all(session, paths, wav, choice.soundfont)
        console.print(_generation_summary(session, elapsed))
        console.print("wrote " + ", ".join(str(p) for p in written))
        return 130 if interrupted else 0

    code = 0
    # from here a signal (any number of them) asks the take to stop: it never cuts short the
    # release of the notes or the writing of the take
    with signals_call(lambda signum: player.stop()):
        try:
            console.print(f"playing alternative 1 on {player.output_name}, lookahead {choice.lookahead:.2f} s (Ctrl-C stops)")
            code = _perform(session, player)
        except KeyboardInterrupt:
            code = 130
        finally:
            player.close()
            session.finish()
            elapsed = time.perf_counter() - started
            written = _write_all(session, paths, wav, choice.soundfont)
    console.print(_generation_summary(session, elapsed))
    console.print("timing: " + player.telemetry().summary())
    console.print("wrote " + ", ".join(str(p) for p in written))
    if code == 130:
        console.print("stopped: every note was released")
    return code


def _run_duet(checkpoint, sampling_kwargs: dict, out: Path | None, wav: bool, choice, midi_in: str, config) -> int:
    """Play with the model: listen on ``midi_in``, play on ``choice``, until Ctrl-C; write the two-track take."""
    from engine.generate import GenerationError, SamplingConfig
    from engine.generate.duet import load_duet
    from engine.midi import LivePlayer, PortError, take_paths
    from engine.midi.ports import open_input

    try:
        sampling = SamplingConfig(**sampling_kwargs)
    except ValueError as err:
        fail(str(err))
    listening = None
    player = LivePlayer(choice, on_notice=_print_notice)
    try:  # the ports first: a wrong name or a missing MIDI system is told before the model loads
        listening = open_input(choice.api, None if midi_in == "virtual" else midi_in, virtual=midi_in == "virtual")
        player = _open_duet_output(choice)
    except (PortError, KeyboardInterrupt) as err:
        player.close()
        if listening is not None:
            listening.close()
        if isinstance(err, KeyboardInterrupt):
            fail("interrupted while opening the MIDI ports; nothing was played.", code=130)
        fail(str(err))
    try:
        duet, pth = load_duet(checkpoint, sampling, config, player, listening.messages)
        path = take_paths(out, 1, duet.session.seed)[0]
        problem = _unwritable(path)
        if problem:
            raise GenerationError(problem)
    except (GenerationError, KeyboardInterrupt) as err:
        player.close()
        listening.close()
        fail("interrupted while loading the model; nothing was played." if isinstance(err, KeyboardInterrupt) else str(err),
             code=130 if isinstance(err, KeyboardInterrupt) else 2)
    console.print(f"model {pth}; listening on {listening.name}, playing on {player.output_name}; mode {config.mode} "
                  f"at {config.tempo:g} qpm (Ctrl-C stops)")
    code = 0
    with signals_call(lambda signum: player.stop()):  # as in a generated take: signals ask to stop, never cut the clean-up
        try:
            code = EXIT_CODES[duet.play()]
        except KeyboardInterrupt:
            code = 130
        finally:
            end = player.music_time()
            player.close()
            listening.close()
            duet.finish(end)
            written = [duet.write(path)]
            if wav:
                from engine.midi.builtin_synth import render_wav

                written.append(render_wav(duet.take.model + duet.take.human, path.with_suffix(".wav"), choice.soundfont))
    waits = sorted(duet.latencies())
    told = (f"the model's first note came {1000 * waits[len(waits) // 2]:.0f} ms (median), at most "
            f"{1000 * waits[-1]:.0f} ms after each handover" if waits else "no handover")
    n = len(duet.handovers)
    console.print(f"{n} handover{'' if n == 1 else 's'} ({told}); {duet.fed_notes} of your notes fed to the model, "
                  f"{sum(e.is_note_on for e in duet.take.model)} notes from the model")
    console.print("timing: " + player.telemetry().summary())
    console.print("wrote " + ", ".join(str(p) for p in written) + " (tracks: PianoMuse, You)")
    return code


def _open_duet_output(choice):
    """The player for a duet. Without --port/--virtual/--synth you want to hear it: the built-in
    piano, or the virtual port when this machine has no sound output for it (said in one line)."""
    from engine.midi import LivePlayer, PortError

    if choice.port or choice.virtual or choice.synth:
        player = LivePlayer(choice, on_notice=_print_notice)
        player.open()
        return player
    try:
        player = LivePlayer(replace(choice, synth="builtin"), on_notice=_print_notice)
        player.open()
        return player
    except PortError as err:
        err_console.print(f"[yellow]{err}[/] Playing to the virtual port 'PianoMuse' instead.")
    player = LivePlayer(replace(choice, virtual=True), on_notice=_print_notice)
    player.open()
    return player


def _print_notice(notice) -> None:
    """The player's news, on stderr: yellow while it goes on, green when it is back, red when it gives up."""
    if notice.kind == "port gone":
        err_console.print(f"[bold red]error:[/] {notice.text}; it is written to the files.")
    else:
        colour = "green" if notice.kind == "reconnected" else "yellow"
        err_console.print(f"[{colour}]{notice.text}[/]")


EXIT_CODES = {"finished": 0, "stopped": 130, "port lost": 3}  # what LivePlayer.play returns -> exit status


def _perform(session, player) -> int:
    """Play alternative 1 of ``session`` through ``player`` (the engine's live player); the exit status."""
    from engine.generate.live import chunks

    return EXIT_CODES[player.play(chunks(session))]


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
    from engine.midi.player import OutputChoice

    SAMPLING = SamplingConfig()
    DUET = DuetConfig()

    @app.command("generate")
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
