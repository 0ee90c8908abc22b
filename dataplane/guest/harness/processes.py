"""Starting and stopping vhost-user-blk backend processes: ours and qemu-storage-daemon.

Shared by the demo, the test suite and ``dataplane bench``, which all need a
backend serving an image on a socket, ready before they connect, and gone
(with its socket) after.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dataplane
from dataplane.errors import UsageError
from dataplane.guest.harness.qemu import die_with_parent

READY_TIMEOUT = 20.0
_PACKAGE_PARENT = Path(dataplane.__file__).resolve().parents[1]  # holds the dataplane/ running now
STOP_TIMEOUT = 20.0
QSD_AIO = {"io_uring": "io_uring", "native": "native", "threads": "threads"}


class BackendFailed(RuntimeError):
    """A backend process exited early, never became ready, or would not stop."""


@dataclass
class BackendProcess:
    """A running vhost-user-blk backend (``dataplane`` or ``qsd``) and its log file."""

    kind: str
    proc: subprocess.Popen[bytes]
    socket: Path
    log_path: Path
    argv: list[str]
    returncode: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the process and wait; return its exit code (kill it on timeout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise BackendFailed(
                    f"{self.kind} did not exit within {timeout:.0f} s of SIGTERM; killed it\n"
                    f"--- {self.kind} log ---\n{self.log_text()}"
                ) from None
        self.returncode = self.proc.returncode
        return self.returncode

    def wait_ready(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if self.proc.poll() is not None:
                raise BackendFailed(
                    f"{self.kind} exited with code {self.proc.returncode} before {what}\n"
                    f"command: {' '.join(self.argv)}\n--- {self.kind} log ---\n{self.log_text()}"
                )
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise BackendFailed(
            f"{self.kind} did not become ready ({what}) within {timeout:.0f} s\n"
            f"command: {' '.join(self.argv)}\n--- {self.kind} log ---\n{self.log_text()}"
        )


def short_socket_dir() -> Path:
    """A fresh directory with a short path (UNIX socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="dp-sock-"))


def dataplane_command() -> tuple[str, ...]:
    """The very dataplane that is running: this interpreter, and no package from the cwd.

    ``-P`` keeps the working directory off ``sys.path``: run from inside a source checkout,
    ``-m dataplane`` would otherwise import the checkout's ``dataplane/`` (with no built C
    extension) instead of the installed package.  ``_spawn`` puts this package's directory
    first on ``PYTHONPATH``, so that the child imports the same files as this process.
    """
    return (sys.executable, "-P", "-m", "dataplane")


def _spawn(
    kind: str, argv: list[str], socket: Path, log_path: Path, env: Mapping[str, str] | None = None
) -> BackendProcess:
    env = {**os.environ, **(env or {})}
    env.setdefault("PYTHONUNBUFFERED", "1")
    if tuple(argv[: len(dataplane_command())]) == dataplane_command():
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_PARENT), env.get("PYTHONPATH")) if p
        )
    with log_path.open("wb") as log:
        # SIGTERM if our process dies, so that no backend outlives it.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
    return BackendProcess(kind, proc, socket, log_path, argv)


def start_dataplane(
    socket: Path,
    image: Path | str,
    *,
    log_path: Path,
    aio: str | None = "io_uring",
    cache: str | None = "none",
    num_queues: int = 1,
    extra_args: Sequence[str] = (),
    timeout: float = READY_TIMEOUT,
    command: Sequence[str] | None = None,
    keys: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> BackendProcess:
    """Start ``python -m dataplane serve`` (or ``command serve``) and wait for "listening".

    ``image`` may be a remote disk (``nbd://...``, ``rbd:...``): give it ``aio=None`` and
    ``cache=None``, which are an image file's flags.  ``keys``: the device as one
    ``--device`` with these keys besides socket, image, aio, cache and num-queues (a
    key that has no single-device flag, such as test-delay).  ``env``: added to the
    environment (``dataplane.test_hooks.ON`` for a test key such as test-delay).
    """
    if keys is None:
        device = [
            "--socket", str(socket),
            "--image", str(image),
            *(["--aio", aio] if aio is not None else []),
            *(["--cache", cache] if cache is not None else []),
            "--num-queues", str(num_queues),
        ]  # fmt: skip
    else:
        given = {"socket": str(socket), "image": str(image), "aio": aio, "cache": cache}
        given |= {"num-queues": str(num_queues), **keys}
        device = ["--device", ",".join(f"{k}={v}" for k, v in given.items() if v is not None)]
    argv = [*(command or dataplane_command()), "serve", *device, *extra_args]
    backend = _spawn("dataplane", argv, socket, log_path, env)
    backend.wait_ready(lambda: "listening" in backend.log_text(), "logging 'listening'", timeout)
    return backend


def find_qsd() -> str:
    qsd = shutil.which("qemu-storage-daemon")
    if qsd is None:
        raise UsageError(
            "qemu-storage-daemon is not installed: run scripts/install-deps.sh "
            "(Debian package qemu-system-x86)"
        )
    return qsd


def start_qsd(
    socket: Path,
    image: Path | None,
    *,
    log_path: Path,
    aio: str = "io_uring",
    cache: str = "none",
    num_queues: int = 1,
    null_size: int = 1 << 30,
    timeout: float = READY_TIMEOUT,
    blockdev: str | None = None,
) -> BackendProcess:
    """Start qemu-storage-daemon exporting ``image`` (or null-co when None) over vhost-user-blk.

    ``blockdev``: the node ``f0`` to export instead (a remote disk: ``driver=nbd,...``).
    """
    qsd = find_qsd()
    if blockdev is None and image is None:
        blockdev = f"driver=null-co,node-name=f0,size={null_size},read-zeroes=on"
    elif blockdev is None:
        direct = "on" if cache == "none" else "off"
        blockdev = (
            f"driver=file,node-name=f0,filename={image},cache.direct={direct},aio={QSD_AIO[aio]}"
        )
    argv = [
        qsd,
        "--blockdev", blockdev,
        "--export",
        "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,"
        f"addr.path={socket},writable=on,num-queues={num_queues}",
    ]  # fmt: skip
    backend = _spawn("qsd", argv, socket, log_path)
    backend.wait_ready(socket.exists, f"creating {socket}", timeout)
    return backend
