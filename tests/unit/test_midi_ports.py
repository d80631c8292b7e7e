"""Choosing a MIDI system when there is none, and the platforms without virtual ports.

Runs against the real python-rtmidi with no JACK server (a private, non-existent server name) and,
on machines without the ALSA sequencer, no ALSA either: what a laptop without a MIDI setup sees.
Windows and macOS cannot exist here, so only ``sys.platform`` is changed for those.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
from typer.testing import CliRunner

from engine.midi import PortError, list_ports, open_output, resolve_api
from engine.midi import ports as ports_module
from engine.midi.ports import available_apis

NO_ALSA_SEQUENCER = not os.path.exists("/dev/snd/seq")


@pytest.fixture
def no_jack(monkeypatch):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"pianomuse-no-such-server-{os.getpid()}")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.skipif(not NO_ALSA_SEQUENCER, reason="this machine has an ALSA sequencer, so auto finds one")
def test_auto_with_neither_alsa_nor_jack_says_what_to_start(no_jack):
    assert available_apis("auto") == [] and list_ports("auto") == {}
    with pytest.raises(PortError) as err:
        resolve_api("auto")
    message = str(err.value)
    assert "tried alsa, jack" in message and "jackd -d alsa" in message and "snd-seq" in message
    assert "`jackd -d dummy` runs without one and makes no sound" in message  # it is no way to hear music
    assert "--out" not in message  # a flag of one face only: each face adds what it can do instead
    with pytest.raises(PortError, match="ALSA sequencer is not available"):
        resolve_api("alsa")
    with pytest.raises(PortError, match="Unknown MIDI API"):
        resolve_api("beos")


@pytest.mark.skipif(not NO_ALSA_SEQUENCER, reason="this machine has an ALSA sequencer, so auto finds one")
def test_commands_without_any_midi_system_answer_in_one_sentence(no_jack, tmp_path):
    from pianomuse_tui.cli import app

    before = torch.get_num_threads()
    try:
        for args in (["ports"], ["generate", "--virtual", "--bars", "1", "--out", str(tmp_path / "x.mid")]):
            result = CliRunner().invoke(app, ["--headless", *args])
            assert result.exit_code == 2, result.output
            text = one_line(result.output)
            assert "No MIDI system is available (tried alsa, jack)" in text and "Traceback" not in text
            assert "--out FILE.mid" in text and "--synth builtin" in text  # what the command line can do instead
    finally:
        torch.set_num_threads(before)
    assert not (tmp_path / "x.mid").exists()  # nothing was generated for a port that cannot open


def test_windows_has_no_virtual_ports_and_says_to_pick_an_existing_one(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    assert ports_module._auto_order() == ("winmm",)
    with pytest.raises(PortError) as err:
        open_output("auto", virtual=True)
    message = str(err.value)
    assert message.startswith("Windows has no virtual MIDI ports; pick an existing one with --port")
    assert "loopMIDI" in message  # no Windows MIDI ports exist here, so it says how to make one


def test_macos_tries_coremidi_then_jack(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert ports_module._auto_order() == ("coremidi", "jack")


def test_port_choice_needs_exactly_one_target():
    with pytest.raises(PortError, match="not both"):
        open_output("jack", name="x", virtual=True)
    with pytest.raises(PortError, match="Say where to play"):
        open_output("jack")
