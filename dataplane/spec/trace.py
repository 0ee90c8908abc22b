"""The request trace format: one line per virtio-blk request.

A trace is UTF-8 text.  The first line is the header ``# dataplane-trace v1``;
other lines starting with ``#`` and blank lines are comments.  Every other line
is one request, five fields separated by single spaces::

    time_ns queue type sector length

- ``time_ns``: when the backend popped the request, in ns since the first
  request of the trace (non-negative integer);
- ``queue``: the virtqueue index;
- ``type``: ``R`` read, ``W`` write, ``F`` flush, ``D`` discard, ``Z`` write-zeroes
  (``LETTERS``, in the order of ``KINDS``);
- ``sector``: the first 512-byte sector (the header's sector for R/W, the
  first segment's sector for D/Z, 0 for F);
- ``length``: bytes (R/W: the data length; D/Z: the sectors of all segments
  times 512; F: 0).  Always a multiple of 512.

The device writes it (``dataplane serve --record``, through csrc/device/dp_rec.c,
which takes ``PREAMBLE``, ``LETTERS`` and ``MAX_LENGTH`` from here); the bench
reads and writes it (dataplane/guest/bench/trace.py).
"""

from __future__ import annotations

from dataplane.spec.blk import SECTOR_SIZE
from dataplane.spec.kinds import LETTERS, TRACE_KINDS

HEADER = "# dataplane-trace v1"
PREAMBLE = HEADER + "\n# time_ns queue type sector length\n"  # what a writer starts a file with
SECTOR = SECTOR_SIZE
MAX_LENGTH = 16 << 20  # reads and writes
MAX_SEGMENT_BYTES = 0xFFFFFFFF // SECTOR * SECTOR  # discard / write-zeroes
KINDS = TRACE_KINDS

__all__ = ["HEADER", "KINDS", "LETTERS", "MAX_LENGTH", "MAX_SEGMENT_BYTES", "PREAMBLE", "SECTOR"]
