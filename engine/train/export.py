"""A run's best validated weights: which checkpoint, and whether its own weights or their average.

Each validation record of a run scores the trained ("raw") weights and, with
``train.ema_decay``, their moving average ("ema"). The best weights are the lower of the two at
the validated step with the lowest such loss that still has a checkpoint. Steps a resumed run
trained again count only from their second training (the first one's records are stale).
``load_best_weights`` gives the model holding exactly those weights, for exporting.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine import rundir
from engine.metric_records import ValRecord


@dataclass(frozen=True)
class BestWeights:
    checkpoint: Path  # the checkpoint folder of ``step``
    step: int
    weights: str  # "raw" (model.pth) or "ema" (the average in trainer.pt)
    val: ValRecord  # the validation of that step (both losses)

    @property
    def val_loss(self) -> float:
        return self.val.best_val_loss

    @property
    def bits_per_note(self) -> float | None:
        return self.val.ema_bits_per_note if self.weights == "ema" else self.val.bits_per_note

    def describe(self) -> str:
        """One line for a run record: which weights of which step, and both validation losses."""
        other = (f"; the raw weights {self.val.val_loss:.4f}" if self.weights == "ema"
                 else f"; their average {self.val.ema_val_loss:.4f}" if self.val.ema_val_loss is not None else "")
        what = "the moving average of the weights" if self.weights == "ema" else "the trained weights"
        return f"{what} at step {self.step}, validation loss {self.val_loss:.4f} nats/token{other}"


def best_validated_weights(run_dir: Path) -> BestWeights | None:
    """The best validated weights of a run that still have a checkpoint, or None if none do."""
    run_dir = Path(run_dir)
    vals: dict[int, ValRecord] = {}
    for record in rundir.read_metrics(run_dir / rundir.METRICS):
        if record.resumed_at is not None:
            vals = {step: v for step, v in vals.items() if step <= record.resumed_at}
        if isinstance(record, ValRecord) and record.best_val_loss is not None:
            vals[record.step] = record
    checkpoints = {rundir.checkpoint_step(p): p for p in rundir.list_checkpoints(run_dir)}
    scored = [v for step, v in vals.items() if step in checkpoints]
    if not scored:
        return None
    best = min(scored, key=lambda v: (v.best_val_loss, v.step))
    return BestWeights(checkpoints[best.step], best.step, best.best_weights, best)


def load_best_weights(best: BestWeights, device: str = "cpu"):
    """(model, sidecar) of the checkpoint, the model holding the chosen weights."""
    from engine.model import load_checkpoint

    from .averaging import averaged_model_state

    model, sidecar = load_checkpoint(best.checkpoint / rundir.WEIGHTS, device=device)
    if best.weights == "ema":
        saved = rundir.load_trainer_state(best.checkpoint).get("ema")
        if saved is None:
            raise rundir.RunError(f"checkpoint {best.checkpoint} holds no weight average although its validation "
                                  "record has one; export its raw weights instead")
        model.load_state_dict(averaged_model_state(model.state_dict(), saved))
    return model, sidecar
