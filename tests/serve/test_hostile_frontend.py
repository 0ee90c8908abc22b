"""A hostile frontend harms only its own device.

One ``dataplane serve`` process serves devices ``a`` and ``b``.  Every attack of issue 9 is
made on ``b``, through a real socket, with real fds.  After each one: the process is alive,
``a`` (connected all along, as a running guest would be) writes and reads back verified data,
and a fresh connection to ``b`` serves.  At the end SIGTERM stops the process within 10 s.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from clitest import assert_usage_error, run_cli
from guest_support import start_dataplane
from waits import WAIT_S

from dataplane import test_hooks
from dataplane.errors import ProtocolError
from dataplane.guest.dirty_log import MigrationLog
from dataplane.guest.frontend import Frontend
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.ring import DriverRing, GuestRam
from dataplane.guest.virtio_blk import BlkDriver, negotiate, start_vring, vring_addr
from dataplane.serve.mgmt_client import MgmtClient
from dataplane.spec.blk import VIRTIO_BLK_T_IN
from dataplane.vhost.messages import VHOST_F_LOG_ALL, LogBase, MemTable, ProtocolFeature

SECTORS = 4096
EVENTFD_MAX = 0xFFFFFFFFFFFFFFFE


class Rig:
    def __init__(self, backend, sock_dir: Path, a_img: Path, b_img: Path) -> None:
        self.backend = backend
        self.a_sock, self.b_sock, self.mgmt = (sock_dir / n for n in ("a.sock", "b.sock", "m.sock"))
        self.a_img, self.b_img = a_img, b_img
        self.a = BlkDriver(self.a_sock)
        self.rounds = 0

    def log(self) -> str:
        return self.backend.log_text()

    def wait_log(self, needle: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log():
            assert time.monotonic() < deadline, f"{needle!r} never logged:\n{self.log()}"
            time.sleep(0.05)

    def assert_isolated(self) -> None:
        """The process lives, ``a`` serves verified I/O, a fresh connection to ``b`` serves."""
        assert self.backend.proc.poll() is None, self.log()
        self.rounds += 1
        sector = 8 * (self.rounds % (SECTORS // 8))
        data = os.urandom(4096)
        assert self.a.write(sector, data).status == 0
        assert self.a.read(sector, 4096).data == data
        with BlkDriver(self.b_sock) as b:
            assert b.write(sector, data).status == 0
            assert b.read(sector, 4096).data == data
        assert self.b_img.read_bytes()[sector * 512 : sector * 512 + 4096] == data


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    sock_dir = short_socket_dir()
    a_img, b_img = tmp / "a.img", tmp / "b.img"
    for p in (a_img, b_img):
        p.write_bytes(os.urandom(SECTORS * 512))
    backend = start_dataplane(
        sock_dir / "a.sock", a_img, log_path=tmp / "serve.log", env=test_hooks.ON,
        extra_args=("--name", "a", "--mgmt", str(sock_dir / "m.sock"),
                    "--device", f"socket={sock_dir / 'b.sock'},image={b_img},name=b",
                    "--sandbox", "on"),  # confined: each attack stays inside the lists
    )  # fmt: skip
    r = Rig(backend, sock_dir, a_img, b_img)
    yield r
    r.a.close()
    if backend.proc.poll() is None:
        backend.proc.kill()
        backend.proc.wait()
    shutil.rmtree(sock_dir, ignore_errors=True)


def hostile_ring(rig: Rig, *, kick: int, call: int | None, err: int | None = None) -> None:
    """Set up b's ring 0 with the frontend's chosen fds, as QEMU's vhost_virtqueue_start."""
    ram = GuestRam(1 << 20)
    try:
        with Frontend.connect(rig.b_sock) as fe:
            negotiate(fe)
            fe.set_mem_table(MemTable((ram.spec,), (ram.fd,)))
            ring = DriverRing(ram, 8)
            if err is not None:
                fe.set_vring_err(0, err)
            start_vring(fe, ram, 0, ring, kick, call)
    finally:
        ram.close()


def refused(rig: Rig, what: str, **fds: int | None) -> None:
    """The fds make a protocol error that drops only b's connection."""
    with pytest.raises((ConnectionError, ProtocolError)):
        hostile_ring(rig, **fds)
    rig.wait_log(f"b: protocol error, connection dropped: vring 0 {what} is not an eventfd")


def test_kick_fd_is_a_memfd(rig):
    fd = os.memfd_create("not-an-eventfd")
    call = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        refused(rig, "kick fd", kick=fd, call=call)
    finally:
        os.close(fd)
        os.close(call)
    rig.assert_isolated()


def test_kick_fd_is_dev_null(rig):
    fd = os.open(os.devnull, os.O_RDWR)
    try:
        refused(rig, "kick fd", kick=fd, call=None)
    finally:
        os.close(fd)
    rig.assert_isolated()


def test_kick_fd_is_a_pipe_with_no_writer(rig):
    r, w = os.pipe()
    os.close(w)
    try:
        refused(rig, "kick fd", kick=r, call=None)
    finally:
        os.close(r)
    rig.assert_isolated()


def test_call_fd_is_a_full_pipe_and_err_fd_is_dev_null(rig):
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, bytes(65536))
    except BlockingIOError:
        os.set_blocking(w, True)  # and blocking, as a hostile frontend leaves it
    null = os.open(os.devnull, os.O_RDWR)
    try:
        refused(rig, "call fd", kick=kick, call=w)
        refused(rig, "err fd", kick=kick, call=None, err=null)
    finally:
        for fd in (kick, r, w, null):
            os.close(fd)
    rig.assert_isolated()


def test_blocking_call_eventfd_one_increment_from_overflow(rig):
    """b's thread drops the interrupt (counted, logged once) instead of blocking for good."""
    full = os.eventfd(0)  # blocking
    os.eventfd_write(full, EVENTFD_MAX)
    try:
        with BlkDriver(rig.b_sock) as d:
            d.fe.set_vring_call(0, full)
            ring = d.queues[0].ring
            for n in (1, 2, 3):
                d.submit(VIRTIO_BLK_T_IN, 0, read_len=512)
                deadline = time.monotonic() + WAIT_S
                while ring.used_idx() != n:
                    assert time.monotonic() < deadline, "b's thread is stuck"
                    time.sleep(0.01)
            with MgmtClient(rig.mgmt) as m:
                q = m.call("stats", name="b")["devices"]["b"]["queues"][0]
            assert q["notifies-dropped"] >= 1, q
            assert d.stop_queue(0) == 3  # GET_VRING_BASE: the thread answers at once
    finally:
        os.close(full)
    assert rig.log().count("queue 0: the call eventfd is full") == 1
    rig.assert_isolated()


def test_kick_and_call_fds_with_o_nonblock_cleared(rig):
    with BlkDriver(rig.b_sock) as d:
        q = d.queues[0]
        for fd in (q.kick, q.call):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        for i in range(8):
            data = os.urandom(512)
            assert d.write(i, data).status == 0
            assert d.read(i, 512).data == data
        assert d.stop_queue(0) == 16
    rig.assert_isolated()


def test_guest_ram_shrinks_under_the_mapping_then_kick(rig):
    """SIGBUS in b's thread is contained: b's rings break, its connection drops, nothing else."""
    d = BlkDriver(rig.b_sock)
    try:
        d.submit(VIRTIO_BLK_T_IN, 0, read_len=512, kick=False)
        os.ftruncate(d.ram.fd, 0)  # from here on this test never touches that RAM
        d.kick()
        d.fe.sock.settimeout(10)
        assert d.fe.sock.recv(1) == b"", "b's connection was not dropped"
    finally:
        d.close()
    rig.wait_log("b: connection dropped: guest RAM shrank under the mapping (SIGBUS at guest")
    assert "queue 0 broken by guest: GuestMemoryLost" in rig.log()
    assert "b: memory region 0 is not sealed against shrinking" in rig.log()
    rig.assert_isolated()


def test_memory_region_fd_that_cannot_hold_the_region(rig):
    with Frontend.connect(rig.b_sock) as fe:
        negotiate(fe)
        ram = GuestRam(1 << 20)
        null = os.open(os.devnull, os.O_RDWR)
        try:
            with pytest.raises((ConnectionError, ProtocolError)):
                fe.set_mem_table(MemTable((ram.spec,), (null,)))
        finally:
            os.close(null)
            ram.close()
    rig.wait_log("b: protocol error, connection dropped: memory region needs")
    rig.assert_isolated()


def test_received_fds_are_close_on_exec(rig):
    with BlkDriver(rig.b_sock):
        pid = rig.backend.pid
        eventfds = [
            fd
            for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventfd]"
        ]
        assert len(eventfds) >= 4  # ours, and b's kick and call (and a's)
        for fd in eventfds:
            flags = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
            assert int(flags, 8) & os.O_CLOEXEC, f"fd {fd} lacks O_CLOEXEC ({flags})"
    rig.assert_isolated()


def log_memfd(size: int, *, sealed: bool = False) -> int:
    fd = os.memfd_create("hostile-log", os.MFD_ALLOW_SEALING if sealed else 0)
    os.ftruncate(fd, size)
    return fd


def logging_driver(rig: Rig) -> BlkDriver:
    return BlkDriver(rig.b_sock, ram_size=1 << 20, also=(ProtocolFeature.LOG_SHMFD,))


def log_refused(rig: Rig, fd: int, size: int, offset: int, why: str, *, mem: bool = True) -> None:
    """SET_LOG_BASE with this log is a protocol error of b's connection only."""
    ram = GuestRam(1 << 20)
    try:
        with Frontend.connect(rig.b_sock) as fe:
            negotiate(fe, also=(ProtocolFeature.LOG_SHMFD,))
            if mem:
                fe.set_mem_table(MemTable((ram.spec,), (ram.fd,)))
            with pytest.raises((ConnectionError, ProtocolError)):
                fe.set_log_base(LogBase(size, offset, fd))
    finally:
        os.close(fd)
        ram.close()
    rig.wait_log(f"b: protocol error, connection dropped: {why}")
    rig.assert_isolated()


def test_log_fd_that_is_not_a_memfd(rig, tmp_path):
    path = tmp_path / "log"
    path.write_bytes(bytes(4096))
    log_refused(rig, os.open(path, os.O_RDWR), 4096, 0, "SET_LOG_BASE: the log fd is not a memfd")


def test_log_too_small_for_guest_ram(rig):
    # 1 MiB of guest RAM at 0x100000 ends at 2 MiB: 512 pages, 64 bytes of log.
    log_refused(rig, log_memfd(32), 32, 0, "SET_LOG_BASE: a log of 32 bytes covers 0x100000")


def test_log_offset_past_its_end(rig):
    log_refused(
        rig, log_memfd(4096), 64, 8192, "SET_LOG_BASE: a log of 64 bytes at offset 8192 runs"
    )


def test_log_before_the_memory_table(rig):
    log_refused(rig, log_memfd(64), 64, 0, "SET_LOG_BASE before SET_MEM_TABLE", mem=False)


def test_log_shrunk_under_the_mapping(rig):
    """The log's memfd shrinks while b logs: SIGBUS in b's thread is contained, b's connection
    drops, and until then b logged what it wrote (devices and stats say so)."""
    d = logging_driver(rig)
    fd = log_memfd(4096)
    try:
        d.fe.set_log_base(LogBase(4096, 0, fd))
        d.fe.set_features(d.features | 1 << VHOST_F_LOG_ALL)  # LOG_ALL on...
        d.fe.set_vring_addr(vring_addr(d.ram, 0, d.queues[0].ring, log=True))  # ...and the ring
        data = os.urandom(4096)
        assert d.write(8, data).status == 0 and d.read(8, 4096).data == data
        assert any(os.pread(fd, 4096, 0)), "nothing logged"
        with MgmtClient(rig.mgmt) as m:
            dev = {x["name"]: x for x in m.call("devices")["devices"]}["b"]
            assert dev["dirty-log"] is True and dev["dirty-pages-logged"] > 0
            stats = m.call("stats", name="b")["devices"]["b"]
            assert stats["dirty-log"] is True and stats["dirty-pages-logged"] > 0
            assert 'dataplane_dirty_log{device="b"} 1.0' in m.call("metrics")["text"]
        os.ftruncate(fd, 0)
        d.submit(VIRTIO_BLK_T_IN, 0, read_len=512)
        d.fe.sock.settimeout(10)
        assert d.fe.sock.recv(1) == b"", "b's connection was not dropped"
    finally:
        d.close()
        os.close(fd)
    rig.wait_log("b: connection dropped: guest RAM shrank under the mapping (SIGBUS in the dirty")
    with MgmtClient(rig.mgmt) as m:
        assert {x["name"]: x for x in m.call("devices")["devices"]}["b"]["dirty-log"] is False
    rig.assert_isolated()


def test_memory_table_outgrowing_the_log_while_logging(rig):
    """QEMU grows its log before it sends more memory: a table past the log is refused."""
    d = logging_driver(rig)
    log = MigrationLog(d.ram.gpa + d.ram.size)
    extra = GuestRam(1 << 20, gpa=1 << 32, uva=0x7E0000000000)
    try:
        log.start(d.fe, d.features, d.ram, [(0, d.queues[0].ring)])
        assert d.read(0, 4096).status == 0
        with pytest.raises((ConnectionError, ProtocolError)):
            d.fe.set_mem_table(MemTable((d.ram.spec, extra.spec), (d.ram.fd, extra.fd)))
    finally:
        d.close()
        log.close()
        extra.close()
    rig.wait_log("b: protocol error, connection dropped: new guest memory while logging: a log")
    rig.assert_isolated()


def test_used_ring_logged_past_the_log(rig):
    """SET_VRING_ADDR's log address for the used ring past the log: the first page b would
    log there breaks b's queue and drops its connection; nothing is written past the log."""
    d = logging_driver(rig)
    log = MigrationLog(d.ram.gpa + d.ram.size)
    try:
        log.start(d.fe, d.features, d.ram, [])
        ring = d.queues[0].ring
        addr = vring_addr(d.ram, 0, ring, log=True)
        d.fe.set_vring_addr(replace(addr, log_guest_addr=1 << 40))
        d.submit(VIRTIO_BLK_T_IN, 0, read_len=512)
        d.fe.sock.settimeout(10)
        assert d.fe.sock.recv(1) == b"", "b's connection was not dropped"
        assert ring.used_idx() == 0
    finally:
        d.close()
        log.close()
    rig.wait_log("b: connection dropped: protocol error: dirty log: guest address 0x10000000000")
    assert "queue 0 broken by guest: DirtyLogTooSmall" in rig.log()
    rig.assert_isolated()


def test_management_attacks_leave_both_devices_serving(rig, tmp_path):
    """A quadratic CPU list, a too-deep request, and a second serve on the live --mgmt path."""
    with MgmtClient(rig.mgmt) as m:
        # Expanded, the range would take hours: the reply within the client's timeout says
        # it was refused before.
        cpus = f"0-{10**18}"
        spec = {"socket": str(tmp_path / "x.sock"), "image": str(rig.b_img), "cpus": cpus}
        assert "does not exist" in m.request("add-device", spec=spec)["error"]
        m.sock.sendall(b"[" * 1000 + b"\n")
        assert not m.read_response()["ok"]
    img = tmp_path / "c.img"
    img.write_bytes(bytes(SECTORS * 512))
    proc = run_cli("serve", "--mgmt", str(rig.mgmt), "--device",
                   f"socket={tmp_path / 'c.sock'},image={img}")  # fmt: skip
    assert_usage_error(proc, "is in use by a running server")
    with MgmtClient(rig.mgmt) as m:  # still reachable
        assert [d["name"] for d in m.call("devices")["devices"]] == ["a", "b"]
    rig.assert_isolated()


def test_a_dead_dataplane_thread_fails_only_its_device(rig):
    d = BlkDriver(rig.b_sock)
    try:
        with MgmtClient(rig.mgmt) as m:
            assert m.call("test-kill-thread", name="b") == {"ok": True}
            d.fe.sock.settimeout(10)
            assert d.fe.sock.recv(1) == b"", "b's connection was not dropped"
            devs = {x["name"]: x for x in m.call("devices")["devices"]}
            assert devs["a"]["state"] == "serving" and "error" not in devs["a"]
            assert devs["b"]["state"] == "failed"
            assert "killed by the test-kill-thread hook" in devs["b"]["error"]
            assert "dp/b/0 died" in m.call("stats", name="b")["devices"]["b"]["failed"]
            # A failed device accepts no more connections...
            with Frontend.connect(rig.b_sock) as fe, pytest.raises(ConnectionError):
                fe.get_features()
            # ...while a goes on, and b can be removed and added again.
            data = os.urandom(4096)
            assert rig.a.write(0, data).status == 0 and rig.a.read(0, 4096).data == data
            assert m.call("remove-device", name="b") == {"ok": True}
            spec = {"socket": str(rig.b_sock), "image": str(rig.b_img), "name": "b"}
            assert m.call("add-device", spec=spec)["device"]["state"] == "serving"
    finally:
        d.close()
    assert "b: device failed: dataplane thread dp/b/0 died: RuntimeError" in rig.log()
    rig.assert_isolated()


def test_the_attacked_process_is_confined(rig):
    """Every thread of the backend the attacks run against is still filtered (seccomp mode 2) after
    every attack above."""
    for task in Path(f"/proc/{rig.backend.proc.pid}/task").iterdir():
        status = (task / "status").read_text()
        assert "\nSeccomp:\t2\n" in status and "\nNoNewPrivs:\t1\n" in status, status


def test_sigterm_stops_the_process_within_10_s(rig):
    rig.a.close()
    rig.a = BlkDriver(rig.a_sock)  # a guest still connected at shutdown
    start = time.monotonic()
    rig.backend.proc.send_signal(signal.SIGTERM)
    assert rig.backend.proc.wait(10) == 0, rig.log()
    assert time.monotonic() - start < 10
    assert not rig.a_sock.exists() and not rig.b_sock.exists() and not rig.mgmt.exists()
    assert "Traceback" not in rig.log()
