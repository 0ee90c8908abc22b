"""Differential tests: the Python driver ring and its C twin, operation for operation.

Hypothesis draws a program of driver operations (add chains, direct or
indirect, publish, decide whether to kick, harvest used entries, ask for or
suppress calls, hostile raw writes) interleaved with what a device does to
the ring (pop heads, add used elements, move avail_event and used->flags).
``DriverRing`` runs it over one guest RAM and ``CDriverRing`` (csrc/guest/dp_drv_ring.h,
the bench driver's ring) over an identical one.  After every step the rings
must be byte-identical and every result (heads, kick decisions, used
elements, errors) equal.  Rings start at any index, so the 16-bit indices
wrap.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.guest.c_ring import CDriverRing
from dataplane.guest.ring import Buf, DriverRing, GuestRam
from dataplane.spec import ring as vring

RAM = 1 << 20
U16S = st.integers(0, 0xFFFF)
BUFS = st.lists(
    st.builds(Buf, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.booleans()),
    min_size=1,
    max_size=4,
)
OPS = st.one_of(
    st.tuples(st.just("add"), BUFS, st.booleans()),
    st.tuples(st.just("publish"), st.integers(0, 4)),
    st.tuples(st.just("device_complete"), st.integers(0, 8), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("device_avail_event"), U16S),
    st.tuples(st.just("device_no_notify"), st.booleans()),
    st.tuples(st.just("get_used")),
    st.tuples(st.just("used_event"), U16S),
    st.tuples(st.just("avail_flags"), U16S),
    st.tuples(st.just("raw_desc"), st.integers(0, 255), st.integers(0, 2**64 - 1), U16S),
    st.tuples(st.just("raw_avail_idx"), U16S),
)


class Side:
    """One ring, the device that serves it, and a log of everything it answered."""

    def __init__(self, cls: type[DriverRing], num: int, event_idx: bool, start: int) -> None:
        self.ram = GuestRam(RAM)
        self.ring = cls(self.ram, num, event_idx=event_idx)
        self.unpublished: list[int] = []
        self.device_last_avail = start
        self.device_used_idx = start
        # A ring resumed at ``start`` (as after SET_VRING_BASE): both sides agree on it.
        self.ring.avail_idx = self.ring.last_used_idx = start
        self.ram.write(self.ring.avail + vring.AVAIL_IDX, vring.U16.pack(start))
        self.ram.write(self.ring.used + vring.USED_IDX, vring.U16.pack(start))

    def u16(self, gpa: int) -> int:
        return vring.U16.unpack(self.ram.read(gpa, 2))[0]

    def step(self, op: tuple) -> object:
        ring, name = self.ring, op[0]
        if name == "add":
            try:
                head = ring.add_chain(op[1], indirect=op[2])
            except (RuntimeError, IndexError) as e:
                return type(e).__name__
            self.unpublished.append(head)
            return head
        if name == "publish":
            heads, self.unpublished = self.unpublished[: op[1]], self.unpublished[op[1] :]
            old = ring.avail_idx
            ring.publish(heads)
            return heads, ring.needs_kick(old)
        if name == "device_complete":
            return self.device_complete(op[1], op[2])
        if name == "device_avail_event":
            self.ram.write(ring.used + vring.avail_event_offset(ring.num), vring.U16.pack(op[1]))
        elif name == "device_no_notify":
            self.ram.write(
                ring.used + vring.USED_FLAGS, vring.U16.pack(vring.VRING_USED_F_NO_NOTIFY * op[1])
            )
        elif name == "get_used":
            return ring.get_used(), sorted(ring.free)
        elif name == "used_event":
            ring.set_used_event(op[1])
        elif name == "avail_flags":
            ring.set_avail_flags(op[1])
        elif name == "raw_desc":
            i = op[1] % ring.num
            ring.write_desc(
                i, op[2], op[3], op[3] & (vring.VRING_DESC_F_NEXT | vring.VRING_DESC_F_INDIRECT)
            )
        elif name == "raw_avail_idx":
            ring.set_avail_idx(op[1])
        return None

    def device_complete(self, n: int, length: int) -> list[int]:
        """Pop up to ``n`` published heads and put them in the used ring, as a device does."""
        ring = self.ring
        avail_idx = self.u16(ring.avail + vring.AVAIL_IDX)
        done = []
        while len(done) < n and self.device_last_avail != avail_idx:
            head = self.u16(ring.avail + vring.avail_ring_slot(ring.num, self.device_last_avail))
            self.device_last_avail = (self.device_last_avail + 1) & 0xFFFF
            slot = ring.used + vring.used_ring_slot(ring.num, self.device_used_idx)
            self.ram.write(slot, vring.USED_ELEM.pack(head, length))
            self.device_used_idx = (self.device_used_idx + 1) & 0xFFFF
            done.append(head)
        self.ram.write(ring.used + vring.USED_IDX, vring.U16.pack(self.device_used_idx))
        return done

    def ring_bytes(self) -> bytes:
        """Everything the ring wrote: its three parts and the indirect tables after them."""
        return self.ram.read(self.ram.gpa, self.ram.off(self.ram.alloc(0, 1)))

    def close(self) -> None:
        self.ram.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num=st.sampled_from([1, 2, 4, 8, 256]),
    event_idx=st.booleans(),
    start=st.one_of(st.just(0), st.integers(0xFFF0, 0xFFFF), U16S),
    ops=st.lists(OPS, max_size=40),
)
def test_python_and_c_driver_rings_agree(num, event_idx, start, ops):
    py = Side(DriverRing, num, event_idx, start)
    c = Side(CDriverRing, num, event_idx, start)
    try:
        for i, op in enumerate(ops):
            assert py.step(op) == c.step(op), f"step {i}: {op}"
            assert py.ring_bytes() == c.ring_bytes(), f"rings differ after step {i}: {op}"
            assert (py.ring.avail_idx, py.ring.last_used_idx) == (
                c.ring.avail_idx,
                c.ring.last_used_idx,
            )
    finally:
        py.close()
        c.close()


@pytest.mark.parametrize("cls", [DriverRing, CDriverRing])
def test_event_idx_suppresses_kicks_until_the_device_asks(cls, ram):
    ring = cls(ram, 8, event_idx=True)
    ram.write(
        ring.used + vring.avail_event_offset(8), vring.U16.pack(2)
    )  # kick me when idx passes 2
    kicks = []
    for _ in range(4):
        old = ring.avail_idx
        ring.publish([ring.add_chain([Buf(0x1000, 16)])])
        kicks.append(ring.needs_kick(old))
    assert kicks == [False, False, True, False]


@pytest.mark.parametrize("cls", [DriverRing, CDriverRing])
def test_used_event_and_indirect_table_layout(cls, ram):
    ring = cls(ram, 4)
    head = ring.add_chain([Buf(0x1000, 16), Buf(0x2000, 512, True), Buf(0x3000, 1, True)],
                          indirect=True)  # fmt: skip
    ring.set_used_event(0x1234)
    assert vring.U16.unpack(ram.read(ring.avail + vring.used_event_offset(4), 2))[0] == 0x1234
    table, length, flags, _ = vring.DESC.unpack(ram.read(ring.desc, vring.DESC.size))
    assert (head, length, flags) == (0, 48, vring.VRING_DESC_F_INDIRECT)
    assert ram.read(table + 32 + 14, 2) == b"\0\0"  # the last entry links nowhere


def test_the_binding_checks_arguments_before_c_writes(ram):
    ring = CDriverRing(ram, 4)
    with pytest.raises(ValueError, match="not below the queue size"):
        ring.write_desc(4, 0, 0, 0)
    with pytest.raises(ValueError, match="not in guest RAM"):
        ring.write_indirect(0, ram.gpa + ram.size - 16, [Buf(0, 1), Buf(0, 1)])
    with pytest.raises(ValueError, match="buffer length"):
        ring.write_chain([0], [Buf(0, 2**32)])
    with pytest.raises(OSError, match="Invalid argument"):
        CDriverRing(ram, 3)
