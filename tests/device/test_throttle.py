"""The Python loop's held request (device/datapath/throttle.py): what it books, how long the
blocking wait may last, and when the request may go.  The C loop's twin (dp_loop.c
limit_wait) is held to the same behaviour end to end by test_limits.py."""

from __future__ import annotations

from dataplane.device.blk import BlkRequest
from dataplane.device.datapath.throttle import MAX_WAIT_MS, Throttle
from dataplane.device.engines.base import IoRequest, Op
from dataplane.device.limiter import Limiter, Limits

MS = 1_000_000
T0 = 5_000_000_000


def _req(op: Op, length: int = 4096) -> BlkRequest:
    return BlkRequest(head=0, status_at=(0, 1), used_len=1, io=IoRequest(op, 0, length))


def test_nothing_is_held_without_a_limiter_or_for_a_flush():
    th = Throttle()
    assert not th.hold(0, _req(Op.READ), T0) and th.held is None
    th.limiter = Limiter(Limits(iops=1, burst_ms=0))
    assert not th.hold(0, _req(Op.FLUSH), T0) and th.limiter.throttled == 0


def test_a_request_over_the_limit_is_held_until_its_wait_is_over():
    th = Throttle()
    th.limiter = Limiter(Limits(iops=1000, burst_ms=0))
    assert not th.hold(0, _req(Op.READ), T0)  # the first passes
    req = _req(Op.WRITE)
    assert th.hold(3, req, T0) and th.held == (3, req) and th.until == T0 + MS
    assert th.timeout(-1, T0) == 0.001 and th.timeout(5.0, T0) == 0.001
    assert th.timeout(0, T0) == 0  # a pass that must not block stays so
    assert not th.due(T0 + MS - 1) and th.due(T0 + MS)
    assert th.release() == (3, req) and th.held is None


def test_a_discard_books_its_bytes_as_a_write():
    th = Throttle()
    th.limiter = Limiter(Limits(write_bps=1 << 20, burst_ms=0))
    assert not th.hold(0, _req(Op.DISCARD, 1 << 20), T0)
    assert th.hold(0, _req(Op.READ), T0) is False  # reads are not write-limited
    assert th.hold(0, _req(Op.WRITE_ZEROES, 512), T0) and th.until == T0 + 1_000_000_000


def test_new_limits_let_the_held_request_go_and_the_wait_fits_epoll():
    th = Throttle()
    th.limiter = Limiter(Limits(bps=1, burst_ms=0))
    th.hold(0, _req(Op.READ), T0)
    assert th.hold(0, _req(Op.READ), T0)  # 4096 s
    assert th.timeout(-1, T0) == 4096.0
    assert not th.due(T0 + MS)
    th.limiter.set(Limits())
    assert th.due(T0 + MS)
    th.release()
    th.limiter.set(Limits(bps=1, burst_ms=0))
    th.hold(0, _req(Op.READ, 1 << 30), T0)
    assert th.hold(0, _req(Op.READ), T0)  # a billion seconds
    assert th.timeout(-1, T0) == MAX_WAIT_MS / 1000
