"""Progress lines on stderr, and the error that stops a measurement."""

from __future__ import annotations

import sys
import time


class BenchError(Exception):
    """A measurement could not be made; the message says why."""


STARTED = time.monotonic()


def progress(message: str) -> None:
    """Progress on stderr, with the time since the bench started."""
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)
