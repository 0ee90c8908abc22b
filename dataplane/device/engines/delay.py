"""TEST ONLY: hold back every Nth completion of an engine, to force out-of-order completion.

The device key ``test-delay=EVERY:US`` (docs/test-delay.md) makes every EVERY-th
completion of each dataplane thread's engine arrive US microseconds late, behind
the completions of later requests.  The reconnect tests use it to have requests in
flight behind completed ones when they kill the backend.  Results are untouched.

One implementation serves both data paths: csrc/dp_delay.c.  The native path sets it
on its C engine (``set_test_delay``); the Python path wraps its engine in
``DelayEngine``, which calls the same C stage around the inner engine's reap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dataplane.clib import ffi, lib
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
    ret = lib.dp_engine_set_test_delay(handle, delay.every, delay.delay_us)
    if ret < 0:
        raise OSError(-ret, f"cannot set {KEY} on the engine")


class DelayEngine(Engine):
    """An engine of the Python data path, with every Nth completion held back."""

    def __init__(self, inner: Engine, delay: TestDelay) -> None:
        super().__init__(inner.fd, inner.queue_depth)
        self.inner = inner
        self.name = inner.name
        err = ffi.new("int *")
        d = lib.dp_delay_open(
            delay.every, delay.delay_us * 1000, inner.completion_fd, inner.queue_depth, err
        )
        if d == ffi.NULL:
            raise OSError(-err[0], f"cannot set up {KEY}")
        self._d = d
        self._cqes = ffi.new("struct dp_cqe[]", max(inner.queue_depth, 1))

    @property
    def completion_fd(self) -> int:
        return lib.dp_delay_fd(self._d)

    @property
    def held(self) -> int:
        return lib.dp_delay_held(self._d)

    def submit(self, reqs: Sequence[IoRequest]) -> None:
        self.inner.submit(reqs)

    def _release(self) -> list[tuple[int, int]]:
        n = lib.dp_delay_release(self._d, self._cqes, len(self._cqes))
        return [(self._cqes[i].token, self._cqes[i].res) for i in range(n)]

    def reap(self) -> list[tuple[int, int]]:
        out = self._release()
        fresh = self.inner.reap()
        if len(fresh) > len(self._cqes):
            self._cqes = ffi.new("struct dp_cqe[]", len(fresh))
        for i, (token, result) in enumerate(fresh):
            self._cqes[i].token, self._cqes[i].res = token, result
        kept = lib.dp_delay_hold(self._d, self._cqes, len(fresh))
        out += [(self._cqes[i].token, self._cqes[i].res) for i in range(kept)]
        # The Python path blocks right after a reap: the timer must be set for the oldest
        # held completion, and what fell due meanwhile is handed out now.
        while lib.dp_delay_arm(self._d):
            out += self._release()
        return out

    def close(self) -> None:
        if self._d != ffi.NULL:
            lib.dp_delay_close(self._d)
            self._d = ffi.NULL
        self.inner.close()
