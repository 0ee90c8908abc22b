"""Waiting on an event in a test: a predicate polled under a generous bound.

A bound is there only to end a hang: on a loaded machine an event may take seconds,
so every wait allows tens of them, and nothing is ever asserted after a bare sleep.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
WAIT_S = 30.0  # seconds: the default bound of a wait that ends on an event


def wait_until(done: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``done`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def finishes(fn: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
    """``fn()``'s result (or its exception), run on a thread; AssertionError naming ``what``
    when it has not returned after ``timeout`` s (the thread is left behind, a daemon).

    For work that must not depend on an input's magnitude: give it an input that would
    take hours the wrong way, and it passes or fails whatever the machine's load."""
    box: list = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as e:  # handed to the caller
            box.append((False, e))

    t = threading.Thread(target=run, name=f"finishes: {what}", daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise AssertionError(f"{what}: not done after {timeout:.0f} s")
    ok, value = box[0]
    if not ok:
        raise value
    return value


def accepts(path: Path) -> bool:
    """Whether a UNIX socket at ``path`` accepts a connection now (its file may exist a moment
    before it listens: the server sets its owner and mode in between)."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True
