"""The fault suite of bench/fault_suite.py, at a size for CI: kill -9 at random moments (mid-save
included), damaged newest checkpoints, hostile MIDI through real commands. Every fault must be
survived: no traceback, nothing saved lost, no command past 2 GB. (Double signals during live play
on a real JACK server are tests/integration/test_jack_midi.py's.)"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))

from train_helpers import small_store  # noqa: E402

pytestmark = pytest.mark.slow


def suite():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("bench.fault_suite")


def test_random_kills_lose_nothing_and_the_run_finishes_with_every_step_once(tmp_path):
    tally = suite().kill_loop(small_store(), tmp_path / "runs", kills=2, seed=7, max_steps=18)
    assert tally.tried == 3 and tally.survived == tally.tried, tally.failures


def test_damaged_checkpoints_are_survived(tmp_path):
    # three of the bench's seven kinds (tests/unit/test_rundir_faults.py covers the rules in-process)
    kinds = ("bit flip in model.pth", "truncated trainer.pt", "latest marker names a missing step")
    tally = suite().corrupt_checkpoints(small_store(), tmp_path, kinds)
    assert tally.tried == 3 and tally.survived == tally.tried, tally.failures


def test_hostile_midi_through_check_and_generate(tmp_path):
    tally = suite().hostile_inputs(tmp_path)
    assert tally.survived == tally.tried == 9 and tally.peak_mb < 2048, tally.failures
