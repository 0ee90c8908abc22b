"""TEST ONLY: hold back every Nth completion of an engine, to force out-of-order completion.

The device key ``test-delay=EVERY:US`` (docs/test-delay.md) makes every EVERY-th
completion of each dataplane thread's engine arrive US microseconds late, behind
the completions of later requests.  The reconnect tests use it to have requests in
flight behind completed ones when they kill the backend.  Results are untouched.

csrc/device/dp_delay.c holds the completions back inside the C datapath's engine
(``set_c_test_delay``); the Python reference datapath has no test delay.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataplane.device.c.delay import set_engine_delay

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
    """On a C engine (``LocalEngine.handle``), before its thread exists and before any I/O."""
    set_engine_delay(handle, delay.every, delay.delay_us)
