"""Host memory as C sees it: addresses of Python buffers, buffers over addresses."""

from __future__ import annotations

from typing import Any

from dataplane.device.c import ffi

__all__ = ["address_of", "pinned", "view_at"]


def pinned(buf: Any) -> Any:
    """A cffi handle that keeps ``buf`` (a writable buffer) at one address while held."""
    return ffi.from_buffer(buf)


def address_of(handle: Any) -> int:
    """The host address of a ``pinned`` buffer."""
    return int(ffi.cast("uintptr_t", handle))


def view_at(addr: int, length: int) -> memoryview:
    """A writable view of ``length`` bytes at host address ``addr`` (checked by the caller)."""
    if length < 0 or (length and addr <= 0):
        raise ValueError(f"no host buffer at {addr:#x} of {length} bytes")
    return memoryview(ffi.buffer(ffi.cast("char *", addr), length))
