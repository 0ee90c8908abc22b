"""The test-only delay stage (test-delay=EVERY:US): every Nth completion arrives late,
behind later requests, through the C engine of the C datapath, with results untouched.
The Python reference datapath has none, and refuses it.

Only orders are asserted, never times: a poll timeout here only stops a hang.
"""

from __future__ import annotations

import logging
import os
import select
import struct

import pytest
from ringutil import IMG_SECTORS, start_rig

from dataplane.device.c import ffi, lib
from dataplane.device.datapath.c import CDatapath
from dataplane.device.datapath.factory import open_datapath
from dataplane.device.disk import Disk
from dataplane.device.engines.delay import TestDelay, parse_test_delay, set_c_test_delay
from dataplane.device.engines.local import LocalEngine
from dataplane.errors import UsageError
from dataplane.guest.ring import Buf, DriverRing
from dataplane.spec.blk import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT

log = logging.getLogger("test-delay")
HANG = 10_000  # ms: the poll below waits for the delay; this only ends a hang


def readable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(HANG))


def test_parse_test_delay():
    assert parse_test_delay("4:2000") == TestDelay(4, 2000)
    assert parse_test_delay("1:0") == TestDelay(1, 0)
    for bad in ("4", "0:100", "x:1", "4:-1", "4:99999999", ""):
        with pytest.raises(ValueError, match=r"test-delay=.*expected EVERY:US"):
            parse_test_delay(bad)


def c_ios(n: int):
    ios = [ffi.new("struct dp_io *") for _ in range(n)]
    for i, io in enumerate(ios):
        io.token, io.op, io.length = i + 1, lib.DP_OP_FLUSH, 0
    return ios


def c_reap(eng: LocalEngine) -> list[int]:
    out = ffi.new("struct dp_cqe[]", 16)
    n = lib.dp_engine_reap(eng.handle, out, 16)
    assert all(out[i].res == 0 for i in range(n))
    return [out[i].token for i in range(n)]


def test_the_c_engine_holds_every_nth_completion_and_wakes_for_it(image):
    _, fd = image
    eng = LocalEngine("null", fd, 16)
    try:
        set_c_test_delay(eng.handle, TestDelay(3, 20_000))
        with pytest.raises(OSError):
            set_c_test_delay(eng.handle, TestDelay(3, 20_000))  # once, before any I/O
        ios = c_ios(7)
        assert lib.dp_engine_submit(eng.handle, ffi.new("struct dp_io *[]", ios), 7) == 0
        assert c_reap(eng) == [1, 2, 4, 5, 7]  # 3 and 6 held
        # Not due yet: the caller may block, and the timer wakes it.
        while lib.dp_engine_prepare_wait(eng.handle) == 0:
            assert readable(lib.dp_engine_completion_fd(eng.handle))
            if lib.dp_engine_ready(eng.handle):
                break
        assert c_reap(eng) == [3, 6]
        assert lib.dp_engine_prepare_wait(eng.handle) == 0 and c_reap(eng) == []
    finally:
        eng.close()


def test_the_python_datapath_refuses_test_delay(image):
    _, fd = image
    with pytest.raises(UsageError, match="test-delay needs --datapath native"):
        open_datapath(
            "python", Disk(IMG_SECTORS), "null", fd, 16, [0], log, test_delay=TestDelay(2, 1)
        )


HDR = struct.Struct("<IIQ")


def test_the_c_datapath_completes_out_of_order_under_test_delay(ram, image):
    path, fd = image
    disk = Disk(IMG_SECTORS, queue_size=16)
    eng = LocalEngine("threads", fd, 64)
    set_c_test_delay(eng.handle, TestDelay(2, 200_000))
    dp = CDatapath(disk, eng, [0], log)
    ring = DriverRing(ram, 16)
    rig = start_rig(ram, [ring], fd, disk, dp=dp)
    try:
        reqs = []
        for i in range(8):
            hdr, data, status = ram.alloc(16), ram.alloc(512, 512), ram.alloc(1, 1)
            ram.write(hdr, HDR.pack(VIRTIO_BLK_T_OUT, 0, 8 * i))
            ram.write(data, bytes([i + 1]) * 512)
            chain = [Buf(hdr, 16), Buf(data, 512), Buf(status, 1, True)]
            reqs.append((ring.add_chain(chain, indirect=True), status))
        heads = [h for h, _ in reqs]
        ring.publish(heads)
        rig.kick(0)
        used: list[int] = []
        while len(used) < len(heads):
            assert rig.wait_call(0, timeout=HANG / 1000), "no completion signalled"
            used += [h for h, _ in ring.get_used()]
        assert sorted(used) == sorted(heads) and used != heads
        assert all(ram.read(s, 1) == bytes([VIRTIO_BLK_S_OK]) for _, s in reqs)
        img = path.read_bytes()
        assert all(img[8 * i * 512 : 8 * i * 512 + 512] == bytes([i + 1]) * 512 for i in range(8))
    finally:
        rig.close()
        os.fsync(fd)
