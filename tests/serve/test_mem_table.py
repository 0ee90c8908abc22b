"""CONFIGURE_MEM_SLOTS on the table of regions: ADD_MEM_REG and REM_MEM_REG make new
tables, each region checked as SET_MEM_TABLE's are; a removed region stays mapped until
its caller closes it."""

from __future__ import annotations

import os

import pytest

from dataplane.device.memory import MAX_MEM_SLOTS, GuestMemory, MemoryRegion, RegionSpec
from dataplane.errors import AddressOutOfRange, ProtocolError

SIZE = 64 << 10
BASE_GPA, BASE_UVA = 0x100000, 0x7F0000000000


@pytest.fixture
def fds():
    opened: list[int] = []

    def memfd(size: int = SIZE, fill: int = 0) -> int:
        fd = os.memfd_create("dimm")
        os.ftruncate(fd, size)
        if fill:
            os.pwrite(fd, bytes([fill]) * size, 0)
        opened.append(fd)
        return fd

    yield memfd
    for fd in opened:
        os.close(fd)


def dimm(i: int, *, offset: int = 0, size: int = SIZE) -> RegionSpec:
    """The i-th DIMM: guest and frontend addresses one slot apart."""
    return RegionSpec(BASE_GPA + i * 0x100000, size, BASE_UVA + i * 0x100000, offset)


@pytest.fixture
def base(fds):
    mem = GuestMemory([MemoryRegion(dimm(0), fds(fill=0xB0))])
    yield mem
    mem.close()


def read(mem: GuestMemory, gpa: int, n: int) -> bytes:
    return b"".join(bytes(r.view[off : off + k]) for r, off, k in mem.gpa_segments(gpa, n))


def test_add_region_makes_a_new_table_and_leaves_the_old_one(base, fds):
    new = base.add_region(dimm(1), fds(fill=0xD1))
    assert [r.gpa for r in new.regions] == [dimm(0).guest_phys_addr, dimm(1).guest_phys_addr]
    assert new.regions[0] is base.regions[0]  # shared: swapped, not copied
    assert read(new, dimm(1).guest_phys_addr + 10, 4) == b"\xd1" * 4
    assert new.uva_to_gpa(dimm(1).userspace_addr + 8, 8) == dimm(1).guest_phys_addr + 8
    with pytest.raises(AddressOutOfRange):
        read(base, dimm(1).guest_phys_addr, 4)
    new.regions[1].close()


def test_the_added_region_is_mapped_from_its_offset_and_the_fd_may_close(base):
    fd = os.memfd_create("dimm")
    os.ftruncate(fd, 2 * SIZE)
    os.pwrite(fd, b"\xee" * SIZE, SIZE)
    new = base.add_region(dimm(1, offset=SIZE), fd)
    os.close(fd)  # the mapping keeps the memory: the caller closes the fd after ADD_MEM_REG
    assert read(new, dimm(1).guest_phys_addr, 2) == b"\xee\xee"
    new.regions[1].close()


def test_dimms_added_one_by_one_each_translate(base, fds):
    mem = base
    for i in range(1, 17):
        mem = mem.add_region(dimm(i), fds(fill=i))
    assert len(mem.regions) == 17
    assert all(read(mem, dimm(i).guest_phys_addr + SIZE - 1, 1) == bytes([i]) for i in range(1, 17))
    for r in mem.regions[1:]:
        r.close()


@pytest.mark.parametrize(
    ("spec", "fd_size", "why"),
    [
        (dimm(0), SIZE, "overlap"),
        (RegionSpec(BASE_GPA + SIZE // 2, SIZE, BASE_UVA + 0x900000, 0), SIZE, "overlap"),
        (dimm(1, size=0), SIZE, "size 0"),
        (dimm(1, offset=SIZE // 2), SIZE, "needs 98304 bytes of its fd, which has only 65536"),
        (RegionSpec((1 << 64) - SIZE // 2, SIZE, BASE_UVA, 0), SIZE, "wraps the guest-physical"),
        (RegionSpec(0x900000, SIZE, (1 << 64) - 4096, 0), SIZE, "wraps the frontend"),
    ],
    ids=["same", "overlapping", "empty", "past-the-fd", "gpa-wraps", "uva-wraps"],
)
def test_add_region_checks_as_set_mem_table_does(base, fds, spec, fd_size, why):
    with pytest.raises(ProtocolError, match=why):
        base.add_region(spec, fds(fd_size))
    assert len(base.regions) == 1


def test_add_region_refuses_past_the_slots(base, fds):
    two = base.add_region(dimm(1), fds())
    with pytest.raises(ProtocolError, match="all 2 memory slots are in use"):
        two.add_region(dimm(2), fds(), max_slots=2)
    assert MAX_MEM_SLOTS >= 256  # issue 11: offer at least 256
    two.regions[1].close()


def test_remove_region_by_addresses_and_size_ignoring_the_offset(base, fds):
    mem = base.add_region(dimm(1), fds(fill=0xD1)).add_region(dimm(2), fds(fill=0xD2))
    smaller, gone = mem.remove_region(dimm(1, offset=0x12345000))
    assert [r.gpa for r in smaller.regions] == [dimm(0).guest_phys_addr, dimm(2).guest_phys_addr]
    assert gone.gpa == dimm(1).guest_phys_addr
    assert bytes(gone.view[:2]) == b"\xd1\xd1"  # still mapped: the old table may be in use
    with pytest.raises(AddressOutOfRange):
        read(smaller, dimm(1).guest_phys_addr, 1)
    assert read(mem, dimm(1).guest_phys_addr, 1) == b"\xd1"  # the old table is untouched
    gone.close()
    smaller.regions[1].close()


@pytest.mark.parametrize(
    "spec",
    [dimm(3), dimm(1, size=SIZE // 2), RegionSpec(dimm(1).guest_phys_addr, SIZE, BASE_UVA, 0)],
    ids=["absent", "other-size", "other-uva"],
)
def test_remove_region_refuses_a_region_it_does_not_hold(base, fds, spec):
    mem = base.add_region(dimm(1), fds())
    with pytest.raises(ProtocolError, match="REM_MEM_REG: no region at guest address"):
        mem.remove_region(spec)
    mem.regions[1].close()
