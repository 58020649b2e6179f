"""Waiting for a condition with a deadline, and expecting an error."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds, naming ``what`` was awaited. Polls fast at first, then every 0.1 s."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def errno_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The errno of the OSError that ``fn(*args, **kwargs)`` must raise (the test fails if it
    returns)."""
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno is not None, info.value
    return info.value.errno
