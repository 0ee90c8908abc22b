"""csrc/device/dp_delay.h (TEST ONLY): the stage that holds back every Nth completion of a C engine.

``set_engine_delay`` sets it inside a C engine of the C datapath.
"""

from __future__ import annotations

from typing import Any

from dataplane.device.c import check, lib

__all__ = ["set_engine_delay"]


def set_engine_delay(handle: Any, every: int, delay_us: int) -> None:
    """On a C engine (``EngineHandle.handle``), before its thread exists and before any I/O."""
    check(lib.dp_engine_set_test_delay(handle, every, delay_us), "cannot set test-delay")
