"""What a device's datapaths share for ``--record`` and ``--trace-requests``.

**--record FILE**: every request that goes to the engine is appended to FILE
in the trace format of dataplane/spec/trace.py, by one C writer
(csrc/device/dp_rec.c) that both datapaths call: lines are formatted into a
per-thread buffer and written once per pass (or when the buffer fills).
GET_ID, requests failed at parse (bad sector, unsupported type) and reads or
writes the format cannot hold (empty, or over ``trace.MAX_LENGTH``) are not
recorded; the last are counted as skipped.

**--trace-requests N**: the first N requests a device pops are narrated in
plain words (dataplane/device/narrate.py), N shared by the device's threads.

Stats are in stats.py; the narrative's words in narrate.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dataplane.device.c.rec import Recorder, TraceBudget
from dataplane.errors import UsageError
from dataplane.spec.trace import LETTERS, MAX_LENGTH, PREAMBLE

__all__ = ["Instruments"]


class Instruments:
    """What a device's datapaths share for ``--record`` and ``--trace-requests``.

    Open it before the datapaths and close it after their threads ended: the
    C threads hold its recorder and trace budget.  ``UsageError`` if the
    record file cannot be created.
    """

    def __init__(self, record: Path | None = None, trace_requests: int = 0) -> None:
        self.record_path = record
        self.trace_requests = trace_requests
        self._fd = -1
        self.rec: Recorder | None = None
        if record is not None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
            try:
                self._fd = os.open(record, flags, 0o644)
            except OSError as e:
                raise UsageError(f"--record {record}: {e.strerror}") from None
            try:
                os.write(self._fd, PREAMBLE.encode())
                self.rec = Recorder(self._fd, LETTERS, MAX_LENGTH)
            except BaseException:
                os.close(self._fd)
                raise
        self.budget = TraceBudget(trace_requests) if trace_requests > 0 else None

    @property
    def recording(self) -> bool:
        return self.rec is not None

    def recorded(self) -> int:
        """Requests written to the record file so far."""
        return self.rec.count() if self.rec is not None else 0

    def close(self, log: logging.Logger | None = None) -> None:
        if self.rec is None:
            return
        count, skipped, err = self.rec.count(), self.rec.skipped(), self.rec.error()
        self.rec.close()
        self.rec = None
        os.close(self._fd)
        self._fd = -1
        if log is None:
            return
        if err:
            log.error(
                "recording to %s stopped after %d requests: %s",
                self.record_path,
                count,
                os.strerror(err),
            )
        else:
            log.info(
                "recorded %d requests to %s%s",
                count,
                self.record_path,
                f" ({skipped} reads/writes the trace format cannot hold were left out)"
                if skipped
                else "",
            )
