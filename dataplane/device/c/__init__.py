"""Checked bindings of the device side's C modules (csrc/device/dp_*.c), one module each.

In the manner of PyNaCl's ``nacl.bindings``: each module here wraps the
functions of one ``csrc/device/dp_x.cdef``, checks what C would trust (sizes, None
for "no fd"), and turns a negative errno or a NULL into an exception in one
place.  The rest of the device wing and the serving floor import these, never
``ffi`` and ``lib``.

Nothing per request goes through a Python wrapper: the loop that makes
per-request calls is C (csrc/device/dp_loop.c).  What is wrapped here runs once per
batch, pass or control command; the barriers the Python reference calls per
request are the C functions themselves, bound once (barrier.py).

This module holds what every binding shares: the errno check, constants, fds, owned C
objects, and host memory as C sees it (``pinned``, ``address_of``, ``view_at``).  It is
also the one place that imports the compiled extension (``dataplane.device._c``: csrc/spec
and csrc/device) and checks its ABI, once, so that a stale build fails loudly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import IntEnum
from typing import Any, ClassVar

from dataplane.device._c import ffi, lib

ABI_VERSION = 1  # csrc/build.py's ABI_VERSION

if lib.DP_ABI_VERSION != ABI_VERSION:  # pragma: no cover - build mismatch
    raise ImportError(
        f"dataplane.device._c ABI {lib.DP_ABI_VERSION} != {ABI_VERSION}: "
        "rebuild with 'pip install .'"
    )

__all__ = [
    "Owned",
    "address_of",
    "check",
    "constants",
    "ffi",
    "lib",
    "no_fd",
    "pinned",
    "view_at",
]


def check(ret: int, what: str) -> int:
    """``ret`` if it is not a negative errno, else OSError naming ``what``."""
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def constants(name: str, prefix: str, members: str) -> type[IntEnum]:
    """An IntEnum ``name`` of lib's ``prefix + member`` constants, for each of ``members``."""
    return IntEnum(name, {m: getattr(lib, prefix + m) for m in members.split()})


def no_fd(fd: int | None) -> int:
    """An optional fd as C takes it: -1 for none."""
    return -1 if fd is None else fd


# -- host memory as C sees it: addresses of Python buffers, buffers over addresses ------------


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


class Owned:
    """A C object that this Python object owns and frees once (``free`` names the function)."""

    free_fn: ClassVar[Callable[[Any], None]]

    def __init__(self, ptr: Any, what: str) -> None:
        if ptr == ffi.NULL:
            raise MemoryError(what)
        self._ptr: Any = ptr

    @property
    def handle(self) -> Any:
        """The C pointer, for a C function that takes it (NULL once closed)."""
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr == ffi.NULL

    def close(self) -> None:
        """Free the C object; idempotent."""
        if self._ptr != ffi.NULL:
            type(self).free_fn(self._ptr)
            self._ptr = ffi.NULL
