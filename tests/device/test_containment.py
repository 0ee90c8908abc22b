"""Containment, in process: frontend fds that never block a thread, a kick fd that hangs up,
a full call eventfd, SIGBUS in guest RAM, a dying dataplane thread, a session that raises.

Real eventfds, pipes, memfds and dataplane threads; the two-device attacks on a real
``dataplane serve`` are in test_hostile_frontend.py.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ringutil import IMG_SECTORS, start_rig
from waits import WAIT_S, finishes

from dataplane.device import eventfd
from dataplane.device.c import lib
from dataplane.device.datapath.base import RingSetup
from dataplane.device.disk import Disk
from dataplane.device.memory import GuestMemory, MemoryRegion
from dataplane.errors import ProtocolError
from dataplane.guest.frontend import Frontend
from dataplane.guest.ring import Buf, DriverRing, GuestRam
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.serve.device_options import DeviceOptions
from dataplane.serve.session import Session
from dataplane.spec.blk import VIRTIO_BLK_T_IN

EVENTFD_MAX = 0xFFFFFFFFFFFFFFFE  # an eventfd's largest count: a write of 1 would block


@pytest.fixture(params=["native", "python"])
def datapath(request):
    return request.param


def cpu_ticks(tid: int) -> int:
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


# -- frontend fds ---------------------------------------------------------------------------


def test_only_eventfds_are_eventfds(tmp_path):
    r, w = os.pipe()
    fds = {
        "eventfd": os.eventfd(0),
        "memfd": os.memfd_create("x"),
        "devnull": os.open(os.devnull, os.O_RDWR),
        "pipe": r,
        "file": os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR),
    }
    try:
        assert {k: eventfd.is_eventfd(fd) for k, fd in fds.items()} == {
            "eventfd": True, "memfd": False, "devnull": False, "pipe": False, "file": False,
        }  # fmt: skip
        with pytest.raises(ProtocolError, match=r"vring 0 kick fd is not an eventfd \(pipe:"):
            eventfd.check_eventfd(r, "vring 0 kick fd")
    finally:
        for fd in [*fds.values(), w]:
            os.close(fd)


@pytest.mark.parametrize("impl", ["c", "python"])
def test_eventfd_reads_and_writes_never_block_on_a_blocking_eventfd(impl):
    drain = (lambda fd: lib.dp_fdio_drain(fd)) if impl == "c" else eventfd.drain
    signal = (lambda fd: lib.dp_fdio_signal(fd)) if impl == "c" else eventfd.signal
    fd = os.eventfd(0)  # blocking: as a frontend that cleared O_NONBLOCK leaves it
    try:
        assert not finishes(lambda: drain(fd), "a drain")  # empty: a blocking read would hang here
        os.eventfd_write(fd, EVENTFD_MAX)
        assert finishes(lambda: signal(fd), "a signal") == lib.DP_FDIO_FULL == eventfd.FULL
        assert finishes(lambda: drain(fd), "a drain")
        assert finishes(lambda: signal(fd), "a signal") == 0
        assert os.eventfd_read(fd) == 1
    finally:
        os.close(fd)


def _restart_ring(rig, ring: DriverRing, *, kick: int, call: int | None = None) -> None:
    ram = rig.ram
    rig.thread.start_ring(
        RingSetup(
            index=0, num=ring.num, desc_uva=ram.uva_of(ring.desc),
            avail_uva=ram.uva_of(ring.avail), used_uva=ram.uva_of(ring.used),
            last_avail_idx=0, kick_fd=kick, call_fd=call, err_fd=os.dup(rig.errs[0]),
            event_idx=False, indirect=True,
        )
    ).result(WAIT_S)  # fmt: skip


def _read_request(ram: GuestRam, ring: DriverRing) -> int:
    hdr = ram.alloc(16)
    ram.write(hdr, VIRTIO_BLK_T_IN.to_bytes(4, "little") + bytes(12))
    data, status = ram.alloc(512, 512), ram.alloc(1, 1)
    head = ring.add_chain([Buf(hdr, 16), Buf(data, 512, True), Buf(status, 1, True)])
    ring.publish([head])
    return head


def test_a_kick_fd_that_hangs_up_breaks_its_ring_and_never_spins(ram, image, datapath, caplog):
    ring = DriverRing(ram, 8)
    rig = start_rig(ram, [ring], image[1], Disk(IMG_SECTORS, queue_size=8), datapath=datapath)
    try:
        r, w = os.pipe()
        _restart_ring(rig, ring, kick=r)
        with caplog.at_level(logging.ERROR, logger="dataplane.test"):
            os.close(w)  # EPOLLHUP on the read end, for ever
            assert rig.err_signalled()
            before = cpu_ticks(rig.thread.native_id)
            time.sleep(0.5)
            spent = cpu_ticks(rig.thread.native_id) - before
        assert spent < 10, f"the thread spun on the hung-up kick fd ({spent} ticks in 0.5 s)"
        assert rig.thread.datapath.is_broken(0)
        assert "KickFdFailed: kick fd reported EPOLLHUP" in caplog.text
        # The rest of the thread is fine: a new ring with a good kick fd serves.
        kick = os.eventfd(0, os.EFD_NONBLOCK)
        _restart_ring(rig, ring, kick=os.dup(kick), call=os.dup(rig.calls[0]))
        _read_request(ram, ring)
        os.eventfd_write(kick, 1)
        assert rig.wait_call()
        os.close(kick)
    finally:
        rig.close()


def test_a_full_call_eventfd_drops_the_notification_and_counts_it(ram, image, datapath, caplog):
    ring = DriverRing(ram, 8)
    rig = start_rig(ram, [ring], image[1], Disk(IMG_SECTORS, queue_size=8), datapath=datapath)
    full = os.eventfd(EVENTFD_MAX >> 32)
    os.eventfd_write(full, EVENTFD_MAX - (EVENTFD_MAX >> 32))  # now at the maximum
    fcntl.fcntl(rig.kicks[0], fcntl.F_SETFL, 0)  # the frontend clears O_NONBLOCK on the kick
    try:
        with caplog.at_level(logging.WARNING, logger="dataplane.test"):
            rig.thread.set_call_fd(0, os.dup(full)).result(WAIT_S)
            for n in (1, 2):
                _read_request(ram, ring)
                rig.kick()
                deadline = time.monotonic() + WAIT_S
                while ring.used_idx() != n:
                    assert time.monotonic() < deadline, "the request never completed"
                    time.sleep(0.01)
            # The thread is not stuck: it stops the ring at once.
            assert rig.thread.stop_ring(0).result(WAIT_S) == 2
        q = rig.thread.stats()["queues"][0]
        assert q["notifies_dropped"] == 2 and q["notifies"] == 0
        assert caplog.text.count("the call eventfd is full") == 1
    finally:
        os.close(full)
        rig.close()


# -- SIGBUS ---------------------------------------------------------------------------------


def test_guest_ram_that_shrinks_under_the_mapping_is_contained(image, datapath):
    """The frontend truncates guest RAM; the thread faults on the rings; the process lives."""
    ram = GuestRam(1 << 20)
    ram.alloc(768 << 10)  # the rings lie past the new end of the file
    ring = DriverRing(ram, 8)
    mem = GuestMemory.map_fds([ram.spec], [ram.fd])
    rig = start_rig(
        ram, [ring], image[1], Disk(IMG_SECTORS, queue_size=8), datapath=datapath, mem=mem
    )
    try:
        assert mem.faulted() is None
        _read_request(ram, ring)
        os.ftruncate(ram.fd, 512 << 10)  # from here on the test never touches that RAM
        rig.kick()
        deadline = time.monotonic() + WAIT_S
        while mem.faulted() is None:
            assert time.monotonic() < deadline, "no fault was contained"
            time.sleep(0.01)
        where = mem.faulted()
        assert where.startswith("SIGBUS at guest address 0x")
        assert ring.desc <= int(where.rsplit(" ", 1)[1], 16) < ring.used + 4096
        # The thread survived and still answers.
        assert rig.thread.stop_ring(0).result(WAIT_S) is not None
    finally:
        rig.thread.shutdown()
        mem.close()
        for fd in rig.kicks + rig.calls + rig.errs:
            os.close(fd)
        ram.close()


def test_a_sigbus_outside_guest_ram_still_kills_the_process(tmp_path):
    """Containment takes only faults in registered guest regions; any other one is fatal."""
    script = (
        "import mmap, os\n"
        "from dataplane.guest.ring import GuestRam\n"
        "from dataplane.device.memory import GuestMemory\n"
        "ram = GuestRam(1 << 20)\n"
        "mem = GuestMemory.map_fds([ram.spec], [ram.fd])\n"  # installs the handler
        "fd = os.memfd_create('other'); os.ftruncate(fd, 8192)\n"
        "m = mmap.mmap(fd, 8192); os.ftruncate(fd, 0)\n"
        "m[4096]\n"
        "print('survived')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -7, (proc.returncode, proc.stdout, proc.stderr)  # SIGBUS
    assert "survived" not in proc.stdout


def test_a_file_that_shrank_between_fstat_and_mmap_is_a_protocol_error(monkeypatch):
    ram = GuestRam(1 << 20)
    try:
        real = os.fstat

        class Bigger:
            def __init__(self, st):
                self.st_size = st.st_size * 4

        monkeypatch.setattr("dataplane.device.memory.os.fstat", lambda fd: Bigger(real(fd)))
        spec = ram.spec.__class__(ram.gpa, 2 << 20, ram.uva, 0)
        with pytest.raises(ProtocolError, match="cannot map memory region"):
            MemoryRegion(spec, ram.fd)
    finally:
        ram.close()


# -- a dying dataplane thread ------------------------------------------------------------


def test_a_dead_thread_fails_its_pending_commands_at_once(ram, image, datapath):
    ring = DriverRing(ram, 8)
    rig = start_rig(ram, [ring], image[1], Disk(IMG_SECTORS, queue_size=8), datapath=datapath)
    died = []
    rig.thread.on_death = died.append
    killed = rig.thread.kill(RuntimeError("boom"))
    try:
        pending = [rig.thread.call(lambda: "never run"), rig.thread.stop_ring(0)]
    except RuntimeError:
        pending = [killed]  # it died before these were queued: call refuses at once
    for fut in pending:
        with pytest.raises(RuntimeError, match=r"dp/test/0 died: RuntimeError\('boom'\)"):
            fut.result(WAIT_S)
    with pytest.raises(RuntimeError, match="died"):
        killed.result(WAIT_S)  # the fatal command itself fails too
    rig.thread.join(WAIT_S)
    assert rig.thread.dead and [str(e) for e in died] == ["boom"]
    with pytest.raises(RuntimeError, match="died"):
        rig.thread.stop_ring(0)
    assert rig.thread.stats()["queues"][0]["index"] == 0  # its last stats stay readable
    rig.close()  # shutdown of a dead thread only joins it


# -- a session that raises ----------------------------------------------------------------


def test_a_session_that_raises_ends_only_its_connection(tmp_path, monkeypatch, caplog):
    from dataplane.serve.devices import DeviceSet
    from dataplane.serve.server import DeviceServer

    img = tmp_path / "img"
    img.write_bytes(bytes(1 << 20))
    sock = tmp_path / "s.sock"
    real = Session.handle
    calls = {"n": 0}

    async def handle(self, msg):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("a bug in a handler")
        return await real(self, msg)

    monkeypatch.setattr(Session, "handle", handle)

    def first() -> str:
        with Frontend.connect(sock) as fe, pytest.raises(ConnectionError):
            fe.get_features()
        return "dropped"

    def second() -> int:
        with BlkDriver(sock) as d:
            return d.read(0, 512).status

    async def main() -> tuple[str, int]:
        devices = DeviceSet(logging.getLogger("dataplane.test"), DeviceServer)
        await devices.add(DeviceOptions(image=img, socket=sock, name="vb", aio="threads"))
        try:
            return await asyncio.to_thread(first), await asyncio.to_thread(second)
        finally:
            await devices.close()

    with caplog.at_level(logging.INFO, logger="dataplane.test"):
        assert asyncio.run(main()) == ("dropped", 0)
    line = "vb: internal error, connection dropped: ValueError: a bug in a handler"
    assert [r.getMessage() for r in caplog.records].count(line) == 1
    assert not sock.exists()
