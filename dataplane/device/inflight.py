"""The inflight area (INFLIGHT_SHMFD): allocated, adopted and checked; and what recovery found.

The C datapath tracks its rings in the area (csrc/device/dp_inflight.{h,c}, whose header says
why the stores come in the order they do) and recovers from it when a ring starts;
the Python reference datapath does not track, so a device on it does not offer
INFLIGHT_SHMFD.  Here: the area as a whole, allocated in a memfd for GET_INFLIGHT_FD,
adopted and validated on SET_INFLIGHT_FD; and C's recovery as a ``Recovery``.  The
tests hold the C tracker to a model in Python (tests/inflight_support.py).

Every value in the area is hostile: the frontend owns the memfd.  Adopting an area
that cannot be one we sized is a ProtocolError (the connection drops); a queue
whose record is inconsistent at recovery raises BadInflightArea (it does not start).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from dataclasses import dataclass

from dataplane.device.c import address_of, pinned, sigbus
from dataplane.device.c import inflight as cinflight
from dataplane.errors import BadInflightArea, ProtocolError
from dataplane.spec.ring import MAX_QUEUE_SIZE

VERSION = cinflight.VERSION
ALIGNMENT = cinflight.ALIGNMENT

# Why a record is refused, by C's DP_INFLIGHT_E* code.
REASONS = {
    cinflight.Refusal.EVERSION: "inflight area has a version this backend does not know",
    cinflight.Refusal.EBATCH: "inflight area's used_idx lags used->idx by more than a queue",
    cinflight.Refusal.ELINK: "inflight area's last batch list leaves the ring",
    cinflight.Refusal.EFLAG: "inflight area has an inflight flag that is neither 0 nor 1",
    cinflight.Refusal.EHEAD: "inflight area marks a head in flight that the ring cannot have",
    cinflight.Refusal.ENOMEM: "out of memory recovering the inflight area",
    cinflight.Refusal.ESIZE: "ring is larger than the inflight area's queue size",
    cinflight.Refusal.EDESCNUM: "inflight area's desc_num is not the queue size",
    cinflight.Refusal.EFEATURES: "inflight area has feature flags this backend does not know",
}


def queue_size_bytes(desc_num: int) -> int:
    """Bytes of one queue's area: the header and desc_num entries, rounded up to 64."""
    return cinflight.queue_size(desc_num)


def region_size(num_queues: int, queue_size: int) -> int:
    """Bytes of the whole area: the queues' areas back to back (GET_INFLIGHT_FD's mmap_size)."""
    return num_queues * queue_size_bytes(queue_size)


@dataclass(frozen=True, slots=True)
class Recovery:
    """struct dp_inflight_recovery, with the heads to resubmit (oldest first).

    ``last_avail_idx`` is where popping resumes: ``used_idx`` plus the heads resubmitted,
    since QEMU rewinds SET_VRING_BASE to used->idx after a backend died.  For a ``fresh``
    area (no record yet) it is 0 and means nothing: SET_VRING_BASE's value stands.
    """

    fresh: bool
    batch_cleared: int
    heads: tuple[int, ...]
    last_avail_idx: int
    used_idx: int


def recovery_of(raw: cinflight.CRecovery | int) -> Recovery:
    """C's recovery (CInflight.recover_raw, CThread.start_inflight) as a ``Recovery``."""
    if isinstance(raw, int):
        raise BadInflightArea(REASONS.get(raw, f"inflight recovery failed ({raw})"))
    return Recovery(*raw)


class InflightArea:
    """The whole area: its fd and mapping, one queue area after another."""

    def __init__(
        self, fd: int, mapping: mmap.mmap, start: int, num_queues: int, queue_size: int
    ) -> None:
        self.fd = fd
        self.num_queues = num_queues
        self.queue_size = queue_size
        self.mmap_size = region_size(num_queues, queue_size)
        self._map = mapping
        self.view = memoryview(mapping)[start : start + self.mmap_size]
        self._addr = address_of(pinned(self.view))
        try:
            # The frontend keeps the fd and may shrink it under us (an area it sealed or not).
            self._watch = sigbus.Watch(self._addr - start, len(mapping))
        except BaseException:
            self.view.release()
            mapping.close()
            raise

    @classmethod
    def allocate(cls, num_queues: int, queue_size: int, *, max_queues: int) -> InflightArea:
        """GET_INFLIGHT_FD: a new, zeroed area in a memfd whose size is sealed."""
        _check_description(num_queues, queue_size, max_queues)
        size = region_size(num_queues, queue_size)
        fd = os.memfd_create("dataplane-inflight", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            )
            return cls(fd, mmap.mmap(fd, size), 0, num_queues, queue_size)  # owns fd now
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def adopt(
        cls,
        fd: int,
        mmap_size: int,
        mmap_offset: int,
        num_queues: int,
        queue_size: int,
        *,
        max_queues: int,
    ) -> InflightArea:
        """SET_INFLIGHT_FD: map the area the frontend kept, after checking all of it.

        Takes ownership of ``fd`` (closed on failure).  Raises ProtocolError.
        """
        try:
            _check_description(num_queues, queue_size, max_queues)
            need = region_size(num_queues, queue_size)
            if mmap_size < need:
                raise ProtocolError(
                    f"inflight area of {mmap_size} bytes is smaller than the {need} that "
                    f"{num_queues} queues of {queue_size} need"
                )
            try:
                fd_size = os.fstat(fd).st_size
            except OSError as e:
                raise ProtocolError(f"inflight fd is not usable: {e}") from None
            if mmap_offset + need > fd_size:
                raise ProtocolError(
                    f"inflight area needs {mmap_offset + need} bytes of its fd, "
                    f"which has only {fd_size}"
                )
            base = mmap_offset - mmap_offset % mmap.ALLOCATIONGRANULARITY
            try:
                mapping = mmap.mmap(fd, mmap_offset - base + need, offset=base)
            except (OSError, ValueError) as e:  # ValueError: the fd shrank since fstat
                raise ProtocolError(f"cannot map the inflight area: {e}") from None
            area = cls(fd, mapping, mmap_offset - base, num_queues, queue_size)
        except BaseException:
            os.close(fd)
            raise
        for i in range(num_queues):
            code = cinflight.check_queue(area.queue_addr(i), queue_size)
            if code:
                area.close()
                raise ProtocolError(f"queue {i}: {REASONS[code]}")
        return area

    def queue_view(self, index: int) -> memoryview:
        """Queue ``index``'s area."""
        if not 0 <= index < self.num_queues:
            raise IndexError(f"the inflight area has no queue {index}")
        size = queue_size_bytes(self.queue_size)
        return self.view[index * size : (index + 1) * size]

    def queue_addr(self, index: int) -> int:
        """The host address of queue ``index``'s area (mapped until ``close``)."""
        if not 0 <= index < self.num_queues:
            raise IndexError(f"the inflight area has no queue {index}")
        return self._addr + index * queue_size_bytes(self.queue_size)

    def faulted(self) -> bool:
        """True once the frontend shrank the memfd under the mapping (a contained SIGBUS)."""
        return self._watch.faulted()

    def close(self) -> None:
        """Unmap and close. Every queue view handed out must be released first."""
        self._watch.close()
        self.view.release()
        self._map.close()
        os.close(self.fd)


def _check_description(num_queues: int, queue_size: int, max_queues: int) -> None:
    if not 1 <= num_queues <= max_queues:
        raise ProtocolError(f"inflight area for {num_queues} queues; the device has {max_queues}")
    if not 1 <= queue_size <= MAX_QUEUE_SIZE:
        raise ProtocolError(f"inflight area for queues of {queue_size} entries")
