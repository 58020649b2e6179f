"""Fake clocks for the node table: time moves only when a test says so."""

from __future__ import annotations


class FakeClock:
    """Monotonic seconds (like ``time.monotonic``) that move only by :meth:`advance`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass; a monotonic clock never goes back."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds}s)")
        self.now += seconds


class FakeWallClock:
    """Wall-clock nanoseconds (like ``time.time_ns``) that tick by ``tick_ns`` on every
    reading, so that two timestamps taken one after the other always differ and grow."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000, tick_ns: int = 1000) -> None:
        if tick_ns <= 0:
            raise ValueError("a wall clock for timestamps must tick forward")
        self.ns = start_ns
        self.tick_ns = tick_ns

    def __call__(self) -> int:
        self.ns += self.tick_ns
        return self.ns
