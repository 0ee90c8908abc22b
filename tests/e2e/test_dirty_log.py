"""Dirty logging end to end: a real guest migrated through a file while the device DMAs.

The guest reads part of its disk into its page cache over and over (dropping it in
between), so that the device keeps writing guest pages QEMU has already sent, while QEMU
migrates its RAM into a file too slowly to finish.  Then the guest stops reading (its page
cache stays), QEMU finishes, and a new QEMU on a new ``serve`` restores the guest from the
file: the guest hashes its cached blocks again, without reading the disk.  A page the device
wrote and did not log would still hold what QEMU sent before, and the hash would differ.  The
guest boots with ``init_on_alloc=0``: otherwise the kernel zeroes every page it hands to the
page cache, a CPU write that QEMU tracks itself, which would hide a missing log bit.

The Python reference datapath offers no LOG_SHMFD: QEMU refuses to migrate its guest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from guest_support import (
    guest_image_fixture,  # noqa: F401  (the "guest_image" fixture)
    short_socket_dir,
    start_dataplane,
)

from dataplane.guest.harness.guest_image import GuestImage, make_cpio
from dataplane.guest.harness.qemu import die_with_parent, qemu_command
from dataplane.guest.harness.qmp import Qmp, QmpError

pytestmark = pytest.mark.guest

MIB = 32  # what the guest caches
READS = 10  # rounds of drop, read, hash while QEMU migrates
SLOW = {"max-bandwidth": 4 << 20, "downtime-limit": 1}  # cannot converge while it reads
FAST = {"max-bandwidth": 512 << 20, "downtime-limit": 2000}
TIMEOUT = 300.0

SCRIPT = f"""
exec 3</dev/vda
echo DP-START
j=0
while [ $j -lt {READS} ]; do
  echo 3 > /proc/sys/vm/drop_caches
  echo "DP-MD5 read-$j $(dd if=/dev/vda bs=1M count={MIB} 2>/dev/null | md5sum)"
  j=$((j+1)); sleep 1
done
echo DP-CACHED
i=0
while [ $i -lt 20 ]; do
  echo "DP-MD5 cached-$i $(dd if=/dev/vda bs=1M count={MIB} 2>/dev/null | md5sum)"
  i=$((i+1)); sleep 1
done
echo DP-GUEST-EXIT 0
"""


class Vm:
    """One QEMU on ``sock``, its console in ``console``."""

    def __init__(self, image: GuestImage, initrd: Path, sock: Path, d: Path, tag: str, *extra):
        self.console = d / f"console-{tag}.log"
        qmp = d / f"qmp-{tag}.sock"
        cmd = qemu_command(
            image, initrd, [sock], append="init_on_alloc=0 init_on_free=0",
            extra_args=["-qmp", f"unix:{qmp},server=on,wait=off", *extra],
        )  # fmt: skip
        with self.console.open("w") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(),
            )  # fmt: skip
        self.qmp = Qmp(qmp)

    def text(self) -> str:
        return self.console.read_text(errors="replace")

    def wait_for(self, marker: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.text():
            assert self.proc.poll() is None, f"QEMU exited before {marker}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {marker} in time:\n{self.text()}"
            time.sleep(0.2)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError, QmpError):  # QEMU may be gone
            self.qmp.execute("quit")
        with contextlib.suppress(OSError):
            self.qmp.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def guest_initrd(image: GuestImage, path: Path) -> Path:
    base = image.initrd.read_bytes()
    path.write_bytes(base + bytes(-len(base) % 4) + make_cpio({"test.sh": SCRIPT.encode()}))
    return path


def hashes(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split()[1:3]) for line in text.splitlines() if line.startswith("DP-MD5")]


def test_pages_written_while_migrating_reach_the_destination(
    guest_image: GuestImage, tmp_path: Path
) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(MIB << 20))
    want = hashlib.md5(img.read_bytes()).hexdigest()
    initrd = guest_initrd(guest_image, tmp_path / "initrd.img")
    state = tmp_path / "state"
    sock_dir = short_socket_dir()
    a = start_dataplane(sock_dir / "a.sock", img, log_path=tmp_path / "serve-a.log")
    src = Vm(guest_image, initrd, sock_dir / "a.sock", tmp_path, "src")
    try:
        src.wait_for("DP-START")
        src.qmp.execute("migrate-set-parameters", **SLOW)
        src.qmp.execute("migrate", uri=f"exec:cat > {state}")
        src.wait_for("DP-CACHED")
        assert src.qmp.execute("query-migrate")["status"] in ("setup", "active")
        src.qmp.execute("migrate-set-parameters", **FAST)
        deadline = time.monotonic() + TIMEOUT
        while (info := src.qmp.execute("query-migrate"))["status"] not in (
            "completed", "failed", "cancelled",
        ):  # fmt: skip
            assert time.monotonic() < deadline, f"migration did not finish: {info}"
            time.sleep(0.5)
        assert info["status"] == "completed", info
    finally:
        src.close()
        assert a.stop() == 0
    log_a = a.log_text()
    assert "vblk0: dirty logging on" in log_a
    b = start_dataplane(sock_dir / "b.sock", img, log_path=tmp_path / "serve-b.log")
    dst = Vm(guest_image, initrd, sock_dir / "b.sock", tmp_path, "dst", "-incoming",
             f"exec:cat {state}")  # fmt: skip
    try:
        dst.wait_for("DP-GUEST-EXIT")
    finally:
        dst.close()
        assert b.stop() == 0
    reads = [h for name, h in hashes(src.text()) if name.startswith("read-")]
    cached = hashes(dst.text())
    assert reads and all(h == want for h in reads), src.text()
    assert len(cached) >= 10 and all(h == want for _, h in cached), dst.text()
    # The destination hashed its page cache: it read nothing from its disk.
    assert "q0: no requests" in b.log_text()


def test_python_datapath_blocks_migration(guest_image: GuestImage, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(MIB << 20))
    initrd = guest_initrd(guest_image, tmp_path / "initrd.img")
    sock = short_socket_dir() / "p.sock"
    backend = start_dataplane(
        sock, img, log_path=tmp_path / "serve.log", extra_args=["--datapath", "python"]
    )
    vm = Vm(guest_image, initrd, sock, tmp_path, "py")
    try:
        vm.wait_for("DP-START")
        with pytest.raises(QmpError, match="VHOST_USER_PROTOCOL_F_LOG_SHMFD"):
            vm.qmp.execute("migrate", uri=f"exec:cat > {tmp_path / 'state'}")
    finally:
        vm.close()
        assert backend.stop() == 0
