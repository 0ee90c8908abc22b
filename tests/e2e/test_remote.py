"""End-to-end on remote disks: a real Linux guest (QEMU, TCG) on an NBD export and an RBD image.

The guest runs the workload of tests/e2e/test_guest.py (O_DIRECT writes read back, concurrent
writers, a FLUSH, write-zeroes, discard); the host then reads the remote disk back as
another client does (``qemu-img convert`` over NBD, ``rbd export``) and checks it against
what the guest reported.  Two tests break the remote side while the guest writes: qemu-nbd
killed and restarted, and one of the two OSDs killed and started again.  The guest must
see no error, and the data must verify.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from guest_support import (
    GUEST_TIMEOUT,
    IMAGE_SIZE,
    assert_guest_ok,
    guest_image_fixture,  # noqa: F401  (the "guest_image" fixture)
    make_pattern_image,
    watch,
)
from remote_servers import CEPH_PROGRAMS, NBD_PROGRAMS, missing, qemu_nbd, read_export
from remote_support import serve_fixture  # noqa: F401  (the "serve" fixture)
from waits import wait_until

from dataplane.guest.harness.guest_image import GuestImage
from dataplane.guest.harness.processes import BackendProcess
from dataplane.guest.harness.qemu import GuestResult, run_guest
from dataplane.guest.harness.workloads import (
    REGION_SIZE,
    combine_scripts,
    parse_irqs,
    verify_script,
)
from dataplane.serve.mgmt_client import MgmtClient

pytestmark = [pytest.mark.guest, pytest.mark.remote]  # qemu-nbd, the Ceph cluster
needs_nbd = pytest.mark.skipif(bool(missing(NBD_PROGRAMS)), reason=str(missing(NBD_PROGRAMS)))
needs_ceph = pytest.mark.skipif(bool(missing(CEPH_PROGRAMS)), reason=str(missing(CEPH_PROGRAMS)))
STARTED = "DP-INFO"  # the workload is about to write
VERIFIED = "DP-MD5"  # a range the guest wrote and read back (or found untouched)


def run_workload(
    backend: BackendProcess, image: GuestImage, tmp_path: Path, regions: int = 1, queues: int = 1
) -> GuestResult:
    """The guest workload on ``regions`` disjoint regions of /dev/vda at once; with ``queues``
    > 1 as many vCPUs, the writers spread over them (and so over the queues)."""
    cpus = queues if queues > 1 else None
    script = combine_scripts(
        *(
            verify_script("/dev/vda", i * REGION_SIZE, require_discard=True, cpus=cpus)
            for i in range(regions)
        )
    )
    result = run_guest(
        script,
        [backend.socket],
        smp=queues,
        num_queues=queues,
        image=image,
        timeout=GUEST_TIMEOUT,
        log_path=tmp_path / "console.log",
        abort_check=watch(backend),
    )
    assert "I/O error" not in result.output, result.tail()
    return result


class OnConsole(threading.Thread):
    """Runs ``action`` once the guest console (its log file) shows ``marker``."""

    def __init__(self, console: Path, marker: str, action: Callable[[], None]) -> None:
        super().__init__(name="on-console", daemon=True)
        self.console, self.marker, self.action = console, marker, action
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.ran = False
        self.start()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                if self.console.exists() and self.marker in self.console.read_text(
                    errors="replace"
                ):
                    self.action()
                    self.ran = True
                    return
                time.sleep(0.05)
        except BaseException as e:  # reported by finish()
            self.error = e

    def finish(self) -> None:
        self.done.set()
        self.join(60)
        if self.error is not None:
            raise self.error
        assert self.ran, f"the guest console never showed {self.marker!r}"


def in_flight(mgmt: Path) -> int:
    with MgmtClient(mgmt) as m:
        queues = m.call("stats")["devices"]["vblk0"]["queues"]
    return sum(q["inflight"] for q in queues)


def host_copy(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path


# -- NBD ----------------------------------------------------------------------------------


@needs_nbd
def test_guest_on_an_nbd_export(guest_image, serve, tmp_path):
    disk = make_pattern_image(tmp_path / "export.img")
    nbd = qemu_nbd(disk, tmp_path).start()
    try:
        backend = serve(nbd.uri)
        result = run_workload(backend, guest_image, tmp_path)
        back = host_copy(read_export(nbd.uri, tmp_path), tmp_path / "read-back.img")
    finally:
        nbd.stop()
    assert_guest_ok(result, {"/dev/vda": back}, {"/dev/vda": IMAGE_SIZE})


@needs_nbd
def test_guest_on_two_queues_over_two_connections(guest_image, serve, tmp_path):
    """iothreads=2: each thread its own connection to qemu-nbd (multi-conn), both queues busy."""
    disk = make_pattern_image(tmp_path / "export.img")
    nbd = qemu_nbd(disk, tmp_path).start()
    try:
        backend = serve(nbd.uri, "--num-queues", "2", "--iothreads", "2")
        result = run_workload(backend, guest_image, tmp_path, regions=2, queues=2)
        with MgmtClient(backend.socket.parent / "m.sock") as m:
            threads = m.call("stats")["devices"]["vblk0"]["iothreads"]
        assert [t["loop"]["requests"] > 0 for t in threads] == [True, True], threads
        back = host_copy(read_export(nbd.uri, tmp_path), tmp_path / "read-back.img")
    finally:
        nbd.stop()
    assert_guest_ok(result, {"/dev/vda": back}, {"/dev/vda": IMAGE_SIZE})
    irqs = parse_irqs(result.output, "/dev/vda")
    assert sorted(irqs) == [0, 1] and all(irqs.values()), f"per-queue interrupts: {irqs}"


@needs_nbd
def test_guest_rides_out_qemu_nbd_killed_and_restarted(guest_image, serve, tmp_path):
    disk = make_pattern_image(tmp_path / "export.img")
    nbd = qemu_nbd(disk, tmp_path).start()
    try:
        backend = serve(nbd.uri, "--reconnect-s", "30")
        mgmt = backend.socket.parent / "m.sock"
        seen: list[int] = []

        def break_server() -> None:
            nbd.pause()  # from here the guest's requests wait at the server...
            wait_until(lambda: in_flight(mgmt) > 0, "guest requests in flight at the server", 60)
            seen.append(in_flight(mgmt))
            nbd.kill()  # ...and die with its connection
            time.sleep(1)
            nbd.start()

        breaker = OnConsole(tmp_path / "console.log", VERIFIED, break_server)
        result = run_workload(backend, guest_image, tmp_path)
        breaker.finish()
        assert seen and seen[0] > 0
        back = host_copy(read_export(nbd.uri, tmp_path), tmp_path / "read-back.img")
    finally:
        nbd.stop()
    assert_guest_ok(result, {"/dev/vda": back}, {"/dev/vda": IMAGE_SIZE})


# -- RBD ----------------------------------------------------------------------------------


def rbd_image(cluster, tmp_path: Path) -> str:
    name = f"guest{os.getpid()}-{tmp_path.name}"
    pattern = make_pattern_image(tmp_path / "pattern.img")
    cluster.rbd("import", str(pattern), f"rbd/{name}")
    return f"rbd/{name}"


@needs_ceph
def test_guest_on_an_rbd_image(guest_image, ceph_cluster, serve, tmp_path):
    name = rbd_image(ceph_cluster, tmp_path)
    backend = serve(f"rbd:{name}", "--ceph-conf", str(ceph_cluster.conf))
    result = run_workload(backend, guest_image, tmp_path)
    back = host_copy(ceph_cluster.export(name), tmp_path / "read-back.img")
    assert_guest_ok(result, {"/dev/vda": back}, {"/dev/vda": IMAGE_SIZE})


@needs_ceph
def test_guest_rides_out_an_osd_killed(guest_image, ceph_cluster, serve, tmp_path):
    name = rbd_image(ceph_cluster, tmp_path)
    backend = serve(f"rbd:{name}", "--ceph-conf", str(ceph_cluster.conf))
    console = tmp_path / "console.log"
    killed = []

    def kill_osd() -> None:
        ceph_cluster.osd_kill(1)  # SIGKILL, then waits until it is gone (about 2 s)
        killed.append(console.read_text(errors="replace").count(VERIFIED))

    # Six regions at once: the workload runs well past the kill.
    breaker = OnConsole(console, STARTED, kill_osd)
    try:
        result = run_workload(backend, guest_image, tmp_path, regions=6)
        breaker.finish()
    finally:
        if killed:
            ceph_cluster.osd_start(1)
    # The guest went on writing with one OSD: it verified more ranges after the kill.
    print(
        f"{VERIFIED} lines: {killed[0]} when osd.1 was gone, {result.output.count(VERIFIED)} in all"
    )
    assert result.output.count(VERIFIED) > killed[0]
    ceph_cluster.wait_clean()
    back = host_copy(ceph_cluster.export(name), tmp_path / "read-back.img")
    assert_guest_ok(result, {"/dev/vda": back}, {"/dev/vda": IMAGE_SIZE})
