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
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dataplane.harness.guest_image import (
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
    "READY_MARKER",
    "GuestResult",
    "die_with_parent",
    "find_qemu",
    "qemu_command",
    "run_guest",
]

EXIT_MARKER = "DP-GUEST-EXIT"
READY_MARKER = "DP-GUEST-READY"
QEMU_BINARY = "qemu-system-x86_64"
DEFAULT_ABORT_ON: tuple[str, ...] = ("vhost start failed", "Error starting vhost")
"""QEMU's console messages that mean a vhost-user-blk device cannot work: no need to wait."""


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


def find_qemu() -> str | None:
    """The path of ``qemu-system-x86_64`` on PATH, or None."""
    return shutil.which(QEMU_BINARY)


def qemu_command(
    image: GuestImage,
    initrd: Path,
    sockets: Sequence[Path],
    *,
    smp: int = 1,
    num_queues: int = 1,
    mem_mib: int = 512,
    qemu: str | None = None,
    append: str = "",
    reconnect_s: int = 0,
    mem_opts: str = "",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The QEMU command line used by :func:`run_guest` (exposed for the demo and debugging)."""
    qemu = qemu or find_qemu()
    if qemu is None:
        raise GuestVmError(f"{QEMU_BINARY} not found on PATH")
    cmd = [
        qemu,
        "-accel", "tcg",
        "-machine", "pc,memory-backend=mem",
        "-m", str(mem_mib) + (f",{mem_opts}" if mem_opts else ""),
        "-smp", str(smp),
        "-object", f"memory-backend-memfd,id=mem,size={mem_mib}M,share=on",
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
    (memory-backend objects and pc-dimms, a QMP socket).
    """
    if not sockets:
        raise ValueError("run_guest needs at least one vhost-user socket")
    with tempfile.TemporaryDirectory(prefix="dataplane-guest-") as tmp:
        initrd = Path(tmp) / "initrd.img"
        base = image.initrd.read_bytes()
        with initrd.open("wb") as f:
            f.write(base)
            f.write(b"\0" * (-len(base) % 4))
            f.write(make_cpio({"test.sh": script.encode()}))
        cmd = qemu_command(
            image, initrd, sockets, smp=smp, num_queues=num_queues, mem_mib=mem_mib,
            append=append, reconnect_s=reconnect_s, mem_opts=mem_opts, extra_args=extra_args,
        )  # fmt: skip
        return _run_qemu(
            cmd, timeout=timeout, log_path=log_path, abort_on=abort_on, abort_check=abort_check
        )


def _run_qemu(
    cmd: list[str],
    *,
    timeout: float,
    log_path: Path | None,
    abort_on: Sequence[str] = (),
    abort_check: Callable[[], str | None] | None = None,
) -> GuestResult:
    chunks: list[str] = []
    ready_at: list[float] = []
    log = log_path.open("w", encoding="utf-8", errors="replace") if log_path else None
    start = time.monotonic()
    # stdin is /dev/null so QEMU never touches the caller's terminal; a new session keeps the
    # terminal's signals (Ctrl-C goes to the test runner, which kills QEMU below); and QEMU gets
    # SIGKILL if this thread dies (say the test runner is killed), so it is never orphaned.
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )

    def pump() -> None:
        assert proc.stdout is not None
        pending = b""
        while True:
            data = proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not data:
                break
            text = data.decode("utf-8", errors="replace")
            chunks.append(text)
            if log is not None:
                log.write(text)
                log.flush()
            if not ready_at:
                pending = (pending + data)[-4096:]
                if READY_MARKER.encode() in pending:
                    ready_at.append(time.monotonic() - start)

    reader = threading.Thread(target=pump, name="qemu-console", daemon=True)
    reader.start()
    timed_out = False
    aborted: str | None = None
    exit_seen = False
    try:
        deadline = start + timeout
        while proc.poll() is None:
            now = time.monotonic()
            if now >= deadline:
                timed_out = aborted is None and not exit_seen
                break
            if aborted is None and not exit_seen:
                text = "".join(chunks)
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
            try:
                proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        reader.join(timeout=10)
        if log is not None:
            log.close()
    total = time.monotonic() - start
    output = "".join(chunks)
    result = GuestResult(
        rc=-1,
        output=output,
        qemu_rc=proc.returncode,
        boot_seconds=ready_at[0] if ready_at else None,
        total_seconds=total,
        command=cmd,
    )
    exits = result.fields(EXIT_MARKER)
    if aborted is not None and not exits:
        raise GuestVmError(f"guest run aborted: {aborted}; QEMU stopped", output)
    if timed_out:
        raise GuestVmTimeout(f"guest timed out after {timeout:.0f} s; QEMU killed", output)
    if not exits or not exits[-1] or not exits[-1][0].lstrip("-").isdigit():
        raise GuestVmError(
            f"QEMU exited with code {proc.returncode} before the guest printed "
            f"'{EXIT_MARKER} <rc>' (boot failure or kernel panic?)\ncommand: {' '.join(cmd)}",
            output,
        )
    result.rc = int(exits[-1][0])
    return result
