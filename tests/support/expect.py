"""Waiting for a condition with a deadline, and expecting an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from lockfs.harness import wait_until

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds, naming ``what`` was awaited (lockfs.harness.wait_until, which
    lockfs-bench uses too: fast at first, then every 0.1 s)."""
    polled = wait_until(condition, timeout)
    if polled is None:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return polled[0]


def errno_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The errno of the OSError that ``fn(*args, **kwargs)`` must raise (the test fails if it
    returns)."""
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno is not None, info.value
    return info.value.errno
