"""A guest's misaligned flood costs the backend no more memory than its bounce budget.

A full queue of 4 MiB reads whose buffers are misaligned for O_DIRECT (all of
them over the same guest pages, as a hostile guest may post) asks for 512 MiB
of bounce memory at once.  The backend's anonymous memory (where bounce
blocks live) may grow by the budget (32 MiB by default) plus a fixed
overhead, however long the flood.  The budget is the C datapath's: the Python
reference bounces each request through a buffer of its own (device/bounce.py).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

from dataplane.device.disk import DEFAULT_BOUNCE_BYTES
from dataplane.guest.harness.processes import short_socket_dir, start_dataplane
from dataplane.guest.ring import Buf
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.spec.blk import VIRTIO_BLK_T_IN

REQUEST = 4 << 20
QUEUE = 128
OVERHEAD = 16 << 20  # request structures, Python objects, allocator slack
HDR = struct.Struct("<IIQ")


def rss_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no RssAnon in /proc/PID/status")


class PeakSampler(threading.Thread):
    """The largest RssAnon of ``pid`` seen, sampled every millisecond until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss_anon(self.pid))
            time.sleep(0.001)


def test_misaligned_flood_stays_within_the_bounce_budget(tmp_path):
    datapath = "native"
    image = Path("/dev/shm") / f"dp-flood-{os.getpid()}-{datapath}.img"  # O_DIRECT, in RAM
    pattern = os.urandom(1 << 20) * (REQUEST >> 20)
    image.write_bytes(pattern * 2)
    sock_dir = short_socket_dir()
    backend = start_dataplane(
        sock_dir / "s.sock", image, cache="none", log_path=tmp_path / "serve.log",
        extra_args=("--datapath", datapath),
    )  # fmt: skip
    count = QUEUE
    try:
        with BlkDriver(backend.socket, queue_size=QUEUE, ram_size=32 << 20) as drv:
            size_max = struct.unpack_from("<I", drv.config, 8)[0]
            seg_max = struct.unpack_from("<I", drv.config, 12)[0]
            assert seg_max * size_max <= DEFAULT_BOUNCE_BYTES
            nseg = REQUEST // size_max
            assert nseg <= seg_max
            ram = drv.ram
            assert drv.read(0, 4096).status == 0  # warm up (the driver's heap restarts after)
            data = ram.alloc(REQUEST + 4096, 4096) + 1  # shared by every request, misaligned
            base = rss_anon(backend.pid)
            ring, heads = drv.queues[0].ring, []
            statuses = []
            for _ in range(count):
                hdr = ram.alloc(16)
                ram.write(hdr, HDR.pack(VIRTIO_BLK_T_IN, 0, 0))
                status = ram.alloc(1)
                ram.write(status, b"\xff")
                statuses.append(status)
                bufs = [Buf(hdr, 16)]
                bufs += [Buf(data + k * size_max, size_max, True) for k in range(nseg)]
                heads.append(ring.add_chain([*bufs, Buf(status, 1, True)], indirect=True))
            sampler = PeakSampler(backend.pid)
            sampler.start()
            ring.publish(heads)
            drv.kick()
            got: list[tuple[int, int]] = []
            deadline = time.monotonic() + 120
            while len(got) < count:
                assert time.monotonic() < deadline, f"{len(got)} of {count} completed"
                ring.set_used_event(ring.last_used_idx)
                got += ring.get_used()
                time.sleep(0.001)
            sampler.done.set()
            sampler.join()
            assert sorted(h for h, _ in got) == sorted(heads)
            assert all(length == REQUEST + 1 for _, length in got)
            assert all(ram.read(s, 1) == b"\0" for s in statuses)
            assert ram.read(data, REQUEST) == pattern  # the last read's data, in place
        growth = sampler.peak - base
        print(f"{datapath}: {count} x 4 MiB misaligned reads: anonymous memory +{growth >> 20} MiB")
        assert growth <= DEFAULT_BOUNCE_BYTES + OVERHEAD, (
            f"{datapath}: anonymous memory grew by {growth >> 20} MiB for {count} x 4 MiB "
            f"misaligned reads; the bounce budget is {DEFAULT_BOUNCE_BYTES >> 20} MiB"
        )
    finally:
        assert backend.stop() == 0, backend.log_text()
        sock_dir.rmdir()
        image.unlink()
