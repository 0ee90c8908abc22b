"""Write the seed corpora of the fuzzers (fuzz/corpus/ring, fuzz/corpus/vhost).

    .venv/bin/python fuzz/make_seeds.py

Ring seeds are real rings laid out by the driver-side ring builder
(dataplane/guest/ring.py), in the input format of fuzz/ring_fuzz.c: its header,
then region 0 of guest RAM.  vhost seeds are what the test frontend sends at
connect, in the input format of fuzz/vhost_fuzz.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

from dataplane.device.blk import (
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
)
from dataplane.device.memory import RegionSpec
from dataplane.guest.ring import Buf, DriverRing, GuestRam
from dataplane.vhost.messages import (
    FLAG_NEED_REPLY,
    VERSION,
    Config,
    MemTable,
    Request,
    VringAddr,
    VringFile,
    VringState,
    encode_body,
    encode_message,
    payload_fds,
)

HERE = Path(__file__).resolve().parent
REGION_SIZE = 0x8000
# struct fuzz_header in fuzz/ring_fuzz.c
RING_HEADER = struct.Struct("<BBHHHHBBI")
BLK_HDR = struct.Struct("<IIQ")
DWZ = struct.Struct("<QII")


def ring_seed(num: int, requests: list[tuple[int, int, int, bool]], *, flags: int) -> bytes:
    """``requests``: (type, sector, data length, indirect)."""
    ram = GuestRam(REGION_SIZE, gpa=0)
    try:
        ring = DriverRing(ram, num, event_idx=bool(flags & 1))
        heads = []
        for rtype, sector, length, indirect in requests:
            hdr = ram.alloc(16)
            ram.write(hdr, BLK_HDR.pack(rtype, 0, sector))
            bufs = [Buf(hdr, 16)]
            if rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
                seg = ram.alloc(16)
                ram.write(seg, DWZ.pack(sector, 8, 1))
                bufs.append(Buf(seg, 16))
            elif length:
                bufs.append(Buf(ram.alloc(length, 512), length, writable=rtype != VIRTIO_BLK_T_OUT))
            bufs.append(Buf(ram.alloc(1, 1), 1, writable=True))
            heads.append(ring.add_chain(bufs, indirect=indirect))
        ring.publish(heads)
        header = RING_HEADER.pack(
            num.bit_length() - 2, flags, 0, ring.desc, ring.avail, ring.used, 0, 0x22, 1 << 16
        )
        return header + ram.read(0, REGION_SIZE).rstrip(b"\0")
    finally:
        ram.close()


RING_SEEDS = {
    "read-write": (8, [(VIRTIO_BLK_T_IN, 0, 4096, False), (VIRTIO_BLK_T_OUT, 8, 4096, False)], 0),
    "indirect-event-idx": (
        16,
        [(VIRTIO_BLK_T_IN, 1, 512, True), (VIRTIO_BLK_T_OUT, 2, 1024, True)],
        0b11,
    ),
    "flush-getid-discard": (
        16,
        [
            (VIRTIO_BLK_T_FLUSH, 0, 0, False),
            (VIRTIO_BLK_T_GET_ID, 0, 20, False),
            (VIRTIO_BLK_T_DISCARD, 0, 0, False),
            (VIRTIO_BLK_T_WRITE_ZEROES, 16, 0, True),
        ],
        0b11,
    ),
    "misaligned-bounce": (4, [(VIRTIO_BLK_T_IN, 0, 1000, False)], 0b10000),
    "read-only": (4, [(VIRTIO_BLK_T_OUT, 0, 512, False)], 0b100),
}


def vhost_seed(messages: list[tuple[Request, object]]) -> bytes:
    """Chunks in fuzz/vhost_fuzz.py's format: u16 length, u8 fd count, bytes."""
    out = b""
    for request, payload in messages:
        data = encode_message(request, VERSION | FLAG_NEED_REPLY, encode_body(payload))
        out += struct.pack("<HB", len(data), len(payload_fds(payload))) + data
    return out


VHOST_SEEDS = {
    "connect": [
        (Request.GET_FEATURES, None),
        (Request.GET_PROTOCOL_FEATURES, None),
        (Request.SET_PROTOCOL_FEATURES, 0x20B),
        (Request.GET_QUEUE_NUM, None),
        (Request.SET_OWNER, None),
        (Request.GET_CONFIG, Config(0, 60, 0, bytes(60))),
        (Request.SET_FEATURES, 1 << 32),
    ],
    "rings": [
        (Request.SET_MEM_TABLE, MemTable((RegionSpec(0, 1 << 20, 0x7F00000000, 0),), (0,))),
        (Request.SET_VRING_NUM, VringState(0, 128)),
        (Request.SET_VRING_BASE, VringState(0, 0)),
        (Request.SET_VRING_ADDR, VringAddr(0, 0, 0x7F00000000, 0x7F00002000, 0x7F00001000, 0)),
        (Request.SET_VRING_KICK, VringFile(0, 0)),
        (Request.SET_VRING_CALL, VringFile(0, None)),
        (Request.SET_VRING_ENABLE, VringState(0, 1)),
        (Request.GET_VRING_BASE, VringState(0, 0)),
        (Request.SET_CONFIG, Config(20, 1, 0, b"\1")),
    ],
}


def main() -> None:
    for name, (num, reqs, flags) in RING_SEEDS.items():
        (HERE / "corpus" / "ring" / name).write_bytes(ring_seed(num, reqs, flags=flags))
    for name, msgs in VHOST_SEEDS.items():
        (HERE / "corpus" / "vhost" / name).write_bytes(vhost_seed(msgs))


if __name__ == "__main__":
    main()
