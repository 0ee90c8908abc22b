"""Real servers for the remote engine tests: qemu-nbd and nbdkit, and a Ceph cluster.

Every server listens on a UNIX socket or on 127.0.0.1 only.  ``missing(...)`` names the
programs that are absent, so a test can skip saying which package would bring them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from waits import WAIT_S, wait_until

REPO = Path(__file__).resolve().parent.parent
CEPH_DEV = REPO / "scripts" / "ceph-dev.sh"
NBD_PROGRAMS = {"qemu-nbd": "qemu-utils", "qemu-img": "qemu-utils", "nbdkit": "nbdkit"}
CEPH_PROGRAMS = {
    "ceph-mon": "ceph-mon",
    "ceph-mgr": "ceph-mgr",
    "ceph-osd": "ceph-osd",
    "ceph": "ceph-common",
    "rbd": "ceph-common",
    "ceph-authtool": "ceph-common",
    "monmaptool": "ceph-base",
}


def missing(programs: dict[str, str]) -> str | None:
    """Why the tests that need ``programs`` must skip, or None when all are here."""
    absent = [f"{p} (Debian package {pkg})" for p, pkg in programs.items() if not shutil.which(p)]
    return (
        f"not installed: {', '.join(absent)}; scripts/install-deps.sh installs them"
        if absent
        else None
    )


def server_env() -> dict[str, str]:
    """Our environment without a sanitizer's preload (scripts/sanitize.py), for other programs."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NbdServer:
    """One NBD server process, restartable on the same socket or port."""

    def __init__(
        self, argv: Sequence[str], log: Path, *, export: str, sock: Path | None, port: int | None
    ) -> None:
        self.argv = list(argv)
        self.log = log
        self.export = export
        self.sock = sock
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        if self.sock is not None:
            return f"nbd+unix:///{self.export}?socket={self.sock}"
        return f"nbd://127.0.0.1:{self.port}/{self.export}"

    def start(self, timeout: float = WAIT_S) -> NbdServer:
        if self.sock is not None:
            # A killed server leaves its socket behind, and nbdkit will not bind over it.
            self.sock.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_env(),
            )
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.argv[0]} is not listening after {timeout}s")
            time.sleep(0.02)
        return self

    def _listening(self) -> bool:
        family, addr = (
            (socket.AF_UNIX, str(self.sock))
            if self.sock
            else (socket.AF_INET, ("127.0.0.1", self.port))
        )
        with socket.socket(family) as s:
            try:
                s.connect(addr)
            except OSError:
                return False
        return True

    def pause(self) -> None:
        """SIGSTOP, and wait until it has stopped: from now on requests stay in flight."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self.proc.pid}/task")

        def running(task: Path) -> bool:
            try:
                return (task / "stat").read_text().rpartition(")")[2].split()[0] != "T"
            except (FileNotFoundError, ProcessLookupError):
                return False  # the thread ended after the listing

        # Every thread: the group stop ends thread by thread.
        wait_until(lambda: not any(running(t) for t in tasks.iterdir()), "the server to stop")

    def kill(self) -> None:
        """SIGKILL: the connection drops with whatever was in flight."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # even when stopped: no SIGCONT first, or it answers what it holds
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _address(tmp: Path, tcp: bool, name: str) -> tuple[Path | None, int | None]:
    return (None, free_port()) if tcp else (tmp / f"{name}.sock", None)


def qemu_nbd(
    image: Path,
    tmp: Path,
    *,
    tcp: bool = False,
    export: str = "disk",
    read_only: bool = False,
    extra: Sequence[str] = (),
) -> NbdServer:
    """qemu-nbd serving ``image`` (raw) to several clients, staying up between them."""
    sock, port = _address(tmp, tcp, "qemu-nbd")
    where = ["--socket", str(sock)] if sock else ["--bind", "127.0.0.1", "--port", str(port)]
    argv = [
        "qemu-nbd",
        "--format=raw",
        f"--export-name={export}",
        "--persistent",
        "--shared=8",
        "--cache=writeback",
        "--discard=unmap",
        *where,
        *extra,
    ]
    if read_only:
        argv.append("--read-only")
    argv.append(str(image))
    return NbdServer(argv, tmp / "qemu-nbd.log", export=export, sock=sock, port=port)


def nbdkit(
    image: Path,
    tmp: Path,
    *,
    filters: Sequence[str] = (),
    params: Sequence[str] = (),
    tcp: bool = False,
) -> NbdServer:
    """nbdkit's file plugin on ``image``, through ``filters`` with their ``params``."""
    sock, port = _address(tmp, tcp, "nbdkit")
    where = ["--unix", str(sock)] if sock else ["--ipaddr", "127.0.0.1", "--port", str(port)]
    argv = ["nbdkit", "--foreground", "--exit-with-parent", *where]
    argv += [f"--filter={f}" for f in filters]
    argv += ["file", str(image), *params]
    return NbdServer(argv, tmp / "nbdkit.log", export="", sock=sock, port=port)


def read_export(uri: str, tmp: Path) -> bytes:
    """The whole export as another NBD client (qemu-img) reads it."""
    out = tmp / "export.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(out)],
        check=True,
        capture_output=True,
        timeout=60,
        env=server_env(),
    )
    data = out.read_bytes()
    out.unlink()
    return data


class CephCluster:
    """A throwaway cluster by scripts/ceph-dev.sh in ``dir``."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.conf = dir / "ceph.conf"
        self.keyring = dir / "keyring"

    def _script(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            ["bash", str(CEPH_DEV), args[0], str(self.dir), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=server_env() | (env or {}),
        )
        if done.returncode:
            raise RuntimeError(f"ceph-dev.sh {args[0]} failed: {done.stderr or done.stdout}")
        return done.stdout

    def logs(self) -> list[Path]:
        """The daemons' logs (conftest.py shows their tails on failure); not the clients'."""
        log = self.dir / "log"
        return sorted(log.glob("*.out")) + sorted(log.glob("[mo][os][nd].*.log"))

    def start(self) -> str:
        """Boot it; it stops by itself should this process die before ``stop``."""
        return self._script("start", env={"CEPH_DEV_OWNER_PID": str(os.getpid())})

    def stop(self) -> None:
        self._script("stop")

    def osd_kill(self, n: int) -> None:
        self._script("osd-kill", str(n))

    def osd_start(self, n: int) -> None:
        self._script("osd-start", str(n))

    def wait_clean(self, timeout: float = 120) -> None:
        """Until every placement group is active+clean (an OSD that came back caught up)."""
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                ["ceph", "-c", str(self.conf), "pg", "stat"],
                capture_output=True, text=True, timeout=60, env=server_env(),
            )  # fmt: skip
            # "33 pgs: 33 active+clean; 12 MiB data, ..."
            total, _, states = done.stdout.partition(" pgs: ")
            if done.returncode == 0 and states.startswith(f"{total} active+clean;"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not active+clean after {timeout} s: {done.stdout.strip()}")
            time.sleep(0.5)

    def rbd(self, *args: str, input: bytes | None = None) -> bytes:
        done = subprocess.run(
            ["rbd", "-c", str(self.conf), *args],
            input=input,
            capture_output=True,
            timeout=120,
            env=server_env(),
        )
        if done.returncode:
            raise RuntimeError(f"rbd {' '.join(args)}: {done.stderr.decode(errors='replace')}")
        return done.stdout

    def export(self, spec: str) -> bytes:
        """The image (or snapshot) as ``rbd export`` reads it."""
        return self.rbd("export", spec, "-")
