"""Waiting on an observable condition instead of sleeping "long enough"."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition never became true: a test failure, or for the benchmark a fatal one."""


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something true, and return that.

    Raises WaitTimeout (an AssertionError) naming ``what`` after ``timeout`` seconds; an
    exception raised by ``condition`` itself (e.g. "the server died") ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
