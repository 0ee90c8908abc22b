"""Live migration of the test guest between two QEMUs, each on its own vhost-user-blk backend.

A *source* QEMU boots the guest; a *destination* QEMU with the same command line starts
with ``-incoming defer`` on the other backend's socket; QMP ``migrate`` moves the guest.
The guest runs :func:`writers_script`: several writers write 4 KiB O_DIRECT blocks, each
one a versioned stamp, read each back and compare, over and over, until the migrations
they wait for have happened (the disk's serial, which a GET_ID request reads, names the
backend the guest runs on now) and a few seconds more.  :func:`check_writers` then checks
on the host that every block holds the last version its writer wrote.

Standard library only: the tests and scripts/migrate-loop.py use it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataplane.guest.harness.guest_image import GuestImage, tail_of
from dataplane.guest.harness.qemu import EXIT_MARKER, Qemu, QemuProcess, guest_initrd, qemu_command
from dataplane.guest.harness.qmp import Qmp, QmpError

__all__ = [
    "BLOCK",
    "GuestKernelBroke",
    "MigrationFailed",
    "MigrationRun",
    "MigrationStats",
    "Vm",
    "check_writers",
    "migrate",
    "run_migrations",
    "writers_script",
]

BLOCK = 4096
STAMP = "DPSTAMP w={:02d} b={:04d} v={:06d}\n"
MIGRATION_TIMEOUT = 180.0  # seconds for one migration to end, under TCG on a loaded host
SETTLE_ROUNDS = 3
SETTLED = f"DP-ROUND {SETTLE_ROUNDS}"  # the writers run: time to migrate
# Console lines of a guest kernel that went wrong: no need to wait for it to finish.
GUEST_BROKE = ("Kernel panic", "BUG: ", "Oops: ", "list_add corruption", "list_del corruption")
# Converge quickly: the guest's RAM is small and the channel a local socket.  A migration
# to be cancelled goes slowly instead (its RAM is mostly zero pages, which cost no bandwidth):
# the cancel must land before it completes.
PARAMETERS = {"max-bandwidth": 4 << 30, "downtime-limit": 100}
SLOW = {"max-bandwidth": 4 << 20}


def writers_script(
    *, writers: int, blocks: int, switches: int, seconds: int, after: int = 3
) -> str:
    """The guest's workload: ``writers`` writers on ``blocks`` blocks each of /dev/vda.

    They stop ``after`` seconds once the disk's serial has changed ``switches`` times
    (``DP-SWITCH n SERIAL`` on the console each time), or after ``seconds`` seconds of
    guest uptime in any case.  Writer 0 prints ``DP-ROUND V`` after each of its first
    rounds (:data:`SETTLED` says when to migrate); each writer ``DP-LAST w=W v=V ok=1|0``.
    """
    return f"""
DEV=/dev/vda
T=/tmp/mig
mkdir -p $T
up() {{ cut -d. -f1 /proc/uptime; }}
end=$(( $(up) + {seconds} ))
serial() {{ cat /sys/block/vda/serial 2>/dev/null; }}
watch() {{
    cur=$(serial); n=0
    echo "DP-SERIAL $cur"
    while [ "$(up)" -lt "$end" ]; do
        s=$(serial)
        if [ -n "$s" ] && [ "$s" != "$cur" ]; then
            n=$((n + 1)); cur=$s; echo "DP-SWITCH $n $s"
        fi
        if [ {switches} -gt 0 ] && [ $n -ge {switches} ]; then sleep {after}; break; fi
        sleep 1
    done
    touch $T/stop
}}
writer() {{
    i=$1; v=0; ok=1
    while [ ! -e $T/stop ]; do
        v=$((v + 1)); b=0
        while [ $b -lt {blocks} ]; do
            blk=$((i * {blocks} + b))
            printf 'DPSTAMP w=%02d b=%04d v=%06d\\n' $i $blk $v > $T/s$i
            dd if=$T/s$i of=$T/p$i bs={BLOCK} count=1 conv=sync status=none
            dd if=$T/p$i of=$DEV bs={BLOCK} seek=$blk count=1 oflag=direct conv=notrunc \\
                status=none || {{ echo "DP-FAIL writer $i block $blk v $v: write"; ok=0; }}
            dd if=$DEV of=$T/r$i bs={BLOCK} skip=$blk count=1 iflag=direct status=none \\
                || {{ echo "DP-FAIL writer $i block $blk v $v: read"; ok=0; }}
            cmp -s $T/p$i $T/r$i || {{ echo "DP-FAIL writer $i block $blk v $v: mismatch"; ok=0; }}
            b=$((b + 1))
        done
        [ $i = 0 ] && [ $v -le {SETTLE_ROUNDS} ] && echo "DP-ROUND $v"
    done
    echo "DP-LAST w=$i v=$v ok=$ok"
    [ $ok = 1 ]
}}
echo DP-WRITERS-START
watch &
pids=
for i in $(seq 0 {writers - 1}); do writer $i & pids="$pids $!"; done
rc=0
for p in $pids; do wait $p || rc=1; done
exit $rc
"""


def check_writers(image: Path, output: str, writers: int, blocks: int) -> list[str]:
    """Problems (none: empty): every writer ended with no error, and every block of the image
    holds the last version its writer wrote."""
    last = [m.groups() for m in re.finditer(r"DP-LAST w=(\d+) v=(\d+) ok=(\d)", output)]
    problems = [line for line in output.splitlines() if "DP-FAIL" in line or "I/O error" in line]
    if len(last) != writers:
        problems.append(f"{len(last)} of {writers} writers finished: {last}")
    with image.open("rb") as f:
        for w, v, ok in last:
            if ok != "1":
                problems.append(f"writer {w} saw an error")
            for b in range(int(w) * blocks, (int(w) + 1) * blocks):
                want = STAMP.format(int(w), b, int(v)).encode()
                f.seek(b * BLOCK)
                got = f.read(len(want))
                if got != want:
                    problems.append(f"block {b} reads {got!r}, last written {want!r}")
    return problems


@dataclass
class MigrationStats:
    """How one migration ended, as QMP ``query-migrate`` reports it."""

    status: str
    total_ms: int | None = None
    downtime_ms: int | None = None
    setup_ms: int | None = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    guest_done: bool = False  # the guest's workload had ended on the source by then


class Vm:
    """One QEMU of the guest, with its QMP monitor and its console in ``workdir``."""

    def __init__(
        self,
        name: str,
        qemu: Qemu,
        image: GuestImage,
        initrd: Path,
        socket: Path,
        workdir: Path,
        *,
        incoming: bool = False,
        mem_mib: int = 256,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.qmp_path = workdir / f"{name}.qmp"
        self.console = workdir / f"{name}.console"
        args = ["-qmp", f"unix:{self.qmp_path},server=on,wait=off", *extra_args]
        if incoming:
            args += ["-incoming", "defer"]
        cmd = qemu_command(
            image, initrd, [socket], mem_mib=mem_mib, qemu=qemu, extra_args=args
        )  # fmt: skip
        self.proc = QemuProcess(cmd, self.console)
        try:
            self.qmp = Qmp(self.qmp_path)
            self.qmp.execute(
                "migrate-set-capabilities",
                capabilities=[{"capability": "events", "state": True}],
            )
        except BaseException:
            self.proc.kill()
            raise

    @classmethod
    def boot(
        cls, name: str, qemu: Qemu, image: GuestImage, script: str, socket: Path, workdir: Path,
        **kw: Any,
    ) -> Vm:  # fmt: skip
        """The source: QEMU booting the guest with ``script`` as its workload."""
        return cls(name, qemu, image, guest_initrd(image, script, workdir), socket, workdir, **kw)

    def text(self) -> str:
        return self.proc.text()

    def tail(self, n: int = 30) -> str:
        return f"--- {self.name} console ---\n{tail_of(self.text(), n)}"

    def quit(self) -> None:
        """QMP ``quit`` (QEMU is killed if it will not go)."""
        try:
            self.qmp.execute("quit")
        except (QmpError, OSError):
            pass
        self.proc.wait(30)
        self.close()

    def close(self) -> None:
        self.qmp.close()
        self.proc.kill()

    def finished(self) -> bool:
        return EXIT_MARKER in self.text()


def migrate(
    src: Vm, dst: Vm, uri: str, *, timeout: float = MIGRATION_TIMEOUT, cancel: bool = False
) -> MigrationStats:
    """Migrate ``src``'s guest to ``dst`` (started ``incoming``) over ``uri``; wait for it.

    ``cancel``: ``migrate_cancel`` once the migration is active, and wait for it to end
    (``cancelled``; the guest goes on on the source).
    """
    dst.qmp.execute("migrate-incoming", uri=uri)
    src.qmp.execute("migrate-set-parameters", **(PARAMETERS | (SLOW if cancel else {})))
    # A QEMU that came in by migration has that migration's events queued (its own
    # "completed" among them): they are not this one's.
    src.qmp.events.clear()
    src.qmp.execute("migrate", uri=uri)
    ends = ("completed", "failed", "cancelled")
    if cancel:
        src.qmp.wait_event("MIGRATION", timeout, lambda d: d.get("status") in ("active", *ends))
        src.qmp.execute("migrate_cancel")
    end = src.qmp.wait_event("MIGRATION", timeout, lambda d: d.get("status") in ends)
    info = src.qmp.execute("query-migrate")
    # QEMU announces "completed" before it has counted the times (QEMU 7.2:
    # migration_iteration_finish): ask again, for a while, until they are there.
    deadline = time.monotonic() + 10
    while end["data"]["status"] == "completed" and not info.get("total-time"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
        info = src.qmp.execute("query-migrate")
    done = "DP-LAST" in src.text()
    return MigrationStats(
        status=end["data"]["status"],
        total_ms=info.get("total-time"),
        downtime_ms=info.get("downtime"),
        setup_ms=info.get("setup-time"),
        error=info.get("error-desc"),
        info=info,
        guest_done=done,
    )


class MigrationFailed(RuntimeError):
    """A migration or the guest around it went wrong; the message has the consoles' tails."""


class GuestKernelBroke(MigrationFailed):
    """The guest's kernel oopsed or panicked (its console shows it) after a migration."""


@dataclass
class MigrationRun:
    """What :func:`run_migrations` saw: each migration's figures and the guest's console."""

    stats: list[MigrationStats]
    output: str  # every QEMU's console, in the order the guest ran on them
    rc: int  # the guest workload's exit status


def run_migrations(
    qemu: Qemu,
    image: GuestImage,
    script: str,
    sockets: Sequence[Path],
    workdir: Path,
    *,
    hops: int,
    cancel: bool = False,
    switches: bool = True,
    timeout: float = MIGRATION_TIMEOUT,
    mem_mib: int = 256,
) -> MigrationRun:
    """Boot the guest on ``sockets[0]`` and migrate it ``hops`` times, to ``sockets[1]``,
    ``sockets[0]``, ... (cycling), each time to a new QEMU; then wait for the workload's end.

    ``cancel``: every migration is cancelled mid-way and the guest stays on the source.
    ``switches``: wait, after each migration, for the guest to see the disk's new serial
    (``DP-SWITCH n``), so that it runs I/O on each QEMU before the next hop.
    Raises MigrationFailed (with the consoles' tails) when anything goes wrong.
    """
    initrd = guest_initrd(image, script, workdir)
    vms: list[Vm] = []
    stats: list[MigrationStats] = []

    def fail(why: str) -> MigrationFailed:
        broke = any(g in vm.text() for vm in vms for g in GUEST_BROKE)
        kind = GuestKernelBroke if broke else MigrationFailed
        return kind(f"{why}\n" + "\n".join(vm.tail() for vm in vms))

    def new_vm(n: int, incoming: bool) -> Vm:
        vm = Vm(f"vm{n}", qemu, image, initrd, sockets[n % len(sockets)], workdir,
                incoming=incoming, mem_mib=mem_mib)  # fmt: skip
        vms.append(vm)
        return vm

    try:
        src = new_vm(0, incoming=False)
        if not src.proc.wait_for(SETTLED, timeout):
            raise fail("the guest's writers never started")
        ran = [src]
        for hop in range(1, hops + 1):
            dst = new_vm(hop, incoming=True)
            st = migrate(src, dst, f"unix:{workdir}/migrate{hop}.sock", timeout=timeout,
                         cancel=cancel)  # fmt: skip
            stats.append(st)
            if st.status != "completed":
                dst.close()
                if cancel and st.status == "cancelled":
                    continue
                raise fail(f"migration {hop} ended {st.status}: {st.error}")
            src.quit()
            src = dst
            ran.append(src)
            if switches and not src.proc.wait_for(f"DP-SWITCH {hop} ", timeout, GUEST_BROKE):
                raise fail(f"the guest never saw the disk of hop {hop}")
        if not src.proc.wait_for(EXIT_MARKER, timeout, GUEST_BROKE):
            raise fail("the guest never finished")
        src.proc.wait(30)
        output = "".join(vm.text() for vm in ran)
        exits = [line.split()[1:] for line in output.splitlines() if EXIT_MARKER in line]
        rc = int(exits[-1][0]) if exits and exits[-1] and exits[-1][0].isdigit() else -1
        return MigrationRun(stats, output, rc)
    except QmpError as e:
        raise fail(f"QMP: {e}") from None
    finally:
        for vm in vms:
            vm.close()
