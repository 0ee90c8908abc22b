"""The image handed over between two backends, never written by two (live migration).

Two ``serve`` processes on one image: A as usual, B with ``--incoming`` (a
migration's destination).  Write ownership follows the running rings
(device/image.py): B's rings cannot start while A's run; once the frontend has
stopped every ring of A (GET_VRING_BASE), B's start and write; A's rings cannot
start again then (that connection is dropped, one log line naming the device);
and a migration that failed before B started resumes on A.  The real migrations
with QEMU are in test_guest_migration.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from clitest import assert_usage_error, run_cli
from guest_support import start_dataplane

from dataplane.device.image import open_image, resize_image
from dataplane.errors import UsageError
from dataplane.guest.harness.processes import BackendProcess
from dataplane.guest.virtio_blk import BlkDriver

SECTORS = 2048


@pytest.fixture(name="image")
def image_fixture(tmp_path: Path) -> Path:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(SECTORS * 512))
    return image


def start(sock_dir: Path, image: Path, tmp_path: Path, name: str, *extra: str) -> BackendProcess:
    return start_dataplane(
        sock_dir / f"{name}.sock", image, log_path=tmp_path / f"{name}.log",
        extra_args=("--name", name, *extra),
    )  # fmt: skip


def wait_log(b: BackendProcess, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in b.log_text().splitlines():
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log within {timeout} s:\n{b.log_text()}")


def test_handoff_follows_the_rings(sock_dir: Path, image: Path, tmp_path: Path) -> None:
    a = start(sock_dir, image, tmp_path, "a")
    b = start(sock_dir, image, tmp_path, "b", "--incoming")
    try:
        # A plain second serve is still refused at start, even beside a destination.
        proc = run_cli("serve", "--socket", str(sock_dir / "c.sock"), "--image", str(image))
        assert_usage_error(proc, "in use by another process")
        with BlkDriver(a.socket, queue_size=64) as src:
            assert src.write(0, b"A" * 4096).status == 0
            # The destination's rings cannot start while the source's run.
            with pytest.raises(Exception):  # noqa: B017 - the drop shows as any of several
                BlkDriver(b.socket, queue_size=64).close()
            line = wait_log(b, "connection dropped")
            assert "b: connection dropped: vring 0 not started" in line, line
            assert "written by another backend" in line, line
            # A failed migration resumes on the source: stop and start its rings again.
            base = src.stop_queue(0)
            src.start_queue(0, base=base)
            assert src.write(8, b"B" * 4096).status == 0
            # The switch-over: the source stops every ring, then the destination starts.
            base = src.stop_queue(0)
            with BlkDriver(b.socket, queue_size=64) as dst:
                assert dst.write(16, b"C" * 4096).status == 0
                got = dst.read(0, 4096 * 3)
                assert (got.status, got.data) == (0, b"A" * 4096 + b"B" * 4096 + b"C" * 4096)
                # The source cannot start again now: that connection drops.
                with pytest.raises(Exception):  # noqa: B017 - the drop shows as any of several
                    src.start_queue(0, base=base)
                    src.write(24, b"D" * 4096)
                line = wait_log(a, "a: connection dropped")
                assert "vring 0 not started" in line, line
                assert dst.write(24, b"E" * 4096).status == 0  # the destination serves on
    finally:
        assert a.stop() == 0, a.log_text()
        assert b.stop() == 0, b.log_text()
    data = image.read_bytes()
    assert data[: 4 * 4096] == b"A" * 4096 + b"B" * 4096 + b"C" * 4096 + b"E" * 4096


def test_incoming_key_and_flag(sock_dir: Path, image: Path, tmp_path: Path) -> None:
    """``incoming=on`` in --device is the same as --incoming; the log line says so."""
    a = start(sock_dir, image, tmp_path, "a")
    try:
        b = start_dataplane(
            sock_dir / "b.sock", image, log_path=tmp_path / "b.log", keys={"incoming": "on"}
        )
        assert b.stop() == 0, b.log_text()
        assert "incoming (writes once the rings start)" in b.log_text()
    finally:
        assert a.stop() == 0, a.log_text()


def test_image_locks(image: Path) -> None:
    """The lock rules of open_image, in one process (OFD locks are per open file)."""
    src = open_image(image, read_only=False, cache="writeback")
    dst = open_image(image, read_only=False, cache="writeback", incoming=True)
    try:
        assert src.writer and not dst.writer
        with pytest.raises(UsageError, match="in use by another process"):
            open_image(image, read_only=False, cache="writeback")
        with pytest.raises(UsageError, match="in use by another process"):
            open_image(image, read_only=True, cache="writeback")
        assert not dst.take_writes()
        with pytest.raises(UsageError, match="written by another backend"):
            resize_image(dst, 2 * SECTORS * 512)  # growing it is a write too
        src.give_up_writes()
        # A plain start is refused with no writer too: two backends still serve the image.
        with pytest.raises(UsageError, match="in use by another process"):
            open_image(image, read_only=False, cache="writeback")
        assert dst.take_writes() and dst.writer
        assert not src.take_writes()
        dst.give_up_writes()
        assert src.take_writes()
    finally:
        src.close()
        dst.close()
    # Both gone: a plain start takes the image again.
    open_image(image, read_only=False, cache="writeback").close()
    # Read-only serves share the image, and keep a writer out.
    r1 = open_image(image, read_only=True, cache="writeback")
    r2 = open_image(image, read_only=True, cache="writeback")
    try:
        with pytest.raises(UsageError):
            open_image(image, read_only=False, cache="writeback")
    finally:
        r1.close()
        r2.close()
