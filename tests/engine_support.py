"""Driving an engine by hand, for the engine tests: buffers, data patterns, submit and reap.

Any engine with ``submit``, ``reap`` and ``completion_fd`` will do: the Python engines,
and the remote C engines (``dataplane.device.engines.remote.RemoteEngine``).
"""

from __future__ import annotations

import functools
import mmap
import os
import select
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from waits import WAIT_S

from dataplane.device.c import ffi
from dataplane.device.engines import Engine, IoRequest
from dataplane.device.engines.base import EventfdEngine
from dataplane.device.io_request import Op


class Buffers:
    """Page-aligned anonymous memory, handed to engines by address."""

    def __init__(self, size: int) -> None:
        self.mem = mmap.mmap(-1, size)
        self.addr = int(ffi.cast("uintptr_t", ffi.from_buffer(self.mem)))

    def iov(self, *lengths: int, start: int = 0, gap: int = 0) -> list[tuple[int, int]]:
        """Iovecs of ``lengths`` from ``start``; ``gap`` bytes between them scatter them."""
        out, pos = [], start
        for n in lengths:
            out.append((self.addr + pos, n))
            pos += n + gap
        return out

    def put(self, iov: list[tuple[int, int]], data: bytes) -> None:
        """``data`` spread over ``iov``, as a guest lays out a write."""
        at = 0
        for addr, n in iov:
            self.mem[addr - self.addr : addr - self.addr + n] = data[at : at + n]
            at += n

    def get(self, iov: list[tuple[int, int]]) -> bytes:
        """What ``iov`` holds, gathered (what a read brought)."""
        return b"".join(self.mem[a - self.addr : a - self.addr + n] for a, n in iov)


@functools.cache
def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def collect(engine: Any, want: Collection[int], timeout: float = WAIT_S) -> dict[int, int]:
    """Wait on completion_fd and reap until every token in ``want`` is back, each once."""
    results: dict[int, int] = {}
    poller = select.poll()
    poller.register(engine.completion_fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while len(results) < len(want):
        left = deadline - time.monotonic()
        assert left > 0 and poller.poll(int(left * 1000) + 1), (
            f"timed out; missing {set(want) - results.keys()}"
        )
        for token, res in engine.reap():
            assert token in want and token not in results, f"token {token} unexpected or repeated"
            results[token] = res
    return results


def run(engine: Any, reqs: Sequence[IoRequest], timeout: float = WAIT_S) -> dict[int, int]:
    """Submit ``reqs`` as one batch and collect every result."""
    engine.submit(reqs)
    want = {r.token for r in reqs}
    assert len(want) == len(reqs)
    return collect(engine, want, timeout)


def run_one(engine: Any, req: IoRequest, timeout: float = WAIT_S) -> int:
    return run(engine, [req], timeout)[req.token]


def pump(engine: Any, until: Callable[[], bool], timeout: float = WAIT_S) -> list[tuple[int, int]]:
    """Run the engine (wait on completion_fd, reap) until ``until()``; what it reaped.

    For an engine that has work of its own, such as reconnecting, as a dataplane thread
    would run it between requests.
    """
    poller = select.poll()
    poller.register(engine.completion_fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    reaped: list[tuple[int, int]] = []
    while not until():
        left = deadline - time.monotonic()
        assert left > 0, "timed out"
        poller.poll(min(int(left * 1000) + 1, 50))
        reaped += engine.reap()
    return reaped


class HeldEngine(Engine):
    """A Python engine (``inner``, an eventfd engine: threads or null) whose completions
    wait until the test lets them go with ``release``: requests in flight on the Python
    datapath for as long as a test needs, where the C datapath has test-delay."""

    def __init__(self, inner: EventfdEngine) -> None:
        super().__init__(inner.fd, inner.queue_depth)
        self.name = inner.name  # type: ignore[misc]
        self.inner = inner
        self.completion_fd = inner.completion_fd
        self._held: list[tuple[int, int]] = []
        self._released = threading.Event()

    def _submit(self, reqs: Sequence[IoRequest]) -> None:
        self.inner.submit(reqs)

    def reap(self) -> list[tuple[int, int]]:
        self._held += self.inner.reap()
        if not self._released.is_set():
            return []
        done, self._held = self._held, []
        return done

    def release(self) -> None:
        """From any thread: the completions held so far, and all later ones, go through."""
        self._released.set()
        os.eventfd_write(self.inner.completion_fd, 1)  # the datapath reaps them

    def close(self) -> None:
        self.inner.close()


def mixed_batch(buf: Buffers, block: int, n: int = 48) -> list[IoRequest]:
    """``n`` requests, one ``2 * block`` apart: writes of ``pattern(block, seed=token)`` (every
    other one with dsync), reads into two halves, and write-zeroes, in turn."""
    reqs = []
    for i in range(n):
        off = i * 2 * block
        if i % 3 == 0:
            buf.mem[off : off + block] = pattern(block, seed=i)
            iov = buf.iov(block, start=off)
            reqs.append(IoRequest(Op.WRITE, offset=off, length=block, token=i, iov=iov,
                                  dsync=i % 2 == 0))  # fmt: skip
        elif i % 3 == 1:
            iov = buf.iov(block // 2, block // 2, start=off)
            reqs.append(IoRequest(Op.READ, offset=off, length=block, token=i, iov=iov))
        else:
            reqs.append(IoRequest(Op.WRITE_ZEROES, offset=off, length=block, token=i))
    return reqs


def check_mixed_batch(
    reqs: Sequence[IoRequest], buf: Buffers, disk: bytes, original: bytes, block: int
) -> None:
    """After ``mixed_batch``'s requests ran on a disk that held ``original``: each write is on
    ``disk``, each read in ``buf``, each zeroed block zero."""
    for r in reqs:
        got = disk[r.offset : r.offset + block]
        if r.op == Op.WRITE:
            assert got == pattern(block, seed=r.token)
        elif r.op == Op.READ:
            assert buf.mem[r.offset : r.offset + block] == original[r.offset : r.offset + block]
        else:
            assert got == bytes(block)
