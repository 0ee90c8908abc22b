"""TEST ONLY: hold back every Nth completion of an engine, to force out-of-order completion.

The device key ``test-delay=EVERY:US`` (docs/test-delay.md) makes every EVERY-th
completion of each dataplane thread's engine arrive US microseconds late, behind
the completions of later requests.  The reconnect tests use it to have requests in
flight behind completed ones when they kill the backend.  Results are untouched.

One implementation serves both data paths: csrc/device/dp_delay.c.  The native path sets it
on its C engine (``set_test_delay``); the Python path wraps its engine in
``DelayEngine``, which calls the same C stage around the inner engine's reap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dataplane.device.c.delay import DelayStage, set_engine_delay
from dataplane.device.engines.base import Engine, IoRequest

KEY = "test-delay"
MAX_DELAY_US = 10_000_000


@dataclass(frozen=True, slots=True)
class TestDelay:
    """Every ``every``-th completion arrives ``delay_us`` late."""

    __test__ = False  # not a pytest class

    every: int
    delay_us: int


def parse_test_delay(text: str) -> TestDelay:
    """``EVERY:US``, e.g. ``4:2000``; ValueError says what is wrong."""
    every, sep, delay = text.partition(":")
    try:
        value = TestDelay(int(every), int(delay))
    except ValueError:
        value = None
    if not sep or value is None or value.every < 1 or not 0 <= value.delay_us <= MAX_DELAY_US:
        raise ValueError(
            f"{KEY}={text!r}: expected EVERY:US, EVERY >= 1 completions and US up to "
            f"{MAX_DELAY_US} microseconds (e.g. {KEY}=4:2000)"
        )
    return value


def set_c_test_delay(handle: object, delay: TestDelay) -> None:
    """On a C engine (``CEngine.handle``), before its thread exists and before any I/O."""
    set_engine_delay(handle, delay.every, delay.delay_us)


class DelayEngine(Engine):
    """An engine of the Python data path, with every Nth completion held back."""

    def __init__(self, inner: Engine, delay: TestDelay) -> None:
        super().__init__(inner.fd, inner.queue_depth)
        self.inner = inner
        self.name = inner.name
        self._d = DelayStage(
            delay.every, delay.delay_us * 1000, inner.completion_fd, inner.queue_depth
        )

    @property
    def completion_fd(self) -> int:
        return self._d.fd

    @property
    def held(self) -> int:
        return self._d.held

    def _submit(self, reqs: Sequence[IoRequest]) -> None:
        self.inner.submit(reqs)

    def reap(self) -> list[tuple[int, int]]:
        out = self._d.release()
        out += self._d.hold(self.inner.reap())
        # The Python path blocks right after a reap: the timer must be set for the oldest
        # held completion, and what fell due meanwhile is handed out now.
        while self._d.arm():
            out += self._d.release()
        return out

    def close(self) -> None:
        self._d.close()
        self.inner.close()
