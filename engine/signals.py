"""Stop signals (SIGINT, SIGTERM, SIGHUP) turned into requests, so what must finish does finish.

A signal handler in Python runs between two bytecodes of the main thread, so a second Ctrl-C can
land anywhere, e.g. while a player waits for its threads before releasing the notes, or
while a take is written. Code that must complete (releasing every sounding note, writing a file,
saving a checkpoint) runs inside ``signals_call`` (each signal becomes a call, e.g. "stop") or
``signals_held`` (signals are noted and otherwise ignored), and any number of signals cannot cut
it short. Handlers can only be set in the main thread; elsewhere both are no-ops (signals do not
interrupt other threads anyway).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

STOP_SIGNALS: tuple[int, ...] = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def signals_call(action: Callable[[int], None], signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """While inside, each of ``signals`` calls ``action(signum)`` instead of its usual handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, lambda signum, frame: action(signum))
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def signals_held(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[list[int]]:
    """While inside, ``signals`` are noted (in the yielded list) and do nothing else."""
    heard: list[int] = []
    with signals_call(heard.append, signals):
        yield heard
