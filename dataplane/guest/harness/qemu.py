"""Boot a small real Linux guest in QEMU (TCG) attached to vhost-user-blk sockets.

The guest (kernel + busybox initramfs) is built by ``scripts/build-guest.sh``. Its ``/init`` loads
the virtio-blk modules, waits for ``/dev/vda`` (and ``/dev/vdb`` ...), runs ``sh /test.sh``, prints
``DP-GUEST-EXIT <rc>`` on the serial console and powers off. :func:`run_guest` appends a tiny cpio
archive holding ``/test.sh`` to the base initrd (the kernel unpacks concatenated archives), boots
QEMU, captures the console and parses that marker.

Standard library only: the end-to-end tests and the demo both use it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dataplane.guest.harness.guest_image import (
    TAIL_LINES,
    GuestImage,
    GuestVmError,
    GuestVmTimeout,
    make_cpio,
    tail_of,
)

__all__ = [
    "DEFAULT_ABORT_ON",
    "EXIT_MARKER",
    "QEMU_VERSIONS",
    "RAM_PAD_KIB",
    "READY_MARKER",
    "GuestResult",
    "Qemu",
    "QemuProcess",
    "die_with_parent",
    "find_qemu",
    "guest_initrd",
    "guest_result",
    "qemu_command",
    "run_guest",
]

EXIT_MARKER = "DP-GUEST-EXIT"
READY_MARKER = "DP-GUEST-READY"
QEMU_BINARY = "qemu-system-x86_64"
DEFAULT_ABORT_ON: tuple[str, ...] = ("vhost start failed", "Error starting vhost")
"""QEMU's console messages that mean a vhost-user-blk device cannot work: no need to wait."""
QEMU_VERSIONS = ("7.2", "10.0.2")
"""The QEMUs the guest tests run on: the system's (Debian 12: 7.2), and 10.0.2 unpacked by
scripts/install-qemu10.sh into ``$DATAPLANE_QEMU10_DIR`` (default /opt/qemu-10.0.2)."""
RAM_PAD_KIB = {"7.2": 8}
"""KiB of guest RAM beyond ``mem_mib``, per QEMU.  QEMU 7.2 under TCG loses guest stores
while it migrates when the RAM block's length is a multiple of 64 pages: the
word-at-a-time path of cpu_physical_memory_sync_dirty_bitmap() clears the migration
bitmap without re-arming the not-dirty trap in the vCPU's TLB, so later stores to those
pages mark nothing and are never sent again, and the guest's kernel oopses on the
destination (QEMU 9.0 fixed it: 03bfc2188f, "physmem: Fix migration dirty bitmap
coherency with TCG memory access").  8 KiB more (the granule of ``-m``) keeps 7.2 on its
page-at-a-time path, which re-arms the trap: docs/migration.md has the runs."""


@dataclass(frozen=True)
class Qemu:
    """One QEMU build: its binary, and the firmware folders it reads (``-L``)."""

    version: str
    binary: str
    firmware: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """The start of a command line: the binary and its ``-L`` options."""
        return [self.binary, *(arg for d in self.firmware for arg in ("-L", d))]


@dataclass
class GuestResult:
    """What a guest run produced."""

    rc: int
    """The exit status of ``sh /test.sh`` inside the guest (from ``DP-GUEST-EXIT <rc>``)."""
    output: str
    """The whole serial console text (kernel messages and the script's output)."""
    qemu_rc: int | None = None
    boot_seconds: float | None = None
    """Wall time from QEMU start until the guest's /init printed ``DP-GUEST-READY``."""
    total_seconds: float = 0.0
    """Wall time from QEMU start until QEMU exited."""
    command: list[str] = field(default_factory=list)

    def lines(self, prefix: str) -> list[str]:
        """Console lines that start with ``prefix`` (surrounding whitespace and CRs stripped)."""
        out = []
        for raw in self.output.splitlines():
            line = raw.strip().strip("\r")
            if line.startswith(prefix):
                out.append(line)
        return out

    def fields(self, prefix: str) -> list[list[str]]:
        """The whitespace-separated fields after ``prefix`` of each line that starts with it."""
        return [line[len(prefix) :].split() for line in self.lines(prefix)]

    def tail(self, n: int = TAIL_LINES) -> str:
        return tail_of(self.output, n)


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``sig`` when the thread that started it dies.

    So that QEMU (or a backend) does not outlive a test runner that was killed. Linux only; a
    no-op where prctl is unavailable.
    """

    def preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            pass

    return preexec


def qemu10_dir() -> Path:
    return Path(os.environ.get("DATAPLANE_QEMU10_DIR", "/opt/qemu-10.0.2"))


def find_qemu(version: str | None = None) -> Qemu | None:
    """A QEMU of :data:`QEMU_VERSIONS` (default ``$DATAPLANE_QEMU``, else the system's), or
    None when it is not installed."""
    version = version or os.environ.get("DATAPLANE_QEMU") or QEMU_VERSIONS[0]
    if version not in QEMU_VERSIONS:
        raise ValueError(f"QEMU {version!r} is not one of {', '.join(QEMU_VERSIONS)}")
    if version == QEMU_VERSIONS[0]:
        binary = shutil.which(QEMU_BINARY)
        return Qemu(version, binary) if binary else None
    root = qemu10_dir()
    binary = root / "usr" / "bin" / QEMU_BINARY
    if not os.access(binary, os.X_OK):
        return None
    return Qemu(version, str(binary), (str(root / "usr/share/qemu"), "/usr/share/qemu"))


def guest_initrd(image: GuestImage, script: str, directory: Path) -> Path:
    """The guest's initrd with ``script`` as ``/test.sh``, written in ``directory``."""
    initrd = directory / "initrd.img"
    base = image.initrd.read_bytes()
    with initrd.open("wb") as f:
        f.write(base)
        f.write(b"\0" * (-len(base) % 4))
        f.write(make_cpio({"test.sh": script.encode()}))
    return initrd


def qemu_command(
    image: GuestImage,
    initrd: Path,
    sockets: Sequence[Path],
    *,
    smp: int = 1,
    num_queues: int = 1,
    mem_mib: int = 512,
    qemu: Qemu | None = None,
    append: str = "",
    reconnect_s: int = 0,
    mem_opts: str = "",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The QEMU command line used by :func:`run_guest` (exposed for the demo and debugging)."""
    qemu = qemu or find_qemu()
    if qemu is None:
        raise GuestVmError(
            f"{QEMU_BINARY} not found: install QEMU (scripts/install-deps.sh; 10.0.2: "
            "scripts/install-qemu10.sh)"
        )
    ram = f"{mem_mib * 1024 + RAM_PAD_KIB.get(qemu.version, 0)}K"
    cmd = [
        *qemu.argv(),
        "-accel", "tcg",
        "-machine", "pc,memory-backend=mem",
        "-m", ram + (f",{mem_opts}" if mem_opts else ""),
        "-smp", str(smp),
        "-object", f"memory-backend-memfd,id=mem,size={ram},share=on",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial", "stdio",
        "-no-reboot",
        "-kernel", str(image.vmlinuz),
        "-initrd", str(initrd),
        "-append",
        f"console=ttyS0 panic=-1 quiet loglevel=4 {append}".strip(),
    ]  # fmt: skip
    for i, sock in enumerate(sockets):
        cmd += [
            "-chardev",
            f"socket,id=c{i},path={sock}" + (f",reconnect={reconnect_s}" if reconnect_s else ""),
            "-device", f"vhost-user-blk-pci,chardev=c{i},num-queues={num_queues}",
        ]  # fmt: skip
    return cmd + list(extra_args)


def run_guest(
    script: str,
    sockets: list[Path],
    *,
    smp: int = 1,
    num_queues: int = 1,
    mem_mib: int = 512,
    timeout: float = 300,
    image: GuestImage,
    log_path: Path | None = None,
    append: str = "",
    abort_on: Sequence[str] = DEFAULT_ABORT_ON,
    abort_check: Callable[[], str | None] | None = None,
    reconnect_s: int = 0,
    mem_opts: str = "",
    extra_args: Sequence[str] = (),
    qemu: Qemu | None = None,
) -> GuestResult:
    """Boot the guest with ``script`` as ``/test.sh`` and one virtio-blk disk per socket.

    The first socket is ``/dev/vda``, the second ``/dev/vdb``, and so on. Returns the script's
    exit status and the console text. Raises :class:`GuestVmTimeout` (after killing QEMU) if the
    guest does not finish within ``timeout`` seconds, and :class:`GuestVmError` if QEMU exits
    without the guest printing ``DP-GUEST-EXIT <rc>`` (QEMU error, kernel panic, ...). The
    console text is also written to ``log_path`` as it arrives, when given.

    To fail fast instead of waiting for the timeout, the run is aborted (QEMU killed,
    :class:`GuestVmError` raised) as soon as the console shows one of the ``abort_on`` strings
    (by default QEMU's messages for a failed vhost-user start), or ``abort_check()`` returns a
    reason (it is polled a few times a second; e.g. "the backend process died").
    ``reconnect_s``: the chardevs reconnect to a backend that went away (``reconnect=N``).
    ``mem_opts`` follow ``-m`` (``slots=16,maxmem=2G``); ``extra_args`` end the command line
    (memory-backend objects and pc-dimms, a QMP socket).  ``qemu``: which QEMU
    (default :func:`find_qemu`'s).
    """
    if not sockets:
        raise ValueError("run_guest needs at least one vhost-user socket")
    with tempfile.TemporaryDirectory(prefix="dataplane-guest-") as tmp:
        initrd = guest_initrd(image, script, Path(tmp))
        cmd = qemu_command(
            image, initrd, sockets, smp=smp, num_queues=num_queues, mem_mib=mem_mib,
            append=append, reconnect_s=reconnect_s, mem_opts=mem_opts, extra_args=extra_args,
            qemu=qemu,
        )  # fmt: skip
        return _run_qemu(
            cmd, timeout=timeout, log_path=log_path, abort_on=abort_on, abort_check=abort_check
        )


class QemuProcess:
    """A running QEMU whose serial console (its stdout) is captured as it arrives.

    stdin is /dev/null so QEMU never touches the caller's terminal; a new session keeps the
    terminal's signals (Ctrl-C goes to the test runner, which kills QEMU); and QEMU gets
    SIGKILL if the thread that started it dies (say the test runner is killed), so it is
    never orphaned.  The console text is also written to ``log_path`` when given.
    """

    def __init__(self, cmd: list[str], log_path: Path | None = None) -> None:
        self.cmd = cmd
        self.start = time.monotonic()
        self.ready_at: float | None = None  # seconds until the guest printed READY_MARKER
        self._chunks: list[str] = []
        self._log = log_path.open("w", encoding="utf-8", errors="replace") if log_path else None
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self._reader = threading.Thread(target=self._pump, name="qemu-console", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        pending = b""
        while True:
            data = self.proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not data:
                break
            text = data.decode("utf-8", errors="replace")
            self._chunks.append(text)
            if self._log is not None:
                self._log.write(text)
                self._log.flush()
            if self.ready_at is None:
                pending = (pending + data)[-4096:]
                if READY_MARKER.encode() in pending:
                    self.ready_at = time.monotonic() - self.start

    def text(self) -> str:
        """The console text so far."""
        return "".join(self._chunks)

    def wait_for(self, needle: str, timeout: float, give_up: Sequence[str] = ()) -> bool:
        """Wait until the console shows ``needle``; False if QEMU exited, time ran out, or
        the console shows one of ``give_up`` first."""
        deadline = time.monotonic() + timeout
        while needle not in (text := self.text()):
            if any(g in text for g in give_up):
                return False
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                return needle in self.text()
            time.sleep(0.1)
        return True

    def wait(self, timeout: float) -> int | None:
        """QEMU's exit code, or None if it still runs after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Stop QEMU (if it still runs) and finish the console."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


def _run_qemu(
    cmd: list[str],
    *,
    timeout: float,
    log_path: Path | None,
    abort_on: Sequence[str] = (),
    abort_check: Callable[[], str | None] | None = None,
) -> GuestResult:
    vm = QemuProcess(cmd, log_path)
    timed_out = False
    aborted: str | None = None
    exit_seen = False
    try:
        deadline = vm.start + timeout
        while vm.proc.poll() is None:
            now = time.monotonic()
            if now >= deadline:
                timed_out = aborted is None and not exit_seen
                break
            if aborted is None and not exit_seen:
                text = vm.text()
                if EXIT_MARKER in text:
                    # The guest is done; give its poweroff a moment, then stop QEMU anyway.
                    exit_seen = True
                    deadline = min(deadline, now + 10.0)
                    continue
                hit = next((p for p in abort_on if p in text), None)
                reason = f"console shows {hit!r}" if hit else (abort_check and abort_check())
                if reason:
                    aborted = reason
                    # Let QEMU print the rest of its complaint, then stop it.
                    deadline = min(deadline, now + 2.0)
            vm.wait(0.25)
    finally:
        vm.kill()
    return guest_result(vm, timeout=timeout, timed_out=timed_out, aborted=aborted)


def guest_result(
    vm: QemuProcess, *, timeout: float = 0, timed_out: bool = False, aborted: str | None = None
) -> GuestResult:
    """What the finished ``vm`` reported (GuestVmError/GuestVmTimeout when it did not)."""
    output = vm.text()
    cmd = vm.cmd
    result = GuestResult(
        rc=-1,
        output=output,
        qemu_rc=vm.proc.returncode,
        boot_seconds=vm.ready_at,
        total_seconds=time.monotonic() - vm.start,
        command=cmd,
    )
    exits = result.fields(EXIT_MARKER)
    if aborted is not None and not exits:
        raise GuestVmError(f"guest run aborted: {aborted}; QEMU stopped", output)
    if timed_out:
        raise GuestVmTimeout(f"guest timed out after {timeout:.0f} s; QEMU killed", output)
    if not exits or not exits[-1] or not exits[-1][0].lstrip("-").isdigit():
        raise GuestVmError(
            f"QEMU exited with code {vm.proc.returncode} before the guest printed "
            f"'{EXIT_MARKER} <rc>' (boot failure or kernel panic?)\ncommand: {' '.join(cmd)}",
            output,
        )
    result.rc = int(exits[-1][0])
    return result
