"""The public `rwkv` package (an independent RWKV-7 implementation) reads an engine-saved x070
checkpoint and produces the same logits, both over a sequence and token by token."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from engine.model import save_checkpoint
from model_helpers import perturbed_model, rel_err

pytest.importorskip("rwkv", reason="the `rwkv` package is a dev dependency (pip install -e '.[dev]')")

ORACLE = textwrap.dedent(
    """
    import sys, torch
    from rwkv.model import RWKV
    name, tokens_path, out_path = sys.argv[1:4]
    tokens = torch.load(tokens_path).tolist()
    model = RWKV(name, "cpu fp32")  # appends .pth itself
    seq_logits, _ = model.forward(tokens, None, full_output=True)
    state, steps = None, []
    for t in tokens:
        logits, state = model.forward([t], state)
        steps.append(logits)
    torch.save({"seq": seq_logits, "steps": torch.stack(steps), "wkv": torch.stack([state[3 * l + 1] for l in range(len(state) // 3)])}, out_path)
    """
)


@pytest.mark.slow
def test_rwkv_package_gives_the_same_logits(tmp_path):
    model = perturbed_model(arch="x070", n_layer=3, n_embd=128, vocab_size=97, head_size=64, seed=31, scale=0.2)
    path = save_checkpoint(model, tmp_path / "engine-x070")
    tokens = torch.randint(0, 97, (16,), generator=torch.Generator().manual_seed(4))
    torch.save(tokens, tmp_path / "tokens.pt")
    env = dict(os.environ, RWKV_V7_ON="1", RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
    script = tmp_path / "oracle.py"
    script.write_text(ORACLE)
    done = subprocess.run(
        [sys.executable, str(script), str(path.with_suffix("")), str(tmp_path / "tokens.pt"), str(tmp_path / "out.pt")],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    oracle = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        ours, state = model(tokens.view(1, -1), return_state=True)
    assert rel_err(oracle["seq"], ours[0]) < 1e-4
    assert rel_err(oracle["steps"], ours[0]) < 1e-4
    assert rel_err(oracle["wkv"], state.wkv[:, 0]) < 1e-4
    # the comparison is meaningful: logits vary across positions and tokens
    assert ours[0].std(dim=0).mean() > 1e-2
