"""Guest memory: regions mapped from fds, and address translation.

Every region is checked against its fd's real size before it is mapped, so a
guest can never make us touch a page that is not backed.  The frontend keeps
the fd, though, and may shrink the file under the mapping later: every
mapped region is therefore registered with the SIGBUS containment of
csrc/device/dp_sigbus.h, which turns such a fault into a flag on the region
(``GuestMemory.faulted``) instead of the death of the process.  Two address
spaces are translated:

- guest-physical addresses (GPA), which descriptors carry;
- frontend-virtual addresses (UVA, QEMU's userspace addresses), which
  SET_VRING_ADDR carries.

Every translation checks the whole range, including 64-bit wrap-around.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Iterator

from dataplane.device.c import address_of, pinned, sigbus
from dataplane.errors import AddressOutOfRange, ProtocolError
from dataplane.vhost.messages import RegionSpec

U64_MAX = (1 << 64) - 1
# Regions one connection's table may hold, offered in GET_MAX_MEM_SLOTS
# (CONFIGURE_MEM_SLOTS).  A cap per connection, so that one frontend cannot take the
# process's SIGBUS containment table (csrc/device/dp_sigbus.h: 16384 ranges) from the other
# devices; QEMU needs no more than its memslots (a base region and one per DIMM).
# SET_MEM_TABLE carries at most 8 (VHOST_MEMORY_BASELINE_NREGIONS).
MAX_MEM_SLOTS = 256


class MemoryRegion:
    """One mapped region.

    ``view`` is a writable memoryview of exactly the region's guest bytes and
    ``host_addr`` is the host virtual address of its first byte, for the
    iovecs handed to the kernel.
    """

    __slots__ = ("gpa", "size", "uva", "_map", "_ptr", "view", "host_addr", "_slot")

    def __init__(self, spec: RegionSpec, fd: int) -> None:
        _check_spec(spec)
        try:
            fd_size = os.fstat(fd).st_size
        except OSError as e:
            raise ProtocolError(f"memory region fd is not usable: {e}") from None
        end = spec.mmap_offset + spec.memory_size
        if end > fd_size:
            raise ProtocolError(
                f"memory region needs {end} bytes of its fd, which has only {fd_size}"
            )
        # Map from offset 0, since mmap_offset need not be page aligned.
        try:
            self._map = mmap.mmap(fd, end, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise ProtocolError(f"cannot map memory region: {e}") from None
        except ValueError as e:  # mmap checks the size again: the file shrank since fstat
            raise ProtocolError(f"cannot map memory region: {e}") from None
        self._slot = -1
        self._init(spec, self._map, spec.mmap_offset)
        try:
            self._slot = sigbus.register(self.host_addr - spec.mmap_offset, end)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_buffer(cls, spec: RegionSpec, buf: mmap.mmap | bytearray) -> MemoryRegion:
        """A region over memory we already hold (tests and the replay driver)."""
        _check_spec(spec)
        if spec.mmap_offset + spec.memory_size > len(buf):
            raise ProtocolError("region is larger than its buffer")
        self = cls.__new__(cls)
        self._map = None
        self._slot = -1
        self._init(spec, buf, spec.mmap_offset)
        return self

    def _init(self, spec: RegionSpec, buf: mmap.mmap | bytearray, offset: int) -> None:
        self.gpa = spec.guest_phys_addr
        self.size = spec.memory_size
        self.uva = spec.userspace_addr
        self.view = memoryview(buf)[offset : offset + spec.memory_size]
        self._ptr = pinned(self.view)
        self.host_addr = address_of(self._ptr)

    def faulted(self) -> str | None:
        """Where guest RAM shrank under this region's mapping (a contained SIGBUS), or None."""
        if self._slot < 0 or not sigbus.faults(self._slot):
            return None
        at = sigbus.fault_addr(self._slot) - self.host_addr
        return f"SIGBUS at guest address {self.gpa + at:#x}"

    def close(self) -> None:
        """Drop the mapping. Every view handed out must be released first."""
        if self._slot >= 0:
            sigbus.unregister(self._slot)  # before the unmap (csrc/device/dp_sigbus.h)
            self._slot = -1
        self._ptr = None
        self.view.release()
        if self._map is not None:
            self._map.close()
            self._map = None


def _check_spec(spec: RegionSpec) -> None:
    for name in ("guest_phys_addr", "memory_size", "userspace_addr", "mmap_offset"):
        value = getattr(spec, name)
        if not 0 <= value <= U64_MAX:
            raise ProtocolError(f"memory region {name} {value:#x} is not a u64")
    if spec.memory_size == 0:
        raise ProtocolError("memory region has size 0")
    if spec.guest_phys_addr + spec.memory_size - 1 > U64_MAX:
        raise ProtocolError("memory region wraps the guest-physical address space")
    if spec.userspace_addr + spec.memory_size - 1 > U64_MAX:
        raise ProtocolError("memory region wraps the frontend address space")


class GuestMemory:
    """The guest's RAM as a set of non-overlapping regions."""

    def __init__(self, regions: Iterable[MemoryRegion]) -> None:
        self.regions: tuple[MemoryRegion, ...] = tuple(sorted(regions, key=lambda r: r.gpa))
        for a, b in zip(self.regions, self.regions[1:], strict=False):
            if a.gpa + a.size > b.gpa:
                raise ProtocolError(f"memory regions overlap at guest address {b.gpa:#x}")

    @classmethod
    def map_fds(cls, specs: Iterable[RegionSpec], fds: Iterable[int]) -> GuestMemory:
        regions: list[MemoryRegion] = []
        try:
            for spec, fd in zip(specs, fds, strict=True):
                regions.append(MemoryRegion(spec, fd))
            return cls(regions)
        except BaseException:
            for r in regions:
                r.close()
            raise

    def close(self) -> None:
        for r in self.regions:
            r.close()
        self.regions = ()

    # -- CONFIGURE_MEM_SLOTS ----------------------------------------------------

    def add_region(
        self, spec: RegionSpec, fd: int, *, max_slots: int = MAX_MEM_SLOTS
    ) -> GuestMemory:
        """ADD_MEM_REG: a new table with the region mapped from ``fd``, checked as every
        SET_MEM_TABLE region is (the spec, the fd's size, no overlap).

        This table is left as it is and shares its regions with the new one: the caller
        swaps tables while no thread uses either, then drops this one without closing it.
        ``fd`` stays the caller's.  Raises ProtocolError.
        """
        if len(self.regions) >= max_slots:
            raise ProtocolError(f"ADD_MEM_REG: all {max_slots} memory slots are in use")
        region = MemoryRegion(spec, fd)
        try:
            return GuestMemory((*self.regions, region))
        except BaseException:
            region.close()
            raise

    def remove_region(self, spec: RegionSpec) -> tuple[GuestMemory, MemoryRegion]:
        """REM_MEM_REG: a new table without the region that ``spec`` names (by guest
        address, frontend address and size; the mmap offset is ignored, as the spec says).

        Returns the new table and the region taken out, still mapped: the caller closes
        it once no thread can use the old table (no use after unmap).  Raises
        ProtocolError if no region matches.
        """
        _check_spec(spec)
        for r in self.regions:
            if (r.gpa, r.uva, r.size) == (
                spec.guest_phys_addr,
                spec.userspace_addr,
                spec.memory_size,
            ):
                return GuestMemory(x for x in self.regions if x is not r), r
        raise ProtocolError(
            f"REM_MEM_REG: no region at guest address {spec.guest_phys_addr:#x} with frontend "
            f"address {spec.userspace_addr:#x} and size {spec.memory_size:#x}"
        )

    def faulted(self) -> str | None:
        """Where guest RAM shrank under the mapping (a contained SIGBUS), or None."""
        for r in self.regions:
            where = r.faulted()
            if where is not None:
                return where
        return None

    # -- translation --------------------------------------------------------

    def gpa_segments(self, gpa: int, length: int) -> Iterator[tuple[MemoryRegion, int, int]]:
        """Yield ``(region, offset, n)`` pieces covering ``[gpa, gpa+length)``.

        Raises AddressOutOfRange if any byte is not mapped or the range wraps.
        """
        if length == 0:
            return
        if gpa + length - 1 > U64_MAX:
            raise AddressOutOfRange(f"range {gpa:#x}+{length:#x} wraps")
        while length:
            region = self._find_gpa(gpa)
            off = gpa - region.gpa
            n = min(length, region.size - off)
            yield region, off, n
            gpa += n
            length -= n

    def _find_gpa(self, gpa: int) -> MemoryRegion:
        for r in self.regions:
            if r.gpa <= gpa < r.gpa + r.size:
                return r
        raise AddressOutOfRange(f"guest address {gpa:#x} is not in guest RAM")

    def gpa_contiguous(self, gpa: int, length: int) -> tuple[MemoryRegion, int]:
        """Translate a range that must lie inside one region (ring structures)."""
        if gpa + max(length, 1) - 1 > U64_MAX:
            raise AddressOutOfRange(f"range {gpa:#x}+{length:#x} wraps")
        r = self._find_gpa(gpa)
        off = gpa - r.gpa
        if off + length > r.size:
            raise AddressOutOfRange(f"range {gpa:#x}+{length:#x} crosses a region end")
        return r, off

    def uva_to_gpa(self, uva: int, length: int) -> int:
        """Frontend-virtual to guest-physical, for ring addresses.

        The whole range must lie inside one region.
        """
        if uva + max(length, 1) - 1 > U64_MAX:
            raise AddressOutOfRange(f"frontend range {uva:#x}+{length:#x} wraps")
        for r in self.regions:
            if r.uva <= uva and uva + length <= r.uva + r.size:
                return r.gpa + (uva - r.uva)
        raise AddressOutOfRange(f"frontend address {uva:#x}+{length:#x} is not in guest RAM")
