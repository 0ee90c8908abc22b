"""csrc/device/dp_rec.h and the trace budget of dp_narr.h: ``--record`` and ``--trace-requests``."""

from __future__ import annotations

import functools
from typing import Any

from dataplane.device.c import Owned, ffi, lib

__all__ = ["RecordBuffer", "Recorder", "TraceBudget"]


class Recorder(Owned):
    """One record file's C writer (``struct dp_rec``), shared by a device's threads."""

    free_fn = lib.dp_rec_free

    def __init__(self, fd: int, letters: str, max_length: int) -> None:
        super().__init__(lib.dp_rec_new(fd, letters.encode(), max_length), "dp_rec_new")

    def count(self) -> int:
        """Requests written so far."""
        return lib.dp_rec_count(self._ptr)

    def skipped(self) -> int:
        """Reads and writes the trace format cannot hold, left out."""
        return lib.dp_rec_skipped(self._ptr)

    def error(self) -> int:
        """The errno that stopped recording, or 0."""
        return lib.dp_rec_error(self._ptr)


class RecordBuffer(Owned):
    """One thread's buffer of formatted lines (``struct dp_recbuf``), written once per pass.

    ``close`` flushes it.
    """

    free_fn = lib.dp_recbuf_free

    def __init__(self, rec: Recorder) -> None:
        super().__init__(lib.dp_recbuf_new(rec.handle), "dp_recbuf_new")
        # add(t_ns, queue, kind, sector, length), per request in the Python reference:
        # the C function with its buffer bound once, no Python frame in between.
        self.add = functools.partial(lib.dp_recbuf_add, self._ptr)

    def flush(self) -> None:
        """Write what is buffered; a failure stops recording (Recorder.error says why)."""
        lib.dp_recbuf_flush(self._ptr)


class TraceBudget:
    """How many requests a device still narrates, shared by its threads (``struct dp_budget``)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a trace budget of {limit} requests")
        self.handle: Any = ffi.new("struct dp_budget *", {"limit": limit, "taken": 0})

    def take(self) -> int:
        """The next request number (1, 2, ...), or 0 once ``limit`` were taken."""
        return lib.dp_budget_take(self.handle)
