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

from dataplane.guest.ring import Buf, DriverRing, GuestRam
from dataplane.spec import blk
from dataplane.vhost import encoding
from dataplane.vhost import messages as vu

HERE = Path(__file__).resolve().parent
REGION_SIZE = 0x8000
# struct fuzz_header in fuzz/ring_fuzz.c
RING_HEADER = struct.Struct("<BBHHHHBBI")


def ring_seed(num: int, requests: list[tuple[int, int, int, bool]], *, flags: int) -> bytes:
    """``requests``: (type, sector, data length, indirect)."""
    ram = GuestRam(REGION_SIZE, gpa=0)
    try:
        ring = DriverRing(ram, num, event_idx=bool(flags & 1))
        heads = []
        for rtype, sector, length, indirect in requests:
            hdr = ram.alloc(16)
            ram.write(hdr, blk.HEADER.pack(rtype, 0, sector))
            bufs = [Buf(hdr, 16)]
            if rtype in (blk.VIRTIO_BLK_T_DISCARD, blk.VIRTIO_BLK_T_WRITE_ZEROES):
                seg = ram.alloc(16)
                ram.write(seg, blk.DWZ_SEGMENT.pack(sector, 8, 1))
                bufs.append(Buf(seg, 16))
            elif length:
                bufs.append(
                    Buf(ram.alloc(length, 512), length, writable=rtype != blk.VIRTIO_BLK_T_OUT)
                )
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
    "read-write": (
        8,
        [(blk.VIRTIO_BLK_T_IN, 0, 4096, False), (blk.VIRTIO_BLK_T_OUT, 8, 4096, False)],
        0,
    ),
    "indirect-event-idx": (
        16,
        [(blk.VIRTIO_BLK_T_IN, 1, 512, True), (blk.VIRTIO_BLK_T_OUT, 2, 1024, True)],
        0b11,
    ),
    "flush-getid-discard": (
        16,
        [
            (blk.VIRTIO_BLK_T_FLUSH, 0, 0, False),
            (blk.VIRTIO_BLK_T_GET_ID, 0, 20, False),
            (blk.VIRTIO_BLK_T_DISCARD, 0, 0, False),
            (blk.VIRTIO_BLK_T_WRITE_ZEROES, 16, 0, True),
        ],
        0b11,
    ),
    "misaligned-bounce": (4, [(blk.VIRTIO_BLK_T_IN, 0, 1000, False)], 0b10000),
    "read-only": (4, [(blk.VIRTIO_BLK_T_OUT, 0, 512, False)], 0b100),
}


def vhost_seed(messages: list[tuple[vu.Request, object]]) -> bytes:
    """Chunks in fuzz/vhost_fuzz.py's format: u16 length, u8 fd count, bytes."""
    out = b""
    for request, payload in messages:
        data = vu.encode_message(
            request, vu.VERSION | vu.FLAG_NEED_REPLY, encoding.encode_body(payload)
        )
        out += struct.pack("<HB", len(data), len(encoding.payload_fds(payload))) + data
    return out


VHOST_SEEDS = {
    "connect": [
        (vu.Request.GET_FEATURES, None),
        (vu.Request.GET_PROTOCOL_FEATURES, None),
        (vu.Request.SET_PROTOCOL_FEATURES, 0x20B),
        (vu.Request.GET_QUEUE_NUM, None),
        (vu.Request.SET_OWNER, None),
        (vu.Request.GET_CONFIG, vu.Config(0, 60, 0, bytes(60))),
        (vu.Request.SET_FEATURES, 1 << 32),
    ],
    "rings": [
        (
            vu.Request.SET_MEM_TABLE,
            vu.MemTable((vu.RegionSpec(0, 1 << 20, 0x7F00000000, 0),), (0,)),
        ),
        (vu.Request.SET_VRING_NUM, vu.VringState(0, 128)),
        (vu.Request.SET_VRING_BASE, vu.VringState(0, 0)),
        (
            vu.Request.SET_VRING_ADDR,
            vu.VringAddr(0, 0, 0x7F00000000, 0x7F00002000, 0x7F00001000, 0),
        ),
        (vu.Request.SET_VRING_KICK, vu.VringFile(0, 0)),
        (vu.Request.SET_VRING_CALL, vu.VringFile(0, None)),
        (vu.Request.SET_VRING_ENABLE, vu.VringState(0, 1)),
        (vu.Request.GET_VRING_BASE, vu.VringState(0, 0)),
        (vu.Request.SET_CONFIG, vu.Config(20, 1, 0, b"\1")),
    ],
}


def main() -> None:
    for name, (num, reqs, flags) in RING_SEEDS.items():
        (HERE / "corpus" / "ring" / name).write_bytes(ring_seed(num, reqs, flags=flags))
    for name, msgs in VHOST_SEEDS.items():
        (HERE / "corpus" / "vhost" / name).write_bytes(vhost_seed(msgs))


if __name__ == "__main__":
    main()
