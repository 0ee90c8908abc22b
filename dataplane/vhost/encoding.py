"""Encoding vhost-user bodies from their payload objects (the inverse of
``messages.parse_body``), and the fds a payload carries: what a frontend sends and
what the backend replies with."""

from __future__ import annotations

from dataplane.vhost import messages as vu


def encode_body(payload: vu.Payload) -> bytes:
    """Encode a body (request or reply) from its payload object."""
    if payload is None:
        return b""
    if isinstance(payload, bool):
        raise TypeError("bool is not a body")
    if isinstance(payload, int):
        return vu.U64.pack(payload)
    if isinstance(payload, vu.VringState):
        return vu.VRING_STATE.pack(payload.index, payload.num)
    if isinstance(payload, vu.VringAddr):
        return vu.VRING_ADDR.pack(
            payload.index,
            payload.flags,
            payload.desc_user_addr,
            payload.used_user_addr,
            payload.avail_user_addr,
            payload.log_guest_addr,
        )
    if isinstance(payload, vu.VringFile):
        return vu.U64.pack(payload.index | (vu.VRING_NOFD_MASK if payload.fd is None else 0))
    if isinstance(payload, vu.MemTable):
        out = [vu.MEMORY_HDR.pack(len(payload.regions), 0)]
        out += [_pack_region(r) for r in payload.regions]
        return b"".join(out)
    if isinstance(payload, vu.Config):
        return vu.CONFIG_HDR.pack(payload.offset, payload.size, payload.flags) + payload.data
    if isinstance(payload, vu.MemReg):
        return bytes(vu.MEM_REG_PADDING) + _pack_region(payload.region)
    if isinstance(payload, vu.Inflight):
        return vu.INFLIGHT.pack(
            payload.mmap_size, payload.mmap_offset, payload.num_queues, payload.queue_size
        )
    if isinstance(payload, vu.BackendReqFd):
        return b""
    if isinstance(payload, vu.LogBase):
        return vu.LOG.pack(payload.mmap_size, payload.mmap_offset)
    raise TypeError(f"cannot encode {payload!r}")


def payload_fds(payload: vu.Payload) -> list[int]:
    """The fds a payload carries: a request's (the frontend's sendmsg), or a reply's
    (GET_INFLIGHT_FD hands the area's fd back with its reply)."""
    if isinstance(payload, vu.VringFile) and payload.fd is not None:
        return [payload.fd]
    if isinstance(payload, vu.MemTable):
        return list(payload.fds)
    if isinstance(payload, vu.MemReg | vu.Inflight) and payload.fd is not None:
        return [payload.fd]
    if isinstance(payload, vu.BackendReqFd | vu.LogBase):
        return [payload.fd]
    return []


def _pack_region(r: vu.RegionSpec) -> bytes:
    return vu.MEMORY_REGION.pack(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset)
