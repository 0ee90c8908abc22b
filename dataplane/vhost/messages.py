"""vhost-user message definitions (QEMU docs/interop/vhost-user.rst).

Request codes, body layouts, and one table saying, for every request we
accept, how its body is laid out, how many fds it carries and whether it has
a reply of its own.  Both sides use this module: the backend parses requests
and builds replies, the frontend (``dataplane.guest.frontend``) does the
reverse.  No sockets here.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

from dataplane.errors import ProtocolError

HEADER = struct.Struct("<III")
HEADER_SIZE = HEADER.size
MAX_BODY = 4096

VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3

VHOST_USER_F_PROTOCOL_FEATURES = 30
VHOST_F_LOG_ALL = 26  # a device feature bit: dirty logging on (live migration)
VHOST_VRING_F_LOG = 0  # SET_VRING_ADDR flags: log the used ring at log_guest_addr
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 1 << 8
VHOST_MEMORY_BASELINE_NREGIONS = 8
VHOST_USER_MAX_CONFIG_SIZE = 256


class Request(enum.IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(enum.IntEnum):
    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


# --- bodies ----------------------------------------------------------------

U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEMORY_HDR = struct.Struct("<II")
MEMORY_REGION = struct.Struct("<QQQQ")
CONFIG_HDR = struct.Struct("<III")
MEM_REG_PADDING = 8  # VhostUserMemRegMsg: a u64 of padding, then one region
MEM_REG_SIZE = MEM_REG_PADDING + MEMORY_REGION.size
INFLIGHT = struct.Struct("<QQHH4x")  # VhostUserInflight, with the C struct's tail padding
LOG = struct.Struct("<QQ")  # VhostUserLog: mmap_size, mmap_offset


@dataclass(frozen=True, slots=True)
class RegionSpec:
    """One VhostUserMemoryRegion as the frontend sends it."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int


@dataclass(frozen=True, slots=True)
class MemTable:
    """SET_MEM_TABLE: the regions of guest RAM, each with the fd that maps it."""

    regions: tuple[RegionSpec, ...]
    fds: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MemReg:
    """ADD_MEM_REG (one region more, with the fd that maps it) or REM_MEM_REG (the region
    to unmap; fd None, and a stray fd that came with it is closed)."""

    region: RegionSpec
    fd: int | None


@dataclass(frozen=True, slots=True)
class Inflight:
    """GET_INFLIGHT_FD (request: queue count and size; reply: the area and its fd) and
    SET_INFLIGHT_FD (the area QEMU kept, with its fd)."""

    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int
    fd: int | None = None


@dataclass(frozen=True, slots=True)
class LogBase:
    """SET_LOG_BASE: the dirty log, ``mmap_size`` bytes at ``mmap_offset`` of its fd."""

    mmap_size: int
    mmap_offset: int
    fd: int


@dataclass(frozen=True, slots=True)
class VringState:
    """SET_VRING_NUM/BASE and GET_VRING_BASE: a ring index and a number (size or index)."""

    index: int
    num: int


@dataclass(frozen=True, slots=True)
class VringFile:
    """SET_VRING_KICK/CALL/ERR: a ring index and an fd, or None with NOFD."""

    index: int
    fd: int | None


@dataclass(frozen=True, slots=True)
class VringAddr:
    """SET_VRING_ADDR: the ring's three parts in the frontend's address space, and the
    used ring's guest-physical address for the dirty log (flags: VHOST_VRING_F_LOG)."""

    index: int
    flags: int
    desc_user_addr: int
    used_user_addr: int
    avail_user_addr: int
    log_guest_addr: int


@dataclass(frozen=True, slots=True)
class Config:
    """GET_CONFIG and SET_CONFIG: ``size`` bytes of the config space from ``offset``."""

    offset: int
    size: int
    flags: int
    data: bytes


@dataclass(frozen=True, slots=True)
class BackendReqFd:
    """SET_BACKEND_REQ_FD: our end of the backend channel (a socket, still unchecked)."""

    fd: int


class Body(enum.Enum):
    """How a request's body is laid out."""

    NONE = "none"
    U64 = "u64"
    STATE = "state"
    ADDR = "addr"
    FILE = "file"
    MEM_TABLE = "mem_table"
    CONFIG = "config"
    MEM_REG = "mem_reg"  # one region and its fd
    MEM_REG_REM = "mem_reg_rem"  # one region; an fd, if any, is closed unused
    INFLIGHT = "inflight"  # the inflight description, no fd
    INFLIGHT_FD = "inflight_fd"  # the inflight description and the area's fd
    FD = "fd"  # no body (or a u64 QEMU leaves zero), one fd
    LOG = "log"  # VhostUserLog and the log's fd


@dataclass(frozen=True, slots=True)
class Spec:
    body: Body
    has_reply: bool = False
    # The protocol feature that must have been negotiated first; without it the request
    # is a protocol error (BackendConnection checks it from the header on).
    feature: ProtocolFeature | None = None


# Every request the backend accepts.  Anything else is a protocol error (we never offer
# STATUS, POSTCOPY...), and so is a request whose ``feature`` was not negotiated.
REQUESTS: dict[Request, Spec] = {
    Request.GET_FEATURES: Spec(Body.NONE, has_reply=True),
    Request.SET_FEATURES: Spec(Body.U64),
    Request.SET_OWNER: Spec(Body.NONE),
    Request.RESET_OWNER: Spec(Body.NONE),
    Request.SET_MEM_TABLE: Spec(Body.MEM_TABLE),
    Request.SET_VRING_NUM: Spec(Body.STATE),
    Request.SET_VRING_ADDR: Spec(Body.ADDR),
    Request.SET_VRING_BASE: Spec(Body.STATE),
    Request.GET_VRING_BASE: Spec(Body.STATE, has_reply=True),
    Request.SET_VRING_KICK: Spec(Body.FILE),
    Request.SET_VRING_CALL: Spec(Body.FILE),
    Request.SET_VRING_ERR: Spec(Body.FILE),
    Request.GET_PROTOCOL_FEATURES: Spec(Body.NONE, has_reply=True),
    Request.SET_PROTOCOL_FEATURES: Spec(Body.U64),
    Request.GET_QUEUE_NUM: Spec(Body.NONE, has_reply=True),
    Request.SET_VRING_ENABLE: Spec(Body.STATE),
    Request.GET_CONFIG: Spec(Body.CONFIG, has_reply=True),
    Request.SET_CONFIG: Spec(Body.CONFIG),
    Request.SET_BACKEND_REQ_FD: Spec(Body.FD, feature=ProtocolFeature.BACKEND_REQ),
    Request.GET_INFLIGHT_FD: Spec(
        Body.INFLIGHT, has_reply=True, feature=ProtocolFeature.INFLIGHT_SHMFD
    ),
    Request.SET_INFLIGHT_FD: Spec(Body.INFLIGHT_FD, feature=ProtocolFeature.INFLIGHT_SHMFD),
    # With LOG_SHMFD the backend replies once it has mapped the log (a u64, 0), and QEMU
    # waits for that reply (hw/virtio/vhost-user.c vhost_user_set_log_base).
    Request.SET_LOG_BASE: Spec(Body.LOG, has_reply=True, feature=ProtocolFeature.LOG_SHMFD),
    Request.GET_MAX_MEM_SLOTS: Spec(
        Body.NONE, has_reply=True, feature=ProtocolFeature.CONFIGURE_MEM_SLOTS
    ),
    # Outside postcopy (which we never offer) these have no reply of their own: REPLY_ACK.
    Request.ADD_MEM_REG: Spec(Body.MEM_REG, feature=ProtocolFeature.CONFIGURE_MEM_SLOTS),
    Request.REM_MEM_REG: Spec(Body.MEM_REG_REM, feature=ProtocolFeature.CONFIGURE_MEM_SLOTS),
}


Payload = (
    int | VringState | VringAddr | VringFile | MemTable | Config | MemReg | Inflight
    | BackendReqFd | LogBase | None
)  # fmt: skip


def _exact(body: bytes, size: int, what: str) -> None:
    if len(body) != size:
        raise ProtocolError(f"{what}: body is {len(body)} bytes, expected {size}")


def _region(raw: bytes, offset: int) -> RegionSpec:
    return RegionSpec(*MEMORY_REGION.unpack_from(raw, offset))


def parse_body(request: Request, body: bytes, fds: list[int]) -> Payload:
    """Decode and validate one request body.  ``fds`` are owned by the caller."""
    kind = REQUESTS[request].body
    what = request.name
    if kind is Body.NONE:
        # QEMU sends a u64 with some body-less requests (e.g. RESET_OWNER); accept 0 or 8.
        if len(body) not in (0, U64.size):
            raise ProtocolError(f"{what}: unexpected {len(body)}-byte body")
        _fd_count(fds, 0, what)
        return None
    if kind is Body.U64:
        _exact(body, U64.size, what)
        _fd_count(fds, 0, what)
        return U64.unpack(body)[0]
    if kind is Body.STATE:
        _exact(body, VRING_STATE.size, what)
        _fd_count(fds, 0, what)
        return VringState(*VRING_STATE.unpack(body))
    if kind is Body.ADDR:
        _exact(body, VRING_ADDR.size, what)
        _fd_count(fds, 0, what)
        return VringAddr(*VRING_ADDR.unpack(body))
    if kind is Body.FILE:
        _exact(body, U64.size, what)
        value = U64.unpack(body)[0]
        if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise ProtocolError(f"{what}: reserved bits set in {value:#x}")
        nofd = bool(value & VRING_NOFD_MASK)
        if len(fds) != (0 if nofd else 1):
            raise ProtocolError(f"{what}: {len(fds)} fds with NOFD={nofd}")
        return VringFile(value & VRING_IDX_MASK, None if nofd else fds[0])
    if kind is Body.MEM_TABLE:
        if len(body) < MEMORY_HDR.size:
            raise ProtocolError(f"{what}: body too short")
        nregions, _ = MEMORY_HDR.unpack_from(body)
        if not 1 <= nregions <= VHOST_MEMORY_BASELINE_NREGIONS:
            raise ProtocolError(f"{what}: {nregions} regions")
        _exact(body, MEMORY_HDR.size + nregions * MEMORY_REGION.size, what)
        if len(fds) != nregions:
            raise ProtocolError(f"{what}: {nregions} regions but {len(fds)} fds")
        regions = tuple(
            _region(body, MEMORY_HDR.size + i * MEMORY_REGION.size) for i in range(nregions)
        )
        return MemTable(regions, tuple(fds))
    if kind is Body.CONFIG:
        if len(body) < CONFIG_HDR.size:
            raise ProtocolError(f"{what}: body too short")
        offset, size, flags = CONFIG_HDR.unpack_from(body)
        if size > VHOST_USER_MAX_CONFIG_SIZE or offset > VHOST_USER_MAX_CONFIG_SIZE - size:
            raise ProtocolError(f"{what}: config range {offset}+{size} too large")
        _exact(body, CONFIG_HDR.size + size, what)
        _fd_count(fds, 0, what)
        return Config(offset, size, flags, bytes(body[CONFIG_HDR.size :]))
    if kind is Body.MEM_REG:
        _exact(body, MEM_REG_SIZE, what)
        _fd_count(fds, 1, what)
        return MemReg(_region(body, MEM_REG_PADDING), fds[0])
    if kind is Body.MEM_REG_REM:
        _exact(body, MEM_REG_SIZE, what)
        if len(fds) > 1:
            raise ProtocolError(f"{what}: carries {len(fds)} fds, expected none")
        # The spec: a backend MAY accept one fd (old QEMUs sent it) and MUST close it unused.
        _close_fds(fds)
        return MemReg(_region(body, MEM_REG_PADDING), None)
    if kind in (Body.INFLIGHT, Body.INFLIGHT_FD):
        _exact(body, INFLIGHT.size, what)
        with_fd = kind is Body.INFLIGHT_FD
        _fd_count(fds, 1 if with_fd else 0, what)
        return Inflight(*INFLIGHT.unpack(body), fds[0] if with_fd else None)
    if kind is Body.LOG:
        _exact(body, LOG.size, what)
        _fd_count(fds, 1, what)
        return LogBase(*LOG.unpack(body), fds[0])
    if kind is Body.FD:
        if len(body) not in (0, U64.size):
            raise ProtocolError(f"{what}: unexpected {len(body)}-byte body")
        _fd_count(fds, 1, what)
        return BackendReqFd(fds[0])
    raise AssertionError(kind)  # pragma: no cover


def _fd_count(fds: list[int], n: int, what: str) -> None:
    if len(fds) != n:
        raise ProtocolError(f"{what}: carries {len(fds)} fds, expected {n or 'none'}")


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def encode_message(request: int, flags: int, body: bytes) -> bytes:
    return HEADER.pack(request, flags, len(body)) + body
