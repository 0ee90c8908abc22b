"""A real libvirtd runs examples/libvirt/dataplane-vm1.xml against ``dataplane serve``.

The test starts its own libvirtd (Debian's libvirt-daemon-system) in a private runtime
directory: session mode (qemu:///session), run as libvirt's QEMU user, ``libvirt-qemu``, so
that QEMU runs as that user exactly as under the system daemon, and nothing on the host is
touched.  ``serve`` gives the vhost-user socket to that user (``socket-owner=libvirt-qemu,
socket-mode=0600``: nobody else may connect).  The domain is the example file with its host
paths moved into the test's directory and a /test.sh in the initramfs; the guest (TCG) does
verified O_DIRECT I/O on /dev/vda and the host checks the image.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from guest_support import (
    GUEST_TIMEOUT,
    IMAGE_SIZE,
    assert_guest_ok,
    guest_image_fixture,  # noqa: F401  (the "guest_image" fixture)
    make_pattern_image,
    start_dataplane,
)

from dataplane.guest.harness.guest_image import GuestImage, make_cpio
from dataplane.guest.harness.qemu import EXIT_MARKER, READY_MARKER, GuestResult
from dataplane.guest.harness.workloads import combine_scripts, verify_script

pytestmark = [pytest.mark.guest, pytest.mark.remote]  # libvirtd

REPO = Path(__file__).resolve().parents[2]
DOMAIN = REPO / "examples" / "libvirt" / "dataplane-vm1.xml"
QEMU_USER = "libvirt-qemu"


class SessionLibvirtd:
    """libvirtd in session mode as ``user``, everything under ``base`` (its XDG dirs)."""

    def __init__(self, base: Path, user: str) -> None:
        self.pw = pwd.getpwnam(user)
        self.base = base
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(base / "home"),
            "XDG_RUNTIME_DIR": str(base / "run"),
            "XDG_CONFIG_HOME": str(base / "config"),
            "XDG_CACHE_HOME": str(base / "cache"),
            "XDG_DATA_HOME": str(base / "data"),
        }
        for key in ("HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
            self._own_dir(Path(self.env[key]))
        self._own_dir(base / "config" / "libvirt")
        # QEMU's stdio goes to a file: no virtlogd needed (it is not part of session mode).
        conf = base / "config" / "libvirt" / "qemu.conf"
        conf.write_text('stdio_handler = "file"\n')
        os.chown(conf, self.pw.pw_uid, self.pw.pw_gid)
        self.log = base / "libvirtd.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["libvirtd", "--timeout", "0"], env=self.env, cwd=base, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **self._as_user(),
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.virsh("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"libvirtd did not start:\n{self.log.read_text()}")
            time.sleep(0.2)

    def _as_user(self) -> dict:
        return {"user": self.pw.pw_uid, "group": self.pw.pw_gid, "extra_groups": []}

    def _own_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.pw.pw_uid, self.pw.pw_gid)
        path.chmod(0o700)

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["virsh", "-c", "qemu:///session", *args], env=self.env, capture_output=True,
            text=True, timeout=60, stdin=subprocess.DEVNULL, **self._as_user(),
        )  # fmt: skip
        if check and proc.returncode != 0:
            pytest.fail(f"virsh {' '.join(args)} failed: {proc.stderr}\n{self.log.read_text()}")
        return proc

    def logs(self) -> list[Path]:
        """libvirtd's, QEMU's and the console's (conftest.py shows their tails on failure)."""
        return sorted(self.base.rglob("*.log"))

    def qemu_log(self, name: str) -> str:
        path = self.base / "cache" / "libvirt" / "qemu" / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def libvirtd(tmp_path):
    missing = [t for t in ("libvirtd", "virsh") if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"libvirt not installed ({', '.join(missing)} missing): Debian packages "
            "libvirt-daemon-system and libvirt-clients (scripts/install-deps.sh)"
        )
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        pytest.skip(f"no {QEMU_USER} user: libvirt-daemon-system is not installed")
    if os.geteuid() != 0:
        pytest.skip("starting libvirtd as libvirt's QEMU user needs root")
    # Not under tmp_path: pytest's directories are root's alone, and QEMU's user must reach
    # the kernel, the console log and the socket.
    base = Path(tempfile.mkdtemp(prefix="dp-libvirt-"))
    base.chmod(0o755)
    try:
        daemon = SessionLibvirtd(base, QEMU_USER)
        yield daemon
        daemon.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def domain_xml(name: str, guest: Path, sock: Path, console: Path) -> str:
    """The example domain, its host paths moved into this test's directories."""
    tree = ET.parse(DOMAIN)
    dom = tree.getroot()
    assert dom.get("type") == "qemu"
    assert dom.find("memoryBacking/source").get("type") == "memfd"
    assert dom.find("memoryBacking/access").get("mode") == "shared"
    dom.find("name").text = name
    dom.find("os/kernel").text = str(guest / "vmlinuz")
    dom.find("os/initrd").text = str(guest / "initrd.gz")
    source = dom.find("devices/disk[@type='vhostuser']/source")
    assert source.get("path") == "/run/dataplane/vm1.sock"
    source.set("path", str(sock))
    dom.find("devices/serial/log").set("file", str(console))
    return ET.tostring(dom, encoding="unicode")


def test_libvirt_domain_on_a_libvirt_qemu_owned_socket(libvirtd, guest_image: GuestImage, tmp_path):
    base = libvirtd.base
    uid, gid = libvirtd.pw.pw_uid, libvirtd.pw.pw_gid
    # What QEMU (as libvirt-qemu) reads or writes, in directories it can reach.
    guest, sock_dir, console_dir = base / "guest", base / "sock", base / "console"
    for d in (guest, sock_dir, console_dir):
        d.mkdir(mode=0o755)
    os.chown(console_dir, uid, gid)
    shutil.copy(guest_image.vmlinuz, guest / "vmlinuz")
    script = combine_scripts(verify_script("/dev/vda", 0, writers=2, cpus=2))
    initrd = guest_image.initrd.read_bytes()
    (guest / "initrd.gz").write_bytes(
        initrd + b"\0" * (-len(initrd) % 4) + make_cpio({"test.sh": script.encode()})
    )
    for f in guest.iterdir():
        f.chmod(0o644)

    image = make_pattern_image(tmp_path / "disk.img")
    sock = sock_dir / "vm1.sock"
    backend = start_dataplane(
        sock, image, num_queues=2, log_path=tmp_path / "serve.log",
        extra_args=("--name", "vm1", "--socket-owner", QEMU_USER, "--socket-mode", "0600"),
    )  # fmt: skip
    try:
        st = sock.lstat()
        assert st.st_uid == uid and st.st_mode & 0o777 == 0o600
        name = f"dataplane-test-{os.getpid()}"
        console = console_dir / "console.log"
        xml = base / "domain.xml"
        xml.write_text(domain_xml(name, guest, sock, console))
        xml.chmod(0o644)
        started = time.monotonic()
        libvirtd.virsh("create", str(xml))
        try:
            output = _wait_for_exit(libvirtd, name, console, started)
        finally:
            libvirtd.virsh("destroy", name, check=False)
        qemu_log = libvirtd.qemu_log(name)
        assert "vhost-user-blk-pci" in qemu_log and "memory-backend-memfd" in qemu_log
        assert "-accel tcg" in qemu_log or "accel=tcg" in qemu_log, qemu_log[-2000:]
        result = _result(output, time.monotonic() - started)
        assert_guest_ok(result, {"/dev/vda": image}, {"/dev/vda": IMAGE_SIZE})
        info = result.lines("DP-INFO /dev/vda")
        assert info and "queues=2" in info[0].split(), info  # the domain's queues='2'
        print(f"libvirt guest run: {result.total_seconds:.1f} s, rc {result.rc}")
    finally:
        assert backend.stop() == 0, backend.log_text()
        print(f"--- serve log ---\n{backend.log_text()}")
    assert "vm1: frontend connected" in backend.log_text()


def _wait_for_exit(libvirtd: SessionLibvirtd, name: str, console: Path, started: float) -> str:
    """The console text once the guest printed its exit marker (it then powers off)."""
    while time.monotonic() - started < GUEST_TIMEOUT:
        text = console.read_text(errors="replace") if console.exists() else ""
        if EXIT_MARKER in text:
            return text
        if libvirtd.virsh("domstate", name, check=False).returncode != 0:
            time.sleep(0.5)  # gone (powered off): the log may still be flushing
            text = console.read_text(errors="replace") if console.exists() else ""
            if EXIT_MARKER in text:
                return text
            pytest.fail(f"the domain ended without {EXIT_MARKER}:\n{text[-3000:]}\n"
                        f"{libvirtd.qemu_log(name)[-2000:]}")  # fmt: skip
        time.sleep(0.5)
    pytest.fail(f"no {EXIT_MARKER} within {GUEST_TIMEOUT} s:\n{console.read_text()[-3000:]}")


def _result(output: str, seconds: float) -> GuestResult:
    rc = None
    for raw in output.splitlines():
        line = raw.strip().strip("\r")
        if line.startswith(EXIT_MARKER):
            rc = int(line.split()[1])
    assert rc is not None and READY_MARKER in output
    return GuestResult(rc=rc, output=output, total_seconds=seconds)
