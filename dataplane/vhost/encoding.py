"""Encoding vhost-user bodies from their payload objects (the inverse of
``messages.parse_body``), and the fds a payload carries: what a frontend sends and
what the backend replies with."""

from __future__ import annotations

from dataplane.vhost.messages import (
    CONFIG_HDR,
    INFLIGHT,
    LOG,
    MEM_REG_PADDING,
    MEMORY_HDR,
    MEMORY_REGION,
    U64,
    VRING_ADDR,
    VRING_NOFD_MASK,
    VRING_STATE,
    BackendReqFd,
    Config,
    Inflight,
    LogBase,
    MemReg,
    MemTable,
    Payload,
    RegionSpec,
    VringAddr,
    VringFile,
    VringState,
)


def encode_body(payload: Payload) -> bytes:
    """Encode a body (request or reply) from its payload object."""
    if payload is None:
        return b""
    if isinstance(payload, bool):
        raise TypeError("bool is not a body")
    if isinstance(payload, int):
        return U64.pack(payload)
    if isinstance(payload, VringState):
        return VRING_STATE.pack(payload.index, payload.num)
    if isinstance(payload, VringAddr):
        return VRING_ADDR.pack(
            payload.index,
            payload.flags,
            payload.desc_user_addr,
            payload.used_user_addr,
            payload.avail_user_addr,
            payload.log_guest_addr,
        )
    if isinstance(payload, VringFile):
        return U64.pack(payload.index | (VRING_NOFD_MASK if payload.fd is None else 0))
    if isinstance(payload, MemTable):
        out = [MEMORY_HDR.pack(len(payload.regions), 0)]
        out += [_pack_region(r) for r in payload.regions]
        return b"".join(out)
    if isinstance(payload, Config):
        return CONFIG_HDR.pack(payload.offset, payload.size, payload.flags) + payload.data
    if isinstance(payload, MemReg):
        return bytes(MEM_REG_PADDING) + _pack_region(payload.region)
    if isinstance(payload, Inflight):
        return INFLIGHT.pack(
            payload.mmap_size, payload.mmap_offset, payload.num_queues, payload.queue_size
        )
    if isinstance(payload, BackendReqFd):
        return b""
    if isinstance(payload, LogBase):
        return LOG.pack(payload.mmap_size, payload.mmap_offset)
    raise TypeError(f"cannot encode {payload!r}")


def payload_fds(payload: Payload) -> list[int]:
    """The fds a payload carries: a request's (the frontend's sendmsg), or a reply's
    (GET_INFLIGHT_FD hands the area's fd back with its reply)."""
    if isinstance(payload, VringFile) and payload.fd is not None:
        return [payload.fd]
    if isinstance(payload, MemTable):
        return list(payload.fds)
    if isinstance(payload, MemReg | Inflight) and payload.fd is not None:
        return [payload.fd]
    if isinstance(payload, BackendReqFd | LogBase):
        return [payload.fd]
    return []


def _pack_region(r: RegionSpec) -> bytes:
    return MEMORY_REGION.pack(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset)
