"""Per-device I/O limits: the token buckets, on a fake clock (times are passed in, never
slept), the C limiter (Limiter) and its Python model (tests/limiter_model.py) alike, and
byte for byte."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from limiter_model import ModelLimiter, cost_ns

from dataplane.device.c import limiter as climiter
from dataplane.device.limiter import U64_MAX, Limiter, Limits

MS = 1_000_000
S = 1_000_000_000
T0 = 5 * S  # the caller's CLOCK_MONOTONIC, well after boot


@pytest.fixture(params=[ModelLimiter, Limiter], ids=["model", "c"])
def make(request):
    return request.param


def test_an_unlimited_device_never_waits(make):
    lim = make()
    assert all(lim.admit(w, 1 << 20, T0) == 0 for w in (False, True) for _ in range(1000))
    assert (lim.throttled, lim.throttled_ns) == (0, 0)


def test_without_burst_requests_are_spaced_at_the_rate(make):
    lim = make(Limits(iops=1000, burst_ms=0))
    assert [lim.admit(False, 4096, T0) for _ in range(4)] == [0, 1 * MS, 2 * MS, 3 * MS]
    assert lim.admit(True, 4096, T0 + 4 * MS) == 0  # its turn: the bucket has caught up
    assert (lim.throttled, lim.throttled_ns) == (3, 6 * MS)


def test_the_burst_passes_at_once_then_the_rate_holds(make):
    lim = make(Limits(iops=1000, burst_ms=10))
    waits = [lim.admit(False, 512, T0) for _ in range(14)]
    assert waits == [0] * 11 + [1 * MS, 2 * MS, 3 * MS]


def test_an_idle_bucket_fills_up_to_its_burst_and_no_further(make):
    lim = make(Limits(iops=1000, burst_ms=5))
    for _ in range(6):
        lim.admit(False, 512, T0)
    later = T0 + 60 * S  # a minute idle is worth 5 ms of requests, not 60 s
    waits = [lim.admit(False, 512, later) for _ in range(8)]
    assert waits == [0] * 6 + [1 * MS, 2 * MS]


def closed_loop(lim, seconds: int, depth: int, *, is_write=False, nbytes=4096) -> int:
    """A client keeping ``depth`` requests queued: requests started in ``seconds`` of fake time."""
    ready = [T0] * depth  # when each slot may ask again
    started = 0
    end = T0 + seconds * S
    while True:
        i = min(range(depth), key=ready.__getitem__)
        now = ready[i]
        start = now + lim.admit(is_write, nbytes, now)
        if start >= end:
            return started
        started += 1
        ready[i] = start + 20_000  # each request takes 20 us on the device once started


@pytest.mark.parametrize("depth", [1, 8, 128])
def test_a_closed_loop_client_gets_the_rate_and_the_burst(make, depth):
    lim = make(Limits(iops=5000, burst_ms=100))
    started = closed_loop(lim, 10, depth)
    assert 50_000 <= started <= 50_000 + 500 + 1  # 10 s at 5000/s, plus the 100 ms burst


def test_bytes_per_second_count_bytes(make):
    lim = make(Limits(bps=1 << 20, burst_ms=0))
    assert closed_loop(lim, 4, 4, nbytes=64 << 10) == 4 * 16
    lim = make(Limits(read_bps=1 << 20, burst_ms=0))
    assert all(lim.admit(True, 64 << 10, T0) == 0 for _ in range(1000))  # writes are free


def test_direction_limits_leave_the_other_direction_alone(make):
    lim = make(Limits(write_iops=100, burst_ms=0))
    assert closed_loop(lim, 2, 4, is_write=True) == 200
    assert all(lim.admit(False, 4096, T0) == 0 for _ in range(1000))
    lim = make(Limits(iops=1000, read_iops=100, burst_ms=0))
    assert closed_loop(lim, 2, 4) == 200
    assert (
        closed_loop(make(Limits(iops=1000, read_iops=100, burst_ms=0)), 2, 4, is_write=True) == 2000
    )


def test_set_changes_the_rate_live_and_starts_full(make):
    lim = make(Limits(iops=100, burst_ms=0))
    for _ in range(50):
        lim.admit(False, 4096, T0)  # half a second of debt at 100/s
    lim.set(Limits(iops=10_000, burst_ms=0))
    assert lim.admit(False, 4096, T0) == 0
    assert lim.admit(False, 4096, T0) == 100_000
    lim.set(Limits())
    assert lim.admit(False, 4096, T0) == 0


def test_a_huge_request_saturates_instead_of_overflowing(make):
    lim = make(Limits(bps=1, burst_ms=0))
    assert lim.admit(True, U64_MAX, T0) == 0
    assert lim.admit(True, 1, T0) == U64_MAX - T0  # tat saturated at the end of time
    assert cost_ns(U64_MAX, 1) == climiter.cost_ns(U64_MAX, 1) == U64_MAX


def test_threads_sharing_the_c_limiter_lose_no_booking():
    """Four threads book at once (cffi releases the GIL): every booking is in tat."""
    lim = Limiter(Limits(iops=1000, burst_ms=0))
    n = 20_000

    def book():
        for _ in range(n):
            lim.admit(False, 512, T0)

    threads = [threading.Thread(target=book) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lim.tat[climiter.Limit.IOPS] == T0 + 4 * n * MS
    assert lim.throttled == 4 * n - 1
    assert lim.throttled_ns == sum(range(4 * n)) * MS


def test_limits_name_the_key_that_is_wrong():
    assert Limits.from_keys({"iops-limit": 5000, "limit-burst-ms": 0}) == Limits(5000, burst_ms=0)
    with pytest.raises(ValueError, match="write-bps-limit=-1"):
        Limits(write_bps=-1)
    with pytest.raises(ValueError, match="limit-burst-ms=60001"):
        Limits(burst_ms=60_001)
    with pytest.raises(ValueError, match="unknown limit key iops"):
        Limits.from_keys({"iops": 1})
    assert not Limits().limited and Limits(read_bps=1).limited


RATES = st.one_of(st.just(0), st.integers(1, 10_000), st.integers(1, U64_MAX))
LIMITS = st.builds(Limits, RATES, RATES, RATES, RATES, RATES, RATES, st.integers(0, 1000))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), LIMITS),
        st.tuples(
            st.just("admit"),
            st.booleans(),
            st.one_of(st.integers(0, 1 << 20), st.integers(0, U64_MAX)),
            st.integers(0, 10 * MS),
        ),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(first=LIMITS, ops=OPS)
def test_c_and_the_model_book_the_same(first, ops):
    py, c = ModelLimiter(first), Limiter(first)
    now = T0
    for op, *args in ops:
        if op == "set":
            py.set(args[0])
            c.set(args[0])
            continue
        is_write, nbytes, step = args
        now += step
        assert py.admit(is_write, nbytes, now) == c.admit(is_write, nbytes, now)
        assert py.tat == c.tat
    assert (py.throttled, py.throttled_ns) == (c.throttled, c.throttled_ns)
