"""The split ring, device side, on in-memory guest RAM built by the driver-side helper."""

from __future__ import annotations

import struct

import pytest
from ringutil import device_memory

from dataplane import errors
from dataplane.device.virtqueue import (
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    SplitQueue,
    vring_need_event,
)
from dataplane.guest.ring import Buf, DriverRing, GuestRam

NUM = 8


@pytest.fixture
def ram():
    r = GuestRam(1 << 20)
    yield r
    r.close()


def device_queue(ram: GuestRam, ring: DriverRing, **kw) -> SplitQueue:
    kw.setdefault("indirect", True)
    return SplitQueue(ring.num, ring.addrs, device_memory(ram), **kw)


def test_need_event_matches_linux_definition():
    assert vring_need_event(0, 1, 0)
    assert not vring_need_event(1, 1, 0)
    assert vring_need_event(0xFFFF, 0, 0xFFFF)  # wraps
    assert not vring_need_event(5, 3, 1)


def test_pop_direct_chain_splits_readable_and_writable(ram):
    ring = DriverRing(ram, NUM)
    a, b, c = ram.alloc(16), ram.alloc(512), ram.alloc(1)
    head = ring.add_chain([Buf(a, 16), Buf(b, 512, True), Buf(c, 1, True)])
    ring.publish([head])
    vq = device_queue(ram, ring)
    chain = vq.pop()
    assert chain is not None and chain.head == head
    assert (chain.out_len, chain.in_len) == (16, 513)
    assert [n for _, _, n in chain.in_] == [512, 1]
    assert vq.pop() is None


def test_pop_indirect_chain(ram):
    ring = DriverRing(ram, NUM)
    bufs = [Buf(ram.alloc(16), 16), Buf(ram.alloc(4096), 4096, True), Buf(ram.alloc(1), 1, True)]
    head = ring.add_chain(bufs, indirect=True)
    ring.publish([head])
    chain = device_queue(ram, ring).pop()
    assert chain.out_len == 16 and chain.in_len == 4097


def test_add_used_publishes_and_wraps(ram):
    ring = DriverRing(ram, NUM)
    vq = device_queue(ram, ring)
    for round_ in range(3 * NUM):
        head = ring.add_chain([Buf(ram.alloc(16), 16), Buf(ram.alloc(1), 1, True)])
        ring.publish([head])
        chain = vq.pop()
        vq.add_used(chain.head, 1)
        vq.flush_used()
        assert ring.get_used() == [(head, 1)], round_
        ram.reset_alloc(ring.used + 4096)


def test_notification_without_event_idx_honours_no_interrupt(ram):
    ring = DriverRing(ram, NUM)
    vq = device_queue(ram, ring)
    assert vq.should_notify()
    ring.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT)
    assert not vq.should_notify()


def test_event_idx_notifies_only_when_used_event_crossed(ram):
    ring = DriverRing(ram, NUM, event_idx=True)
    vq = device_queue(ram, ring, event_idx=True)
    heads = [ring.add_chain([Buf(ram.alloc(16), 16), Buf(ram.alloc(1), 1, True)]) for _ in range(3)]
    ring.publish(heads)
    ring.set_used_event(1)  # interrupt me once used idx passes 1
    chains = [vq.pop() for _ in range(3)]
    vq.add_used(chains[0].head, 1)
    vq.flush_used()
    assert vq.should_notify()  # first notification is always sent
    vq.add_used(chains[1].head, 1)
    vq.flush_used()
    assert vq.should_notify()  # used idx went 1 -> 2, crossing used_event 1
    vq.add_used(chains[2].head, 1)
    vq.flush_used()
    assert not vq.should_notify()  # 2 -> 3 does not cross 1


def test_enable_notification_writes_avail_event_and_sees_late_entries(ram):
    ring = DriverRing(ram, NUM, event_idx=True)
    vq = device_queue(ram, ring, event_idx=True)
    assert vq.enable_notification() is False
    assert ring.avail_event() == 0
    head = ring.add_chain([Buf(ram.alloc(16), 16), Buf(ram.alloc(1), 1, True)])
    ring.publish([head])
    assert vq.enable_notification() is True  # the re-check after the fence finds it
    vq.pop()
    assert vq.enable_notification() is False
    assert ring.avail_event() == 1


def test_resume_from_base(ram):
    ring = DriverRing(ram, NUM)
    heads = [ring.add_chain([Buf(ram.alloc(16), 16), Buf(ram.alloc(1), 1, True)]) for _ in range(2)]
    ring.publish(heads)
    vq = device_queue(ram, ring, last_avail_idx=1)
    assert vq.pop().head == heads[1]


# --- hostile input: one test per class -----------------------------------


def _hdr_status(ram):
    return Buf(ram.alloc(16), 16), Buf(ram.alloc(1), 1, True)


def test_avail_idx_jump(ram):
    ring = DriverRing(ram, NUM)
    ring.set_avail_idx(NUM + 1)
    with pytest.raises(errors.AvailIdxJump):
        device_queue(ram, ring).pop()


def test_head_out_of_range(ram):
    ring = DriverRing(ram, NUM)
    ring.publish([NUM])
    with pytest.raises(errors.BadHeadIndex):
        device_queue(ram, ring).pop()


def test_next_out_of_range(ram):
    ring = DriverRing(ram, NUM)
    ring.write_desc(0, ram.alloc(16), 16, VRING_DESC_F_NEXT, NUM + 3)
    ring.publish([0])
    with pytest.raises(errors.BadNextIndex):
        device_queue(ram, ring).pop()


def test_descriptor_loop(ram):
    ring = DriverRing(ram, NUM)
    a = ram.alloc(16)
    ring.write_desc(0, a, 16, VRING_DESC_F_NEXT, 1)
    ring.write_desc(1, a, 16, VRING_DESC_F_NEXT, 0)
    ring.publish([0])
    with pytest.raises(errors.ChainTooLong):
        device_queue(ram, ring).pop()


def test_chain_longer_than_queue(ram):
    ring = DriverRing(ram, NUM)
    a = ram.alloc(16)
    for i in range(NUM):
        ring.write_desc(i, a, 16, VRING_DESC_F_NEXT, (i + 1) % NUM)
    ring.publish([0])
    with pytest.raises(errors.ChainTooLong):
        device_queue(ram, ring).pop()


def test_indirect_table_longer_than_allowed(ram):
    ring = DriverRing(ram, NUM)
    table = ram.alloc(16 * (NUM + 1))
    ring.write_desc(0, table, 16 * (NUM + 1), VRING_DESC_F_INDIRECT)
    ring.publish([0])
    with pytest.raises(errors.BadIndirectLength):
        device_queue(ram, ring).pop()


def test_indirect_loop(ram):
    ring = DriverRing(ram, NUM)
    table = ram.alloc(32)
    a = ram.alloc(16)
    ram.write(table, struct.pack("<QIHH", a, 16, VRING_DESC_F_NEXT, 1))
    ram.write(table + 16, struct.pack("<QIHH", a, 16, VRING_DESC_F_NEXT, 0))
    ring.write_desc(0, table, 32, VRING_DESC_F_INDIRECT)
    ring.publish([0])
    with pytest.raises(errors.ChainTooLong):
        device_queue(ram, ring).pop()


def test_nested_indirect(ram):
    ring = DriverRing(ram, NUM)
    table = ram.alloc(16)
    ram.write(table, struct.pack("<QIHH", ram.alloc(16), 16, VRING_DESC_F_INDIRECT, 0))
    ring.write_desc(0, table, 16, VRING_DESC_F_INDIRECT)
    ring.publish([0])
    with pytest.raises(errors.NestedIndirect):
        device_queue(ram, ring).pop()


@pytest.mark.parametrize(
    "flags,negotiated",
    [(VRING_DESC_F_INDIRECT, False), (VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, True)],
)
def test_unexpected_indirect(ram, flags, negotiated):
    ring = DriverRing(ram, NUM)
    ring.write_desc(0, ram.alloc(16), 16, flags, 1)
    ring.publish([0])
    with pytest.raises(errors.UnexpectedIndirect):
        device_queue(ram, ring, indirect=negotiated).pop()


def test_indirect_in_the_middle_of_a_chain(ram):
    ring = DriverRing(ram, NUM)
    ring.write_desc(0, ram.alloc(16), 16, VRING_DESC_F_NEXT, 1)
    ring.write_desc(1, ram.alloc(16), 16, VRING_DESC_F_INDIRECT, 0)
    ring.publish([0])
    with pytest.raises(errors.UnexpectedIndirect):
        device_queue(ram, ring).pop()


@pytest.mark.parametrize("length", [0, 15, 24])
def test_indirect_length_not_multiple_of_16(ram, length):
    ring = DriverRing(ram, NUM)
    ring.write_desc(0, ram.alloc(32), length, VRING_DESC_F_INDIRECT)
    ring.publish([0])
    with pytest.raises(errors.BadIndirectLength):
        device_queue(ram, ring).pop()


@pytest.mark.parametrize(
    "addr_of,length",
    [
        (lambda r: r.gpa + r.size - 8, 16),  # runs off the end of RAM
        (lambda r: 0x1000, 16),  # below RAM
        (lambda r: (1 << 64) - 8, 16),  # wraps the address space
    ],
)
def test_buffer_outside_ram(ram, addr_of, length):
    ring = DriverRing(ram, NUM)
    ring.write_desc(0, addr_of(ram), length, 0)
    ring.publish([0])
    with pytest.raises(errors.AddressOutOfRange):
        device_queue(ram, ring).pop()


def test_indirect_table_outside_ram(ram):
    ring = DriverRing(ram, NUM)
    ring.write_desc(0, ram.gpa + ram.size - 16, 32, VRING_DESC_F_INDIRECT)
    ring.publish([0])
    with pytest.raises(errors.AddressOutOfRange):
        device_queue(ram, ring).pop()


def test_length_overflow():
    # Sparse 4 GiB of RAM, so that two 3 GiB buffers are in range and only their sum is bad.
    big_ram = GuestRam(4 << 30)
    try:
        ring = DriverRing(big_ram, NUM)
        big = 0xC0000000
        ring.write_desc(0, big_ram.gpa, big, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1)
        ring.write_desc(1, big_ram.gpa, big, VRING_DESC_F_WRITE, 0)
        ring.publish([0])
        with pytest.raises(errors.LengthOverflow):
            device_queue(big_ram, ring).pop()
    finally:
        big_ram.close()


def test_readable_after_writable(ram):
    ring = DriverRing(ram, NUM)
    ring.write_desc(0, ram.alloc(1), 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1)
    ring.write_desc(1, ram.alloc(16), 16, 0, 0)
    ring.publish([0])
    with pytest.raises(errors.BadLayout):
        device_queue(ram, ring).pop()


def test_ring_outside_ram_is_refused(ram):
    ring = DriverRing(ram, NUM)
    from dataplane.device.virtqueue import RingAddrs

    bad = RingAddrs(ring.desc, ram.gpa + ram.size - 4, ring.used)
    with pytest.raises(errors.AddressOutOfRange):
        SplitQueue(NUM, bad, device_memory(ram))
