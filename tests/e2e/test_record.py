"""``dataplane serve --record``: record a real guest's requests, then replay them with the bench.

A QEMU guest (TCG) runs the verify workload of tests/e2e/test_guest.py on a backend
started with ``--record FILE``; then ``dataplane bench --target ours --aio null
--replay FILE`` plays the trace back.  The replay must issue the recorded
number of requests with the recorded mix, and the recording must match what
the backend counted (its stats, logged at exit) and what the guest did.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from guest_support import (
    GUEST_TIMEOUT,
    IMAGE_SIZE,
    BackendFactory,
    assert_guest_ok,
    backend_fixture,  # noqa: F401  (the "backend" fixture)
    backend_kind,
    guest_image_fixture,  # noqa: F401  (the "guest_image" fixture)
    make_pattern_image,
    watch,
)

from dataplane.guest.bench.trace import KINDS, read_trace
from dataplane.guest.harness.guest_image import GuestImage
from dataplane.guest.harness.qemu import run_guest
from dataplane.guest.harness.workloads import verify_script
from dataplane.json_keys import kebab_keys

pytestmark = pytest.mark.guest

KiB = 1024
# What verify_script("/dev/vda") writes with O_DIRECT, at least: single writes, the 1 MiB
# fsync'd write, 4 writers of 128 KiB, and the 512 KiB regions later zeroed and discarded.
MIN_WRITTEN = 4 * KiB + 1536 + 64 * KiB + 200 * KiB + 1024 * KiB + 4 * 128 * KiB + 2 * 512 * KiB


def _logged_counts(log: str) -> dict[str, int]:
    """The per-kind request counts of the datapath's exit line ("requests by queue: ...")."""
    (line,) = [ln for ln in log.splitlines() if "requests by queue:" in ln]
    return {k: int(n) for k, n in re.findall(r"\b(\w+)=(\d+)", line)}


def test_guest_record_then_replay(
    guest_image: GuestImage, backend: BackendFactory, tmp_path: Path
) -> None:
    if backend_kind() != "dataplane":
        pytest.skip("--record is ours")
    image = make_pattern_image(tmp_path / "disk.img")
    rec = tmp_path / "guest.trace"
    b = backend(image, aio="io_uring", extra_args=("--record", str(rec)))
    result = run_guest(
        verify_script("/dev/vda"),
        [b.socket],
        image=guest_image,
        timeout=GUEST_TIMEOUT,
        log_path=tmp_path / "console.log",
        abort_check=watch(b),
    )
    assert_guest_ok(result, {"/dev/vda": image}, {"/dev/vda": IMAGE_SIZE})
    assert b.stop() == 0  # flushes and closes the recording
    log = b.log_text()

    trace = read_trace(rec)
    mix = trace.mix()
    print(f"recorded {len(trace)} requests: {mix}")
    # What the guest did: reads, writes, a FLUSH (conv=fsync, sync), write-zeroes
    # (blkdiscard -z) and a discard (blkdiscard).
    assert all(mix[k] > 0 for k in KINDS), mix
    written = sum(n for k, n in zip(trace.kind, trace.length, strict=True) if k == 1)
    assert written >= MIN_WRITTEN
    assert trace.end_sector() * 512 <= IMAGE_SIZE
    # What the backend counted: every request of these kinds was recorded.
    counted = _logged_counts(log)
    assert {k: counted.get(k, 0) for k in KINDS} == mix, (counted, mix)
    assert f"recorded {len(trace)} requests to {rec}" in log

    out = tmp_path / "replay.json"
    p = subprocess.run(
        [sys.executable, "-m", "dataplane", "bench", "--target", "ours", "--aio", "null",
         "--replay", str(rec), "--iodepth", "8", "--repeat", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    (res,) = json.loads(out.read_text())["results"]
    assert res["ios"] == len(trace)
    assert res["ops"] == kebab_keys(mix)  # the --json file spells write-zeroes so
