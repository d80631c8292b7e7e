"""Real-time MIDI: ports (python-rtmidi), the lookahead scheduler, the live player, synths, and event/file helpers."""
from .events import MeterMap, MidiEvent, NoteTracker, control_change, note_off, note_on, panic_messages, take_until, write_midi_file
from .player import LivePlayer, OutputChoice, PlayerNotice, midi_file_chunks, take_paths
from .ports import API_CHOICES, MidiOutput, NoMidiSystem, PortError, list_ports, open_output, resolve_api
from .scheduler import LookaheadScheduler, MonotonicClock, SchedulerTelemetry
from .synth import DEFAULT_SOUNDFONT, FluidSynth, start_fluidsynth

__all__ = [
    "API_CHOICES",
    "DEFAULT_SOUNDFONT",
    "FluidSynth",
    "LivePlayer",
    "LookaheadScheduler",
    "MeterMap",
    "MidiEvent",
    "MidiOutput",
    "MonotonicClock",
    "NoteTracker",
    "OutputChoice",
    "PlayerNotice",
    "NoMidiSystem",
    "PortError",
    "SchedulerTelemetry",
    "control_change",
    "list_ports",
    "midi_file_chunks",
    "note_off",
    "note_on",
    "open_output",
    "panic_messages",
    "resolve_api",
    "start_fluidsynth",
    "take_paths",
    "take_until",
    "write_midi_file",
]
