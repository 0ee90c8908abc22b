"""csrc/device/dp_delay.h (TEST ONLY): the stage that holds back every Nth completion.

``DelayStage`` wraps one ``struct dp_delay`` for the Python data path's DelayEngine;
``set_engine_delay`` sets the same stage inside a C engine for the C datapath.
"""

from __future__ import annotations

import errno
from typing import Any

from dataplane.device.c import Owned, check, ffi, lib

__all__ = ["DelayStage", "set_engine_delay"]


def set_engine_delay(handle: Any, every: int, delay_us: int) -> None:
    """On a C engine (``EngineHandle.handle``), before its thread exists and before any I/O."""
    check(lib.dp_engine_set_test_delay(handle, every, delay_us), "cannot set test-delay")


class DelayStage(Owned):
    """One ``struct dp_delay`` in front of an engine's completion fd."""

    free_fn = staticmethod(lib.dp_delay_close)

    def __init__(self, every: int, delay_ns: int, inner_fd: int, depth: int) -> None:
        if every < 1 or delay_ns < 0:
            raise ValueError(f"a delay of every {every} completions by {delay_ns} ns")
        err = ffi.new("int *")
        ptr = lib.dp_delay_open(every, delay_ns, inner_fd, depth, err)
        if ptr == ffi.NULL:
            check(err[0] if err[0] < 0 else -errno.ENOMEM, "cannot set up test-delay")
        super().__init__(ptr, "test-delay")
        self._cqes: Any = ffi.new("struct dp_cqe[]", max(depth, 1))

    @property
    def fd(self) -> int:
        """The fd that is readable while held completions are due."""
        return lib.dp_delay_fd(self._ptr)

    @property
    def held(self) -> int:
        return lib.dp_delay_held(self._ptr)

    def release(self) -> list[tuple[int, int]]:
        """The held completions that are due: (token, result)."""
        n = lib.dp_delay_release(self._ptr, self._cqes, len(self._cqes))
        return [(self._cqes[i].token, self._cqes[i].res) for i in range(n)]

    def hold(self, fresh: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Pass ``fresh`` completions through the stage; those it does not hold back."""
        if len(fresh) > len(self._cqes):
            self._cqes = ffi.new("struct dp_cqe[]", len(fresh))
        for i, (token, result) in enumerate(fresh):
            self._cqes[i].token, self._cqes[i].res = token, result
        kept = lib.dp_delay_hold(self._ptr, self._cqes, len(fresh))
        return [(self._cqes[i].token, self._cqes[i].res) for i in range(kept)]

    def arm(self) -> bool:
        """Set the timer for the oldest held completion; True if some fell due meanwhile."""
        return bool(lib.dp_delay_arm(self._ptr))
