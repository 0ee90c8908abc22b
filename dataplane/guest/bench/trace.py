"""Reading and writing request traces (the format: dataplane/spec/trace.py).

``TraceWriter.record`` writes a trace from Python (it takes the virtio-blk
type code); ``read_trace`` parses a file into columns, for ``dataplane bench
--replay``.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from dataplane.errors import UsageError
from dataplane.spec.kinds import DATA_KINDS, trace_kind_of
from dataplane.spec.trace import (
    HEADER,
    KINDS,
    LETTERS,
    MAX_LENGTH,
    MAX_SEGMENT_BYTES,
    PREAMBLE,
    SECTOR,
)

__all__ = ["KINDS", "SECTOR", "Trace", "TraceWriter", "read_trace"]

_KIND_OF_LETTER = {c: i for i, c in enumerate(LETTERS)}


class TraceWriter:
    """Appends requests to a trace file; thread-safe, buffered.

    A caller (tests, micro benchmarks; ``serve --record`` writes through
    csrc/device/dp_rec.c instead) calls ``record(queue, virtio_type, sector, length)``
    per request, from any thread; times are taken from ``clock`` (ns) relative
    to the first recorded request.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock=time.monotonic_ns, buffering: int = 1 << 20
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._t0: int | None = None
        self._file: TextIO | None = open(self.path, "w", buffering=buffering)  # noqa: SIM115
        self._file.write(PREAMBLE)
        self.count = 0

    def record(
        self, queue: int, virtio_type: int, sector: int, length: int, t_ns: int | None = None
    ) -> bool:
        """Record one request by its virtio-blk type; False (nothing written) for other types."""
        kind = trace_kind_of(virtio_type)
        if kind is None:
            return False
        self.record_kind(queue, KINDS[kind], sector, length, t_ns)
        return True

    def record_kind(
        self, queue: int, kind: str, sector: int, length: int, t_ns: int | None = None
    ) -> None:
        """Record one request by kind name (``"read"``, ``"write"``, ...)."""
        letter = LETTERS[KINDS.index(kind)]
        with self._lock:
            if self._file is None:
                raise ValueError(f"trace {self.path} is closed")
            now = self._clock() if t_ns is None else t_ns
            if self._t0 is None:
                self._t0 = now
            self._file.write(f"{max(0, now - self._t0)} {queue} {letter} {sector} {length}\n")
            self.count += 1

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Trace:
    """A parsed trace, as columns (one entry per request, in file order)."""

    path: Path
    t_ns: array = field(default_factory=lambda: array("Q"))
    queue: array = field(default_factory=lambda: array("I"))
    kind: array = field(default_factory=lambda: array("B"))
    sector: array = field(default_factory=lambda: array("Q"))
    length: array = field(default_factory=lambda: array("I"))

    def __len__(self) -> int:
        return len(self.t_ns)

    def mix(self) -> dict[str, int]:
        """Requests per kind name."""
        counts = [0] * len(KINDS)
        for k in self.kind:
            counts[k] += 1
        return dict(zip(KINDS, counts, strict=True))

    def max_data_length(self) -> int:
        """The longest read or write (what a slot's buffer must hold)."""
        return max(
            (n for k, n in zip(self.kind, self.length, strict=True) if k in DATA_KINDS),
            default=0,
        )

    def end_sector(self) -> int:
        """One past the highest sector any request touches."""
        return max(
            (s + n // SECTOR for s, n in zip(self.sector, self.length, strict=True)), default=0
        )


def _bad(path: Path, lineno: int, why: str) -> UsageError:
    return UsageError(f"trace {path}, line {lineno}: {why}")


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Parse a trace file; any malformed line is a UsageError naming the line."""
    p = Path(path)
    try:
        f = open(p, encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise UsageError(f"cannot read trace {p}: {e.strerror}") from None
    trace = Trace(p)
    with f:
        first = f.readline().rstrip("\n")
        if first.strip() != HEADER:
            raise _bad(p, 1, f"expected the header {HEADER!r}, not {first[:40]!r}")
        for lineno, line in enumerate(f, start=2):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 5:
                raise _bad(p, lineno, f"expected 5 fields, got {len(fields)}")
            letter = fields[2]
            if letter not in _KIND_OF_LETTER:
                raise _bad(p, lineno, f"unknown type {letter!r} (one of {', '.join(LETTERS)})")
            try:
                t, q, sector, length = (int(fields[i]) for i in (0, 1, 3, 4))
            except ValueError:
                raise _bad(p, lineno, "time, queue, sector and length must be integers") from None
            if min(t, q, sector, length) < 0:
                raise _bad(p, lineno, "negative value")
            kind = _KIND_OF_LETTER[letter]
            limit = MAX_LENGTH if kind in DATA_KINDS else MAX_SEGMENT_BYTES
            if length % SECTOR or length > limit or (kind in DATA_KINDS and length == 0):
                raise _bad(p, lineno, f"length {length} must be a multiple of 512 up to {limit}")
            trace.t_ns.append(t)
            trace.queue.append(q)
            trace.kind.append(kind)
            trace.sector.append(sector)
            trace.length.append(length)
    if not len(trace):
        raise UsageError(f"trace {p} holds no requests")
    return trace
