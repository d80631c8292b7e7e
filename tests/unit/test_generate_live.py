"""engine.generate.live.stream hands its session to the player, so the rows it does not play can be saved."""
from __future__ import annotations

import mido
import pytest
import torch

from engine.data.tokenizer import PianoTokenizer
from engine.generate import live
from engine.model import RWKV7, ModelConfig


@pytest.fixture(scope="module")
def tiny_model():
    tok = PianoTokenizer("REMI")
    torch.manual_seed(0)
    return RWKV7(ModelConfig(n_layer=2, n_embd=64, head_size=32, vocab_size=tok.vocab_size)).eval(), tok


def test_stream_hands_over_its_session_with_every_alternative(tiny_model, tmp_path):
    model, tok = tiny_model
    sessions = []
    knobs = {"temperature": 1.0, "top_p": 0.95, "alternatives": 2, "bars": 2, "seed": 7, "version": 0}
    streamed = []
    for events, _, _ in live.stream(model=model, tokenizer=tok, knobs=lambda: dict(knobs), max_tokens=400,
                                    on_session=sessions.append):
        assert len(sessions) == 1  # given before the first step, once
        streamed += events
    session = sessions[0]
    assert session.alternatives == 2 and len(session.rows) == 2
    # row 0 is exactly what was streamed; row 1 was generated alongside and differs (its own seed)
    assert session.events(0) == streamed
    assert session.events(1) and session.tokens(1) != session.tokens(0)
    written = session.write_midi(1, tmp_path / "alt-2.mid")
    assert any(m.type == "note_on" and m.velocity for m in mido.MidiFile(written))
