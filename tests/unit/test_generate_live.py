"""A take's session holds every alternative while row 0 is streamed to the player, so the rows it does
not play can be saved; the knobs are a typed snapshot the session follows."""
from __future__ import annotations

import mido
import pytest
import torch

from engine.generate.defaults import KnobSettings
from engine.data.tokenizer import PianoTokenizer
from engine.generate import live
from engine.model import RWKV7, ModelConfig


@pytest.fixture(scope="module")
def tiny_model():
    tok = PianoTokenizer("REMI")
    torch.manual_seed(0)
    return RWKV7(ModelConfig(n_layer=2, n_embd=64, head_size=32, vocab_size=tok.vocab_size)).eval(), tok


def test_the_session_streamed_holds_every_alternative(tiny_model, tmp_path):
    model, tok = tiny_model
    knobs = KnobSettings(temperature=1.0, top_p=0.95, alternatives=2, bars=2, seed=7)
    session = live.session_from_knobs(model, tok, knobs, max_tokens=400)  # as Performance.load builds it
    streamed = []
    for events, _, _ in live.chunks(session, knobs=lambda: knobs):
        streamed += events
    assert session.alternatives == 2 and len(session.rows) == 2
    # row 0 is exactly what was streamed; row 1 was generated alongside and differs (its own seed)
    assert session.events(0) == streamed
    assert session.events(1) and session.tokens(1) != session.tokens(0)
    written = session.write_midi(1, tmp_path / "alt-2.mid")
    assert any(m.type == "note_on" and m.velocity for m in mido.MidiFile(written))


def test_the_knobs_are_a_typed_snapshot_the_session_follows(tiny_model):
    """The pane hands the performance a KnobSettings (no dict keys to guess); a session follows a new
    version's temperature, top-p and bars, and ignores a snapshot whose version it has seen."""
    from engine.generate.performance import Knobs

    model, tok = tiny_model
    knobs = Knobs()
    assert knobs.snapshot() == KnobSettings() and knobs.temperature == KnobSettings.temperature
    session = live.build_session(model, tok, bars=4)
    follow = live.KnobFollower(session, knobs.snapshot)
    knobs.update(temperature=0.3, top_p=0.5, bars=7)
    assert isinstance(knobs.snapshot(), KnobSettings) and knobs.version == 1
    follow()
    assert (session.sampling.temperature, session.sampling.top_p, session.bars) == (0.3, 0.5, 7)
    session.sampling.temperature = 2.0  # the same version again: nothing is re-applied
    follow()
    assert session.sampling.temperature == 2.0
