"""Shared helpers of the app's Pilot tests."""
from __future__ import annotations

# Small enough that a step takes well under a second on 2 busy CPU cores.
FAST_TINY = [
    "train.batch_size=2", "train.micro_batch_size=2", "data.ctx_len=128", "run.log_every=1",
    "eval.val_every=3", "eval.val_max_batches=1", "eval.audition_every=0", "run.checkpoint_every=0",
]


async def wait_for(pilot, predicate, timeout: float = 60.0, step: float = 0.1) -> bool:
    """Let the app run until ``predicate()`` holds (or ``timeout`` seconds of pauses pass)."""
    waited = 0.0
    while waited < timeout:
        if predicate():
            return True
        await pilot.pause(step)
        waited += step
    return predicate()


def screen_text(app) -> str:
    """The screen as plain text, the way a terminal shows it."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())
