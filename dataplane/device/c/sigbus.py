"""csrc/device/dp_sigbus.h: SIGBUS containment over the mapped guest regions."""

from __future__ import annotations

from dataplane.device.c import check, lib
from dataplane.errors import ProtocolError

SLOTS: int = lib.DP_SIGBUS_SLOTS

__all__ = ["SLOTS", "Watch", "fault_addr", "faults", "register", "set_wake_fd", "unregister"]


def register(base: int, length: int) -> int:
    """Contain SIGBUS in ``[base, base+length)`` (installing the handler once); its slot."""
    if length <= 0:
        raise ValueError(f"a region of {length} bytes")
    check(lib.dp_sigbus_install(), "cannot install the SIGBUS handler")
    slot = lib.dp_sigbus_register(base, length)
    if slot < 0:
        raise ProtocolError(f"too many guest memory regions mapped at once ({SLOTS})")
    return slot


def unregister(slot: int) -> None:
    """Before the unmap: a later fault there is no longer ours to contain."""
    if slot >= 0:
        lib.dp_sigbus_unregister(slot)


def faults(slot: int) -> int:
    """How many SIGBUS the handler contained in ``slot``'s region."""
    return lib.dp_sigbus_faults(slot)


def fault_addr(slot: int) -> int:
    """The host address of the last contained fault in ``slot``'s region."""
    return lib.dp_sigbus_fault_addr(slot)


def set_wake_fd(fd: int | None) -> None:
    """The eventfd the handler signals after a contained fault (None: none)."""
    lib.dp_sigbus_set_wake_fd(-1 if fd is None else fd)


class Watch:
    """A whole shared mapping the frontend may shrink (an inflight area, a dirty log): its
    contained faults, and its slot given back before the unmap."""

    def __init__(self, base: int, length: int) -> None:
        self.slot = register(base, length)

    def faulted(self) -> bool:
        """True once the frontend shrank the file under the mapping (a contained SIGBUS)."""
        return self.slot >= 0 and bool(faults(self.slot))

    def close(self) -> None:
        """Before the unmap (csrc/device/dp_sigbus.h); closing twice does nothing."""
        if self.slot >= 0:
            unregister(self.slot)
            self.slot = -1
