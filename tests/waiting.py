"""Polling with a deadline, for tests that wait on real servers."""

from __future__ import annotations

import time
from typing import Any, Callable, Tuple, Type


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5,
               tolerate: Tuple[Type[BaseException], ...] = (AssertionError, OSError),
               describe: Callable[[], str] = lambda: "") -> Any:
    """The first truthy value of predicate(); exceptions in `tolerate` count as
    "not yet". On timeout: AssertionError naming what, the last value, and
    describe() (e.g. a log tail)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except tolerate as exc:
            last = exc
        if last and not isinstance(last, BaseException):
            return last
        time.sleep(interval)
    extra = describe()
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})"
                         + (f"; {extra}" if extra else ""))
