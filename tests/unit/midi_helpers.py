"""An injected clock and an output port for scheduler tests (a real clock and port: tests/integration)."""
from __future__ import annotations

import random
import threading
import time


class FakeClock:
    """Jumps straight to each target plus a random wake-up error; blocks (until interrupted) past ``limit``."""

    def __init__(self, jitter: float = 0.0003, limit: float = float("inf"), seed: int = 0) -> None:
        self.t = 1000.0
        self.jitter = jitter
        self.limit = limit
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def now(self) -> float:
        with self.lock:
            return self.t

    def sleep_until(self, target: float, interrupt: threading.Event) -> bool:
        if target > self.limit:
            interrupt.wait(0.01)
            return False
        with self.lock:
            self.t = max(self.t, target) + self.rng.uniform(0, self.jitter)
        return True


class FakeOutput:
    name = "fake"

    def __init__(self) -> None:
        self.sent: list[tuple[int, ...]] = []
        self.alive = True
        self.reopened = 0

    def send(self, data) -> None:
        if not self.alive:
            raise OSError("port gone")
        self.sent.append(tuple(data))

    def is_alive(self) -> bool:
        return self.alive

    def reopen(self) -> None:
        self.alive = True
        self.reopened += 1


class FastClock:
    """Real monotonic time run ``speed`` times faster: the music outpaces any model, and time always moves."""

    def __init__(self, speed: float = 500.0) -> None:
        self.speed = speed
        self.start = time.monotonic()

    def now(self) -> float:
        return 1000.0 + (time.monotonic() - self.start) * self.speed

    def sleep_until(self, target: float, interrupt: threading.Event) -> bool:
        remaining = (target - self.now()) / self.speed
        return not (remaining > 0 and interrupt.wait(remaining))
