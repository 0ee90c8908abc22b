"""Waiting on an event in a test: a predicate polled under a generous bound.

A bound is there only to end a hang: on a loaded machine an event may take seconds,
so every wait allows tens of them, and nothing is ever asserted after a bare sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WAIT_S = 30.0  # seconds: the default bound of a wait that ends on an event


def wait_until(done: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``done`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)
