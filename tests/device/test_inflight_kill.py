"""Inflight tracking under SIGKILL at any instant, and C against its Python model.

A guest keeps requests in flight on the in-memory ring; the device pops them and
completes them out of order, in batches, tracked in an inflight area.  The backend is
killed at a chosen store into the area (the Python model: every release store is
a point where a kill may land; C: between its calls) or at the publication of used->idx,
and a new backend recovers from the same bytes, again and again.  The guest must see
every request complete exactly once: a completion for a request it does not have
outstanding, or with another request's id, is a request run twice; one never
completed after the last recovery drains the ring is a request lost.  At each
recovery the other implementation recovers a copy of the same bytes: same result,
same bytes.  And C and Python, fed the same operations (hostile ones too), leave
byte-identical areas.
"""

from __future__ import annotations

import contextlib
import random
import struct
from unittest import mock

import inflight_support
from hypothesis import given, settings
from hypothesis import strategies as st
from inflight_support import CInflightQueue, InflightModel, queue_size_bytes
from ringutil import device_memory

from dataplane.device.c import inflight as native
from dataplane.device.inflight import Recovery
from dataplane.device.virtqueue import SplitQueue
from dataplane.errors import BadInflightArea
from dataplane.guest.ring import Buf, DriverRing, GuestRam

NUM = 8
_U64 = struct.Struct("<Q")


class Kill(Exception):
    """SIGKILL: the backend stops between two stores."""


class Clock:
    """Counts the points where a kill may land; raises Kill at point ``at``."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.n = 0

    def tick(self) -> None:
        if self.n == self.at:
            raise Kill
        self.n += 1


class KillingStores:
    """The ordered stores, but a kill may land just before and just after every ordered store
    into the area: between them lie only plain stores that the next ordered one orders,
    so these are all the prefixes of the model's stores that memory can hold."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def store8_release(self, addr, value):
        self._clock.tick()
        native.store8_release(addr, value)
        self._clock.tick()

    def store16_release(self, addr, value):
        self._clock.tick()
        native.store16_release(addr, value)
        self._clock.tick()

    def __getattr__(self, name):
        return getattr(native, name)


class KilledCQueue(CInflightQueue):
    """C, killed between its calls (a C call runs to its end under the GIL here)."""

    def __init__(self, view: memoryview, desc_num: int, clock: Clock) -> None:
        super().__init__(view, desc_num)
        self.clock = clock

    def get(self, head):
        self.clock.tick()
        super().get(head)

    def pre_put(self, head):
        self.clock.tick()
        super().pre_put(head)

    def post_put(self, used_idx):
        self.clock.tick()
        super().post_put(used_idx)


class Guest:
    """The driver: each request's buffer holds its id; the device completes with it as len."""

    def __init__(self, ram: GuestRam) -> None:
        self.ram = ram
        self.drv = DriverRing(ram, NUM)
        self.buf = [ram.alloc(8) for _ in range(NUM)]
        self.outstanding: dict[int, int] = {}
        self.next_id = 1
        self.completed: list[int] = []

    def submit(self, n: int) -> None:
        heads = []
        for _ in range(min(n, len(self.drv.free))):
            head = self.drv.free[0]
            self.ram.write(self.buf[head], _U64.pack(self.next_id))
            assert self.drv.add_chain([Buf(self.buf[head], 8)]) == head
            self.outstanding[head] = self.next_id
            self.next_id += 1
            heads.append(head)
        self.drv.publish(heads)

    def harvest(self) -> None:
        for head, length in self.drv.get_used():
            assert head in self.outstanding, f"head {head} completed while not outstanding"
            assert length == self.outstanding.pop(head), f"head {head}: another request's id"
            self.completed.append(length)


class Device:
    """One life of the backend: recover, then pop and complete out of order."""

    def __init__(self, guest: Guest, area: bytearray, impl, other, clock: Clock) -> None:
        self.guest = guest
        self.clock = clock
        used = guest.drv.used_idx()
        twin = bytearray(area)
        self.q = impl(memoryview(area), NUM)
        rec = self.q.recover(used, NUM)  # may be killed too: recovery is a life of its own
        assert other(memoryview(twin), NUM).recover(used, NUM) == rec
        assert twin == area
        self.mem = device_memory(guest.ram)
        self.vq = SplitQueue(NUM, guest.drv.addrs, self.mem, last_avail_idx=rec.last_avail_idx)
        self.pending = list(rec.heads)
        # Resubmitted in pop order, which is the guest's submission order: ids increase.
        ids = [self.request_id(h) for h in rec.heads]
        assert ids == sorted(ids), f"resubmitted out of order: {ids}"

    def request_id(self, head: int) -> int:
        """Run the request: read the id its buffer holds (the descriptor's addr)."""
        (addr,) = _U64.unpack(self.guest.ram.read(self.guest.drv.desc + 16 * head, 8))
        return _U64.unpack(self.guest.ram.read(addr, 8))[0]

    def pop(self) -> None:
        chain = self.vq.pop()
        if chain is not None:
            self.q.get(chain.head)
            self.pending.append(chain.head)

    def complete(self, heads: list[int]) -> None:
        for h in heads:
            self.vq.add_used(h, self.request_id(h))
            self.q.pre_put(h)
        self.clock.tick()
        self.vq.flush_used()
        self.q.post_put(self.vq.used_idx)
        for h in heads:
            self.pending.remove(h)


def live(device: Device, guest: Guest, rng: random.Random, steps: int, submit: bool) -> None:
    for _ in range(steps):
        op = rng.randrange(4)
        if op == 0 and submit:
            guest.submit(rng.randint(1, NUM))
        elif op == 1:
            guest.harvest()
        elif op == 2:
            for _ in range(rng.randint(1, NUM)):
                device.pop()
        elif device.pending:
            k = rng.randint(1, len(device.pending))
            device.complete(rng.sample(device.pending, k))


def drain(device: Device, guest: Guest) -> None:
    """The last life: no new requests; everything outstanding completes."""
    for _ in range(2 * NUM):
        guest.harvest()
        device.pop()
        if device.pending:
            device.complete(list(device.pending))
    guest.harvest()


def python_killed(clock: Clock):
    """The Python model, with a kill point at each of its ordered stores."""
    return InflightModel, mock.patch.object(inflight_support, "cinflight", KillingStores(clock))


def c_killed(clock: Clock):
    return lambda view, n: KilledCQueue(view, n, clock), contextlib.nullcontext()


def run_lives(killed, other, seed: int, kills: list[int]) -> Guest:
    rng = random.Random(seed)
    ram = GuestRam(1 << 16)
    try:
        guest = Guest(ram)
        area = bytearray(queue_size_bytes(NUM))
        for at in [*kills, None]:
            clock = Clock(at)
            impl, killing = killed(clock)
            try:
                with killing:
                    device = Device(guest, area, impl, other, clock)
                    try:
                        live(device, guest, rng, 40, submit=True)
                        if at is None:
                            drain(device, guest)
                    finally:
                        device.mem.close()
            except Kill:
                guest.harvest()  # the guest sees what was published before the kill
        assert not guest.outstanding, f"requests lost: {guest.outstanding}"
        assert sorted(guest.completed) == list(range(1, guest.next_id))
        return guest
    finally:
        ram.close()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), kills=st.lists(st.integers(0, 240), min_size=1, max_size=8))
def test_the_model_killed_at_any_store_loses_nothing_and_reruns_nothing(seed, kills):
    guest = run_lives(python_killed, CInflightQueue, seed, kills)
    assert guest.next_id > 1


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), kills=st.lists(st.integers(0, 60), min_size=1, max_size=8))
def test_c_killed_between_calls_loses_nothing_and_reruns_nothing(seed, kills):
    run_lives(c_killed, InflightModel, seed, kills)


def test_without_tracking_a_kill_reruns_or_loses_requests():
    """The property above can fail: recovering as QEMU does without the area (popping again
    from used->idx, resubmitting nothing) is caught at once."""

    class Forgetful(InflightModel):
        def recover(self, used_idx, num):
            return Recovery(False, 0, (), used_idx, used_idx)

    failures = 0
    for seed in range(20):
        try:
            run_lives(
                lambda clock: (Forgetful, contextlib.nullcontext()), Forgetful, seed, [30] * 3
            )
        except AssertionError:
            failures += 1
    assert failures > 10


# -- C and Python, operation for operation ---------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("get"), st.integers(0, NUM + 1)),
        st.tuples(st.just("pre_put"), st.integers(0, NUM + 1)),
        st.tuples(st.just("post_put"), st.integers(0, 0xFFFF)),
        st.tuples(st.just("recover"), st.integers(0, 0xFFFF), st.sampled_from([4, NUM, 2 * NUM])),
        st.tuples(st.just("poke"), st.integers(0, queue_size_bytes(NUM) - 1), st.integers(0, 255)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, fresh=st.booleans())
def test_c_and_the_model_make_the_same_area(ops, fresh):
    areas = [bytearray(queue_size_bytes(NUM)) for _ in range(2)]
    queues = [InflightModel(memoryview(areas[0]), NUM), CInflightQueue(memoryview(areas[1]), NUM)]
    if not fresh:
        for q in queues:
            q.recover(0, NUM)
    for op, *args in ops:
        results = []
        for area, q in zip(areas, queues, strict=True):
            if op == "poke":  # the frontend writes the area under us
                area[args[0]] = args[1]
                continue
            try:
                results.append(getattr(q, op)(*args))
            except BadInflightArea as e:
                results.append(str(e))
        assert results[:1] == results[1:], op
        assert areas[0] == areas[1], op
        assert (queues[0].counter, queues[0].batch) == (queues[1].counter, queues[1].batch), op
