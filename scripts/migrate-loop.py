#!/usr/bin/env python3
"""Live-migrate the test guest N times on an image file, ours beside qemu-storage-daemon's.

Each run: a fresh raw image, backend A and backend B on it (``dataplane serve`` and
``serve --incoming``; or two qemu-storage-daemons with ``locking=off``), the guest booted
on A with 4 writers of versioned 4 KiB O_DIRECT blocks (dataplane/guest/harness/migration.py),
QMP ``migrate`` to a QEMU on B as soon as they write, the writers' end on B, and the
host's check of every block.  Printed per run: downtime and total time as QMP
``query-migrate`` reports them; at the end, each backend's failures and figures.

    .venv/bin/python scripts/migrate-loop.py 20                 # both backends, QEMU 7.2
    .venv/bin/python scripts/migrate-loop.py 5 --qemu 10.0.2 --backend dataplane

A run fails when the migration does not complete, the guest reports an error or hangs,
or a block on the host is not the last version written.  Exit status: 1 if any run failed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dataplane.guest.harness.guest_image import GuestImage, ensure_guest
from dataplane.guest.harness.migration import (
    BLOCK,
    MigrationFailed,
    check_writers,
    run_migrations,
    writers_script,
)
from dataplane.guest.harness.processes import BackendProcess, start_dataplane, start_qsd
from dataplane.guest.harness.qemu import QEMU_VERSIONS, RAM_PAD_KIB, Qemu, find_qemu

WRITERS, BLOCKS = 4, 4
SECONDS = 20  # guest seconds the writers write; the migration starts as they begin
RUN_TIMEOUT = 180.0


def start_backends(kind: str, image: Path, work: Path) -> list[BackendProcess]:
    backends: list[BackendProcess] = []
    try:
        for name in ("a", "b"):
            sock, log = work / f"{name}.sock", work / f"{name}.log"
            if kind == "qsd":
                # QEMU's own image locking would refuse the second; the guest's writes go
                # through one of them at a time only while the migration is right.
                blockdev = (
                    f"driver=file,node-name=f0,filename={image},cache.direct=on,"
                    "aio=io_uring,locking=off"
                )
                backends.append(start_qsd(sock, None, log_path=log, blockdev=blockdev))
            else:
                keys = {"name": name} | ({"incoming": "on"} if name == "b" else {})
                backends.append(start_dataplane(sock, image, log_path=log, keys=keys))
    except BaseException:
        for b in backends:
            b.stop()
        raise
    return backends


def one_run(kind: str, qemu: Qemu, guest: GuestImage, work: Path) -> tuple[dict, str | None]:
    """Figures of one migration, and why it failed (None: it did not)."""
    image = work / "disk.img"
    image.write_bytes(bytes(WRITERS * BLOCKS * BLOCK + (1 << 20)))
    backends = start_backends(kind, image, work)
    figures: dict = {}
    try:
        script = writers_script(writers=WRITERS, blocks=BLOCKS, switches=0, seconds=SECONDS)
        try:
            run = run_migrations(
                qemu, guest, script, [b.socket for b in backends], work, hops=1,
                switches=False, timeout=RUN_TIMEOUT,
            )  # fmt: skip
        except MigrationFailed as e:
            return figures, str(e).splitlines()[0]
        st = run.stats[0]
        figures = {"status": st.status, "downtime": st.downtime_ms, "total": st.total_ms}
        if st.status != "completed":
            return figures, f"migration {st.status}: {st.error}"
        if st.guest_done:
            return figures, "the writers ended before the migration did"
        if run.rc != 0:
            return figures, f"guest workload exited {run.rc}"
        problems = check_writers(image, run.output, WRITERS, BLOCKS)
        return figures, (problems[0] if problems else None)
    finally:
        for b in backends:
            b.stop()


def summary(kind: str, rows: list[tuple[dict, str | None]]) -> str:
    ok = [f for f, why in rows if why is None]
    fails = len(rows) - len(ok)
    text = f"{kind}: {len(rows)} runs, {fails} failed"
    for key in ("downtime", "total"):
        values = [f[key] for f in ok if f.get(key) is not None]
        if values:
            text += (
                f"; {key} ms median {statistics.median(values):g} "
                f"min {min(values)} max {max(values)}"
            )
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=int, help="migrations per backend")
    parser.add_argument("--qemu", choices=QEMU_VERSIONS, default=QEMU_VERSIONS[0])
    parser.add_argument("--backend", choices=("both", "dataplane", "qsd"), default="both")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("runs must be at least 1")
    qemu = find_qemu(args.qemu)
    if qemu is None:
        print(f"migrate-loop: QEMU {args.qemu} is not installed", file=sys.stderr)
        return 2
    guest = ensure_guest()
    kinds = ("dataplane", "qsd") if args.backend == "both" else (args.backend,)
    results: dict[str, list[tuple[dict, str | None]]] = {k: [] for k in kinds}
    pad = RAM_PAD_KIB.get(args.qemu, 0)
    ram = "256 MiB" + (f" + {pad} KiB" if pad else "")
    print(f"QEMU {args.qemu}, {WRITERS} writers, guest RAM {ram}, migration over a UNIX socket")
    print(f"{'run':>3}  {'backend':<9} {'status':<10} {'downtime ms':>11} {'total ms':>8}  wall")
    for n in range(1, args.runs + 1):
        for kind in kinds:
            work = Path(tempfile.mkdtemp(prefix=f"migrate-loop-{kind}-"))
            t0 = time.monotonic()
            figures, why = one_run(kind, qemu, guest, work)
            results[kind].append((figures, why))
            failed = f"  FAILED: {why} (kept {work})" if why else ""
            print(
                f"{n:>3}  {kind:<9} {figures.get('status', '-'):<10} "
                f"{figures.get('downtime', '-')!s:>11} {figures.get('total', '-')!s:>8}  "
                f"{time.monotonic() - t0:.0f} s{failed}",
                flush=True,
            )
            if why is None:
                shutil.rmtree(work, ignore_errors=True)
    for kind in kinds:
        print(summary(kind, results[kind]))
    return 1 if any(why for rows in results.values() for _, why in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
