"""virtio-blk requests (virtio 1.2, section 5.2.6): parsing and completion.

``parse_request`` turns a popped descriptor chain into a ``BlkRequest``:
either an ``IoRequest`` for an engine, or a status known at once (GET_ID,
UNSUPP, IOERR for out-of-range sectors or for more than the config space's
seg_max/size_max, disk.py).  A misaligned O_DIRECT request gets its own bounce buffer
(bounce.py); ``complete_request`` writes the data back where a bounce buffer
was used, then the status byte.  All are the Python reference of what
csrc/device/dp_blk.c does per request (which also keeps C's bounce memory within a budget).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dataplane.device.bounce import BounceBuffer
from dataplane.device.chain import Chain, Piece
from dataplane.device.disk import MAX_DISCARD_SECTORS, Disk
from dataplane.device.io_request import IoRequest, Op
from dataplane.errors import BadHeader, BadStatus
from dataplane.spec.blk import (
    DWZ_SEGMENT,
    HEADER,
    SECTOR_SIZE,
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
)


@dataclass(slots=True)
class BlkRequest:
    """One request between pop and completion."""

    head: int
    status_at: Piece
    used_len: int
    io: IoRequest | None = None
    status: int = VIRTIO_BLK_S_OK
    data: list[Piece] = field(default_factory=list)  # IN/OUT: the guest's data pieces
    bounce_len: int = 0  # bytes to bounce (misaligned for O_DIRECT); 0: none
    bounce: BounceBuffer | None = None  # the buffer the I/O goes through, if it bounces
    rtype: int = -1  # the header's VIRTIO_BLK_T_* and sector (stats, --record, the narrative)
    sector: int = 0
    # Kept by the datapath: pop and submit times (ns), its --trace-requests number (0: none).
    t_wake: int = 0  # the stamps of csrc/device/dp_blk.h's struct dp_req
    t_pop: int = 0
    t_submit: int = 0
    trace_seq: int = 0


def _split(pieces: list[Piece], skip: int, take: int) -> list[Piece]:
    """The sub-pieces covering bytes ``[skip, skip+take)`` of ``pieces``."""
    out: list[Piece] = []
    for region, off, n in pieces:
        if skip >= n:
            skip -= n
            continue
        k = min(n - skip, take)
        out.append((region, off + skip, k))
        take -= k
        skip = 0
        if not take:
            break
    return out


def _gather(pieces: list[Piece]) -> bytes:
    return b"".join(bytes(r.view[o : o + n]) for r, o, n in pieces)


def _scatter(pieces: list[Piece], data: bytes | memoryview) -> None:
    pos = 0
    for r, o, n in pieces:
        r.view[o : o + n] = data[pos : pos + n]
        pos += n


def _iov(pieces: list[Piece]) -> list[tuple[int, int]]:
    return [(r.host_addr + o, n) for r, o, n in pieces]


def _aligned(pieces: list[Piece], align: int) -> bool:
    return all(not ((r.host_addr + o) % align or n % align) for r, o, n in pieces)


def parse_request(chain: Chain, disk: Disk) -> BlkRequest:
    """Check a chain's framing and build the request it carries.

    Raises BadHeader or BadStatus for framing the guest got wrong; the queue
    is then broken.  Everything else (bad sector, bad type) becomes a status.
    """
    if chain.out_len < HEADER.size:
        raise BadHeader(f"head {chain.head}: {chain.out_len} readable bytes, header needs 16")
    if chain.in_len < 1:
        raise BadStatus(f"head {chain.head}: no device-writable byte for the status")
    rtype, _, sector = HEADER.unpack(_gather(_split(chain.out, 0, HEADER.size)))
    in_data = chain.in_len - 1
    status_at = _split(chain.in_, in_data, 1)[0]
    req = BlkRequest(chain.head, status_at, used_len=1, rtype=rtype, sector=sector)

    if rtype in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT):
        is_read = rtype == VIRTIO_BLK_T_IN
        length = in_data if is_read else chain.out_len - HEADER.size
        if is_read:
            req.used_len = chain.in_len
        if length % SECTOR_SIZE or not _in_range(sector, length // SECTOR_SIZE, disk):
            req.status = VIRTIO_BLK_S_IOERR
            return req
        if not is_read and disk.read_only:
            req.status = VIRTIO_BLK_S_IOERR
            return req
        if chain.ndesc > disk.seg_max + 2 or chain.longest > disk.size_max:
            req.status = VIRTIO_BLK_S_IOERR  # more than the config space promises
            return req
        data = _split(chain.in_, 0, length) if is_read else _split(chain.out, HEADER.size, length)
        io = IoRequest(
            Op.READ if is_read else Op.WRITE,
            offset=sector * SECTOR_SIZE,
            length=length,
            dsync=not is_read and not disk.writeback,
        )
        io.iov = _iov(data)
        req.data = data
        if disk.align > 1 and length and not _aligned(data, disk.align):
            if length > disk.bounce_max:
                # Only past what the config space promises (data in the header's descriptor).
                req.status = VIRTIO_BLK_S_IOERR
                return req
            req.bounce_len = length
            _bounce(req, io)
        req.io = io
        return req

    if rtype == VIRTIO_BLK_T_FLUSH:
        req.io = IoRequest(Op.FLUSH)
        return req

    if rtype == VIRTIO_BLK_T_GET_ID:
        n = min(in_data, VIRTIO_BLK_ID_BYTES)
        _scatter(_split(chain.in_, 0, n), disk.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")[:n])
        req.used_len = n + 1
        return req

    if rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        is_discard = rtype == VIRTIO_BLK_T_DISCARD
        if disk.read_only:
            req.status = VIRTIO_BLK_S_IOERR if not is_discard else VIRTIO_BLK_S_UNSUPP
            return req
        if chain.out_len - HEADER.size != DWZ_SEGMENT.size:
            req.status = VIRTIO_BLK_S_UNSUPP
            return req
        seg_sector, num, flags = DWZ_SEGMENT.unpack(
            _gather(_split(chain.out, HEADER.size, DWZ_SEGMENT.size))
        )
        allowed = 0 if is_discard else VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        if flags & ~allowed:
            req.status = VIRTIO_BLK_S_UNSUPP
            return req
        if num > MAX_DISCARD_SECTORS or not _in_range(seg_sector, num, disk):
            req.status = VIRTIO_BLK_S_IOERR
            return req
        req.io = IoRequest(
            Op.DISCARD if is_discard else Op.WRITE_ZEROES,
            offset=seg_sector * SECTOR_SIZE,
            length=num * SECTOR_SIZE,
            unmap=bool(flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
        )
        return req

    req.status = VIRTIO_BLK_S_UNSUPP
    return req


def _in_range(sector: int, count: int, disk: Disk) -> bool:
    return sector <= disk.sectors and count <= disk.sectors - sector


def _bounce(req: BlkRequest, io: IoRequest) -> None:
    """The I/O goes through a bounce buffer: a write's data is gathered into it now, a
    read's goes back at completion."""
    buf = req.bounce = BounceBuffer(req.bounce_len)
    if io.op == Op.WRITE:
        buf.view[:] = _gather(req.data)
    io.iov = [(buf.addr, req.bounce_len)]


def complete_request(req: BlkRequest, result: int | None) -> None:
    """Finish ``req``: copy a bounced read back, then write the status byte.

    ``result`` is the engine's result, or None for a request that never
    reached an engine.
    """
    if result is not None:
        assert req.io is not None
        want = req.io.length if req.io.op in (Op.READ, Op.WRITE) else 0
        ok = result == want if req.io.op in (Op.READ, Op.WRITE) else result >= 0
        req.status = VIRTIO_BLK_S_OK if ok else VIRTIO_BLK_S_IOERR
        if ok and req.bounce is not None and req.io.op == Op.READ:
            _scatter(req.data, req.bounce.view)
    release_request(req)
    region, off, _ = req.status_at
    region.view[off] = req.status


def release_request(req: BlkRequest) -> None:
    """Free ``req``'s bounce buffer, if it has one."""
    if req.bounce is not None:
        req.bounce.close()
        req.bounce = None
