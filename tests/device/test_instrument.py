"""Per-request instrumentation on both datapaths: stats, --trace-requests and --record.

Real eventfds, a real engine on a real image file, and real ``dataplane serve``
processes; no mocks.  The guest-recorded trace and its replay are in
tests/e2e/test_record.py.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import time

import pytest
from guest_support import start_dataplane
from ringutil import IMG_SECTORS, start_rig
from waits import WAIT_S

from dataplane.device.c import lib
from dataplane.device.disk import Disk
from dataplane.device.instrument import Instruments
from dataplane.device.stats import BUCKETS, LAT_LAYERS, bucket, merge_snapshots
from dataplane.device.virtqueue import VRING_AVAIL_F_NO_INTERRUPT
from dataplane.guest.bench.trace import read_trace
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.ring import Buf, DriverRing, GuestRam
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.spec.blk import (
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
)

HDR = struct.Struct("<IIQ")
DATAPATHS = ["native", "python"]


class _Lines(logging.Handler):
    """Collects the --trace-requests narrative logged by the dataplane thread."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("trace "):
            self.lines.append(msg)


@pytest.fixture
def narrative():
    h = _Lines()
    logger = logging.getLogger("dataplane.test")
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(h)
    yield h.lines
    logger.removeHandler(h)
    logger.setLevel(old)


def request(ram, rtype, sector=0, *, data=b"", read_len=0):
    """The buffers of one request laid out in guest RAM."""
    hdr = ram.alloc(16)
    ram.write(hdr, HDR.pack(rtype, 0, sector))
    bufs = [Buf(hdr, 16)]
    if data:
        gpa = ram.alloc(len(data), 512)
        ram.write(gpa, data)
        bufs.append(Buf(gpa, len(data)))
    if read_len:
        bufs.append(Buf(ram.alloc(read_len, 512), read_len, True))
    bufs.append(Buf(ram.alloc(1, 1), 1, True))
    return bufs


def submit_all(ring, rig, chains, *, indirect=False, signalled=True, timeout=WAIT_S):
    """Publish every chain at once, kick once, and wait until all are used."""
    heads = [ring.add_chain(c, indirect=indirect) for c in chains]
    ring.publish(heads)
    rig.kick()
    got: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while len(got) < len(heads):
        assert time.monotonic() < deadline, f"{len(got)} of {len(heads)} used"
        if signalled:
            rig.wait_call(timeout=0.2)
        else:
            time.sleep(0.01)
        got += ring.get_used()
    return got


def settle(thread, want_completed, timeout=WAIT_S):
    """The snapshot once every counter caught up (the counting ends just after used->idx)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = thread.stats()
        lat_done = all(sum(h) >= want_completed for h in snap["lat_ns"].values())
        if (snap["queues"][0]["completed"] >= want_completed and lat_done) or (
            time.monotonic() > deadline
        ):
            return snap
        time.sleep(0.01)


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_stats_count_a_known_workload(ram, image, datapath):
    """10 reads, 5 writes, 2 flushes, 1 discard, 1 bad-sector read, 1 GET_ID, 1 bad type."""
    _, fd = image
    ring = DriverRing(ram, 64)
    disk = Disk(IMG_SECTORS, serial=b"s", queue_size=64)
    rig = start_rig(ram, [ring], fd, disk, engine="threads", datapath=datapath)
    try:
        chains = [request(ram, VIRTIO_BLK_T_IN, 8 * i, read_len=4096) for i in range(10)]
        chains += [request(ram, VIRTIO_BLK_T_OUT, 100 + 16 * i, data=bytes(8192)) for i in range(5)]
        chains += [request(ram, VIRTIO_BLK_T_FLUSH) for _ in range(2)]
        chains.append(request(ram, VIRTIO_BLK_T_DISCARD, data=struct.pack("<QII", 500, 8, 0)))
        chains.append(request(ram, VIRTIO_BLK_T_IN, IMG_SECTORS, read_len=512))  # past the end
        chains.append(request(ram, VIRTIO_BLK_T_GET_ID, read_len=20))
        chains.append(request(ram, 99, read_len=0))  # unknown type: UNSUPP
        assert len(submit_all(ring, rig, chains)) == 21
        snap = settle(rig.thread, 21)
    finally:
        rig.close()
    json.dumps(snap)  # JSON-ready
    assert snap["datapath"] == datapath and snap["thread"] == "dp/test/0"
    (q,) = snap["queues"]
    assert q["index"] == 0
    assert q["requests"] == {
        "read": 11,
        "write": 5,
        "flush": 2,
        "discard": 1,
        "write_zeroes": 0,
        "get_id": 1,
        "other": 1,
    }
    assert q["completed"] == 21
    assert q["bytes_read"] == 10 * 4096
    assert q["bytes_written"] == 5 * 8192
    assert q["errors"] == {"ioerr": 1, "unsupp": 1}
    assert q["inflight"] == 0
    assert q["notifies"] >= 1
    assert set(snap["lat_ns"]) == set(LAT_LAYERS)
    for name, hist in snap["lat_ns"].items():
        assert len(hist) == BUCKETS and sum(hist) == 21, name
    # No-I/O requests (bad sector, GET_ID, bad type) spend 0 ns between pop and submit.
    assert snap["lat_ns"]["pop_submit"][0] >= 3
    assert snap["lat_ns"]["submit_complete"][0] >= 3
    # All 21 were published with one avail->idx store and one kick: passes pop them back to
    # back, the first DP_BATCH_MAX, the later ones at most as many (fewer once the driver
    # took an interrupt: csrc/device/dp_thread.h).
    batches = {i: n for i, n in enumerate(snap["batch_hist"]) if n}
    assert batches[bucket(lib.DP_BATCH_MAX)] >= 1
    assert max(batches) == bucket(lib.DP_BATCH_MAX)
    assert 21 // lib.DP_BATCH_MAX < sum(batches.values()) <= -(-21 // lib.DP_BATCH_WAKE) + 1


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_stats_outlive_a_ring_restart_and_the_thread(ram, image, datapath):
    _, fd = image
    ring = DriverRing(ram, 16)
    rig = start_rig(ram, [ring], fd, Disk(IMG_SECTORS, queue_size=16), datapath=datapath)
    thread = rig.thread
    try:
        submit_all(ring, rig, [request(ram, VIRTIO_BLK_T_IN, 0, read_len=512)])
        assert settle(thread, 1)["queues"][0]["completed"] == 1
        assert thread.stop_ring(0).result(WAIT_S) == 1
    finally:
        rig.close()
    after = thread.stats()  # the thread has ended: its last values
    assert after["queues"][0]["requests"]["read"] == 1
    assert after["queues"][0]["completed"] == 1


def test_merge_snapshots_sums_threads():
    def snap(index, n):
        return {
            "datapath": "native",
            "enabled": True,
            "queues": [{"index": index, "completed": n}],
            "batch_hist": [n] + [0] * (BUCKETS - 1),
            "lat_ns": {k: [0, n] + [0] * (BUCKETS - 2) for k in LAT_LAYERS},
        }

    m = merge_snapshots([snap(1, 3), snap(0, 2)])
    assert [q["index"] for q in m["queues"]] == [0, 1]
    assert m["threads"] == 2 and m["batch_hist"][0] == 5
    assert all(h[1] == 5 for h in m["lat_ns"].values())


# -- --trace-requests ---------------------------------------------------------------


def _narrate(ram_size, image_fd, datapath, *, event_idx, limit, handler_lines):
    """A fixed sequence of requests on a fresh RAM; returns the narrative lines."""
    ram = GuestRam(ram_size)
    inst = Instruments(trace_requests=limit)
    try:
        ring = DriverRing(ram, 16, event_idx=event_idx)
        rig = start_rig(
            ram, [ring], image_fd, Disk(IMG_SECTORS, serial=b"id", queue_size=16),
            engine="threads", datapath=datapath, event_idx=event_idx, instruments=inst,
        )  # fmt: skip
        try:
            submit_all(ring, rig, [request(ram, VIRTIO_BLK_T_OUT, 8, data=bytes(1024))])
            submit_all(ring, rig, [request(ram, VIRTIO_BLK_T_IN, 8, read_len=1024)], indirect=True)
            submit_all(
                ring, rig,
                [request(ram, VIRTIO_BLK_T_GET_ID, read_len=20),
                 request(ram, VIRTIO_BLK_T_IN, 1 << 40, read_len=512)],
            )  # fmt: skip
            if not event_idx:
                ring.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT)
                submit_all(ring, rig, [request(ram, VIRTIO_BLK_T_FLUSH)], signalled=False)
            submit_all(ring, rig, [request(ram, VIRTIO_BLK_T_FLUSH)], signalled=event_idx)
        finally:
            rig.close()
    finally:
        inst.close()
        ram.close()
    lines = list(handler_lines)
    handler_lines.clear()
    return lines


@pytest.mark.parametrize("event_idx", [True, False], ids=["event-idx", "no-event-idx"])
def test_trace_requests_same_words_on_both_datapaths(image, narrative, event_idx):
    _, fd = image
    by_path = {
        dp: _narrate(4 << 20, fd, dp, event_idx=event_idx, limit=4, handler_lines=narrative)
        for dp in DATAPATHS
    }
    assert by_path["native"] == by_path["python"]
    lines = by_path["python"]
    numbered = {line.split()[1] for line in lines if line.split()[1].startswith("#")}
    assert numbered == {"#1", "#2", "#3", "#4"}  # exactly N requests, though 5 or 6 were sent
    text = "\n".join(lines)
    for want in (
        "trace #1 q0: pop: avail idx 1, last_avail_idx 0: head 0",
        "trace #1 q0:   desc[0]: gpa 0x",
        "flags NEXT next",
        "flags WRITE",
        "trace #1 q0: header: type 1 (OUT), sector 8",
        "trace #1 q0: I/O: write 1024 bytes at offset 4096 in 1 iovec(s)",
        "trace #1 q0: submitted: in a batch of 1 request(s), one engine call",
        "trace #1 q0: complete: result 1024, status 0 (OK); add_used(id 0, len 1) at used idx 0",
        "flags INDIRECT",
        "trace #2 q0:   indirect table at gpa 0x",
        "trace #2 q0:   indirect[2]: gpa 0x",
        "trace #3 q0: header: type 8 (GET_ID), sector 0",
        "trace #3 q0: no I/O: status 0 (OK), used len 21",
        "trace #4 q0: no I/O: status 1 (IOERR), used len 513",
        "trace #4 q0: complete: status 1 (IOERR); add_used(",
        "trace q0: signal_used: call eventfd written",
    ):
        assert want in text, want
    if event_idx:
        assert "EVENT_IDX: used_event 0, first signal since the ring started: notify" in text
        assert "vring_need_event(" in text
    else:
        assert "trace q0: used idx 1 published; avail flags 0x0: notify" in text


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_serve_trace_requests_narrates_exactly_n(tmp_path, datapath):
    log = _serve_session(tmp_path, datapath, ("--trace-requests", "3"))
    numbered = [line for line in log.splitlines() if "trace #" in line]
    assert {line.split("trace ")[1].split()[0] for line in numbered} == {"#1", "#2", "#3"}
    assert any("pop: avail idx" in line for line in numbered)
    assert any("trace q0: used idx" in line for line in log.splitlines())
    assert "trace #4" not in log
    quiet = _serve_session(tmp_path / "quiet", datapath, ())
    assert "trace #" not in quiet and "trace q" not in quiet


def _serve_session(tmp_path, datapath, extra, requests=None):
    """Serve a fresh image and send a fixed set of requests over vhost-user; return the log."""
    tmp_path.mkdir(exist_ok=True)
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(IMG_SECTORS * 512))
    sock_dir = short_socket_dir()
    b = start_dataplane(
        sock_dir / "s.sock", image, aio="io_uring", cache="writeback",
        log_path=tmp_path / "log", extra_args=("--datapath", datapath, *extra),
    )  # fmt: skip
    try:
        with BlkDriver(b.socket, queue_size=64) as drv:
            for i in range(4):
                assert drv.write(16 * i, os.urandom(4096)).status == 0
            for i in range(3):
                assert drv.read(16 * i, 8192).status == 0
            assert drv.flush().status == 0
            assert drv.discard(512, 16).status == 0
            assert drv.write_zeroes(600, 8, unmap=True).status == 0
            assert drv.get_id().status == 0
            assert drv.read(IMG_SECTORS, 512).status == 1  # not recorded: IOERR at parse
    finally:
        assert b.stop() == 0, b.log_text()
        sock_dir.rmdir()
    return b.log_text()


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_serve_record_writes_every_request(tmp_path, datapath):
    rec = tmp_path / "rec.trace"
    log = _serve_session(tmp_path, datapath, ("--record", str(rec)))
    trace = read_trace(rec)
    assert trace.mix() == {"read": 3, "write": 4, "flush": 1, "discard": 1, "write_zeroes": 1}
    rows = list(zip(trace.kind, trace.sector, trace.length, trace.queue, strict=True))
    assert rows == [
        *[(1, 16 * i, 4096, 0) for i in range(4)],
        *[(0, 16 * i, 8192, 0) for i in range(3)],
        (2, 0, 0, 0),
        (3, 512, 16 * 512, 0),
        (4, 600, 8 * 512, 0),
    ]
    assert trace.t_ns[0] == 0 and list(trace.t_ns) == sorted(trace.t_ns)
    assert f"recorded 10 requests to {rec}" in log
    assert rec.read_text().startswith("# dataplane-trace v1\n")


@pytest.mark.parametrize(
    "args,why",
    [
        (("--record", "/nonexistent-dir/x.trace"), "does not exist"),
        (("--record", "/tmp"), "is a directory"),
        (("--trace-requests", "-1"), "must not be negative"),
        (("--trace-requests", "many"), "is not an integer"),
    ],
)
def test_bad_instrument_flags_exit_2(tmp_path, args, why):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    p = subprocess.run(
        [sys.executable, "-m", "dataplane", "serve", "--socket", str(tmp_path / "s.sock"),
         "--image", str(image), *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert why in p.stderr and args[0] in p.stderr
