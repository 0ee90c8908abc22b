"""Exceptions that say what happens next.

- ``ProtocolError``: the vhost-user peer broke the protocol; drop the connection.
- ``GuestError``: the guest put something hostile in a ring; mark that queue broken.
- ``UsageError``: the user gave a bad argument; print one line, exit 2.  So does
  ``TargetUnavailable``: a remote disk that cannot be reached or does not exist.

An I/O error is never an exception on the data path: it becomes a status byte.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class DataplaneError(Exception):
    """Base class for every error raised by this package."""


class ProtocolError(DataplaneError):
    """The frontend sent something we cannot accept. The connection is dropped."""


class ImageTaken(DataplaneError):
    """Another backend writes the image now (a live migration's other end): rings cannot
    start here, and the connection is dropped rather than two writers running."""


class GuestError(DataplaneError):
    """Guest-controlled ring contents are invalid. The queue is marked broken."""


class UsageError(DataplaneError):
    """A user-supplied argument is wrong. The message says how to fix it."""


# How to start a live migration's destination, in every interface alike.
INCOMING = "--incoming; incoming=on in --device and add-device; incoming = true in --config"


class ImageInUse(UsageError):
    """Another process holds a lock on an image that this one's lock conflicts with."""

    # How to ask for a read-only device, per interface; add-device says it its own way.
    READ_ONLY = "--read-only; read-only=on in --device; read-only = true in --config"

    def __init__(self, path: object, read_only: bool, spelling: str = READ_ONLY) -> None:
        self.path, self.read_only = path, read_only
        what = f"image {path} is in use by another process (it holds a lock on it): stop it"
        if read_only:  # our read lock met a write lock: read-only is no way out
            super().__init__(f"{what}; it writes the image, so even read-only cannot share it")
        else:
            super().__init__(
                f"{what}; if both only read, serve it read-only ({spelling}); for a live "
                f"migration's destination, start it incoming ({INCOMING})"
            )


@contextlib.contextmanager
def usage_on_os_error(missing: str, failed: str) -> Iterator[None]:
    """An OSError in the block as one UsageError line: ``missing`` if a file is not there,
    else ``failed: <reason>``."""
    try:
        yield
    except FileNotFoundError:
        raise UsageError(missing) from None
    except OSError as e:
        raise UsageError(f"{failed}: {e.strerror or e}") from None


class EngineUnavailable(DataplaneError):
    """An I/O engine cannot be set up on this host (for example io_uring disabled)."""


class TargetUnavailable(UsageError):
    """A remote disk (an NBD export, an RBD image) cannot be opened; the message says why."""


# --- Guest errors: one class per kind of hostile ring content. -------------


class AvailIdxJump(GuestError):
    """avail->idx moved further past last_avail_idx than the queue has entries."""


class BadHeadIndex(GuestError):
    """A head index in the avail ring is not below the queue size."""


class BadNextIndex(GuestError):
    """A descriptor's next index is not below its table size."""


class ChainTooLong(GuestError):
    """A descriptor chain loops or is longer than its table allows."""


class NestedIndirect(GuestError):
    """An indirect table contains an indirect descriptor."""


class UnexpectedIndirect(GuestError):
    """An indirect descriptor mid-chain, with NEXT set, or without INDIRECT_DESC negotiated."""


class BadIndirectLength(GuestError):
    """An indirect table's length is zero, not a multiple of 16, or too long."""


class AddressOutOfRange(GuestError):
    """A guest address range is not inside mapped guest RAM, or wraps."""


class LengthOverflow(GuestError):
    """A chain's lengths add up past what a 32-bit length can hold."""


class BadLayout(GuestError):
    """Device-readable descriptors after device-writable ones."""


class BadHeader(GuestError):
    """The virtio-blk header is not readable (fewer than 16 device-readable bytes)."""


class BadStatus(GuestError):
    """The virtio-blk status byte is not writable (no device-writable byte)."""


class KickFdFailed(GuestError):
    """The frontend's kick fd hung up or failed (EPOLLHUP/EPOLLERR): nothing can wake the queue."""


class GuestMemoryLost(GuestError):
    """Guest RAM shrank under the mapping (a contained SIGBUS): the region is no longer shared."""


class DirtyLogTooSmall(GuestError):
    """A page the device wrote lies past the frontend's dirty log (SET_LOG_BASE): the queues
    stop writing guest memory, and the connection is dropped (the frontend's fault)."""


class BadInflightArea(GuestError):
    """The inflight area (INFLIGHT_SHMFD) is not a record we could have written: the queue
    does not start, rather than resubmit requests guessed from it."""
