"""The dirty log of live migration as both sides of vhost-user see it (LOG_SHMFD).

A bitmap in shared memory: bit ``p`` stands for guest-physical page ``p`` (``gpa // LOG_PAGE``,
QEMU's VHOST_LOG_PAGE), bit ``p % 8`` of byte ``p // 8``.  The frontend sizes it for guest RAM
and shares it with SET_LOG_BASE; the device sets the bits of the pages it writes.
"""

from __future__ import annotations

LOG_PAGE = 4096  # bytes of guest memory per bit (VHOST_LOG_PAGE)
PAGES_PER_BYTE = 8

__all__ = ["LOG_PAGE", "PAGES_PER_BYTE", "log_bytes_for", "logged_pages"]


def log_bytes_for(ram_end: int) -> int:
    """The bytes of log that cover guest-physical addresses below ``ram_end``, in whole
    64-bit words, as QEMU sizes its log (hw/virtio/vhost.c vhost_get_log_size)."""
    pages = -(-ram_end // LOG_PAGE)
    return -(-pages // 64) * 8


def logged_pages(log: bytes | memoryview) -> set[int]:
    """The pages whose bits are set in ``log``."""
    return {
        i * 8 + b for i, byte in enumerate(bytes(log)) if byte for b in range(8) if byte >> b & 1
    }
