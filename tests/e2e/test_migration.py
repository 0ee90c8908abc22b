"""Live migration with a real guest: two QEMUs (TCG), each on its own ``dataplane serve``.

The source QEMU runs on backend A (``serve`` as usual), the destination QEMU starts with
``-incoming defer`` on backend B (``serve --incoming``), both on the same disk.  The guest
writes and verifies versioned 4 KiB O_DIRECT blocks on several writers throughout
(dataplane/guest/harness/migration.py); QMP ``migrate`` moves it while they write; the writers
go on on the destination (the disk's serial, read by GET_ID, shows the guest which
backend it runs on) and finish there with every block verified and no I/O error; the host
then finds every block as last written.  test-delay holds every fourth completion back,
so that requests are in flight when QEMU stops the rings at the switch-over.

On an image file (io_uring) on QEMU 7.2 and 10.0.2, on an NBD export and on an RBD image;
A to B to A to B with one guest; and a migration cancelled mid-way, after which the guest
goes on on the source.  All but the 7.2 one run on QEMU 10.0.2 (scripts/install-qemu10.sh).
QEMU 7.2 guests get 8 KiB more RAM (dataplane.guest.harness.qemu.RAM_PAD_KIB): without it, 7.2's
TCG migration loses guest stores and the guest's kernel oopses on the destination in about
one run in five, whatever its disk (docs/migration.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from guest_support import (
    GUEST_TIMEOUT,
    guest_image_fixture,  # noqa: F401  (the "guest_image" fixture)
    qemu_or_skip,
    start_dataplane,
)
from remote_servers import CEPH_PROGRAMS, NBD_PROGRAMS, missing, qemu_nbd, read_export

from dataplane import test_hooks
from dataplane.guest.harness.guest_image import GuestImage, tail_of
from dataplane.guest.harness.migration import (
    BLOCK,
    MigrationFailed,
    MigrationRun,
    check_writers,
    run_migrations,
    writers_script,
)
from dataplane.guest.harness.processes import BackendProcess, short_socket_dir
from dataplane.guest.harness.qemu import QEMU_VERSIONS

pytestmark = pytest.mark.guest

WRITERS = 4
BLOCKS = 4  # per writer
FAILSAFE_S = 600  # guest seconds: the writers stop by then whatever happens
FILE_KEYS = {"aio": "io_uring", "test-delay": "4:20000"}
QEMU = QEMU_VERSIONS[1]  # the migrations beyond the one per QEMU (see the docstring)

Backends = Callable[..., list[BackendProcess]]


@pytest.fixture(name="backends")
def backends_fixture(tmp_path: Path) -> Iterator[Backends]:
    """``backends(image, **keys) -> [A, B]``: A as usual, B ``incoming``, serials mig-a and
    mig-b; both stopped at teardown, and must exit 0."""
    started: list[BackendProcess] = []
    sock_dir = short_socket_dir()

    def start(image: Path | str, **keys: str) -> list[BackendProcess]:
        pair = []
        for name in ("a", "b"):
            own = {"serial": f"mig-{name}", "name": name, **keys}
            if name == "b":
                own["incoming"] = "on"
            n = len(started)
            log = tmp_path / f"backend{n}-{name}.log"
            pair.append(
                start_dataplane(
                    sock_dir / f"{name}{n}.sock",
                    image,
                    aio=None,
                    cache=None,
                    log_path=log,
                    keys=own,
                    env=test_hooks.ON,  # test-delay
                )  # fmt: skip
            )
            started.append(pair[-1])
        return pair

    try:
        yield start
    finally:
        codes = [b.stop() for b in started]
        for b in started:
            print(f"--- backend log {b.log_path} ---\n{tail_of(b.log_text())}")
        shutil.rmtree(sock_dir, ignore_errors=True)
        assert codes == [0] * len(started), f"backend exit codes {codes}"


def migrate_guest(
    backends: list[BackendProcess],
    guest_image: GuestImage,
    tmp_path: Path,
    *,
    qemu: str = QEMU,
    hops: int = 1,
    cancel: bool = False,
    seconds: int = FAILSAFE_S,
) -> MigrationRun:
    """The guest's writers on A, moved ``hops`` times (or each migration cancelled)."""
    script = writers_script(
        writers=WRITERS, blocks=BLOCKS, switches=0 if cancel else hops, seconds=seconds
    )
    try:
        run = run_migrations(
            qemu_or_skip(qemu), guest_image, script, [b.socket for b in backends], tmp_path,
            hops=hops, cancel=cancel, switches=not cancel, timeout=GUEST_TIMEOUT,
        )  # fmt: skip
    except MigrationFailed as e:
        logs = "\n".join(f"--- {b.log_path.name} ---\n{tail_of(b.log_text())}" for b in backends)
        pytest.fail(f"{e}\n{logs}")
    for s in run.stats:
        print(f"migration {s.status}: downtime {s.downtime_ms} ms, total {s.total_ms} ms")
    assert run.rc == 0, "\n".join(line for line in run.output.splitlines() if "DP-" in line)
    assert "I/O error" not in run.output, tail_of(run.output)
    return run


def check_file(image: Path, run: MigrationRun) -> None:
    problems = check_writers(image, run.output, WRITERS, BLOCKS)
    assert not problems, "\n".join(problems)


def disk_image(tmp_path: Path) -> Path:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(WRITERS * BLOCKS * BLOCK + (1 << 20)))
    return image


@pytest.mark.parametrize("qemu", QEMU_VERSIONS)
def test_migrate_file_image_under_io(qemu, guest_image, backends, tmp_path):
    image = disk_image(tmp_path)
    a, b = backends(image, **FILE_KEYS)
    run = migrate_guest([a, b], guest_image, tmp_path, qemu=qemu)
    check_file(image, run)
    assert [s.status for s in run.stats] == ["completed"]
    # The source's last ring stop handed the image over; the destination wrote it after.
    assert "DP-SWITCH 1 mig-b" in run.output
    assert "connection dropped" not in a.log_text() + b.log_text()


def test_migrate_ping_pong(guest_image, backends, tmp_path):
    """A to B to A to B: one guest, four QEMUs, I/O throughout."""
    image = disk_image(tmp_path)
    a, b = backends(image, **FILE_KEYS)
    run = migrate_guest([a, b], guest_image, tmp_path, hops=3)
    # Each backend gave the image up at each switch-over and took it back: none refused.
    assert "connection dropped" not in a.log_text() + b.log_text()
    check_file(image, run)
    assert [s.status for s in run.stats] == ["completed"] * 3
    for n, serial in ((1, "mig-b"), (2, "mig-a"), (3, "mig-b")):
        assert f"DP-SWITCH {n} {serial}" in run.output


def test_migrate_cancel_goes_on_on_the_source(guest_image, backends, tmp_path):
    image = disk_image(tmp_path)
    a, b = backends(image, **FILE_KEYS)
    # The writers run 40 guest seconds; the migration is cancelled as soon as it is active.
    run = migrate_guest([a, b], guest_image, tmp_path, cancel=True, seconds=40)
    check_file(image, run)
    assert [s.status for s in run.stats] == ["cancelled"]
    assert not run.stats[0].guest_done, "the writers ended before the cancel"
    assert "DP-SWITCH" not in run.output  # the guest never left A
    # B never started a ring: it wrote nothing.
    assert "frontend connected" in b.log_text() and "not started" not in b.log_text()


@pytest.mark.remote
@pytest.mark.skipif(bool(missing(NBD_PROGRAMS)), reason=str(missing(NBD_PROGRAMS)))
def test_migrate_nbd_export(guest_image, backends, tmp_path):
    """Both backends are clients of one qemu-nbd: the server is the one writer."""
    disk = disk_image(tmp_path)
    nbd = qemu_nbd(disk, tmp_path).start()
    try:
        a, b = backends(nbd.uri)
        run = migrate_guest([a, b], guest_image, tmp_path)
        back = tmp_path / "read-back.img"
        back.write_bytes(read_export(nbd.uri, tmp_path))
    finally:
        nbd.stop()
    check_file(back, run)


@pytest.mark.remote
@pytest.mark.skipif(bool(missing(CEPH_PROGRAMS)), reason=str(missing(CEPH_PROGRAMS)))
def test_migrate_rbd_image(guest_image, ceph_cluster, backends, tmp_path):
    """Both backends open the RBD image; librbd's exclusive lock moves to the destination
    when it first writes, the source having stopped writing at the switch-over."""
    name = f"rbd/mig{os.getpid()}-{tmp_path.name}"
    ceph_cluster.rbd("import", str(disk_image(tmp_path)), name)
    conf = str(ceph_cluster.conf)
    a, b = backends(f"rbd:{name}", **{"ceph-conf": conf})
    run = migrate_guest([a, b], guest_image, tmp_path)
    back = tmp_path / "read-back.img"
    back.write_bytes(ceph_cluster.export(name))
    check_file(back, run)
