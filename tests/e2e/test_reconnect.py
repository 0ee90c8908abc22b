"""Reconnect under load with a real guest: ``serve`` is SIGKILLed again and again while
the guest keeps O_DIRECT writers with fsync in flight, and comes back on the same socket
and image; QEMU's chardev reconnects (``reconnect=1``) and hands back the inflight area.

test-delay (the native datapath's) holds every fourth completion back, so that requests
are in flight behind completed ones when the backend dies.  Afterwards: no writer saw an
I/O error, the guest finished (no hang), and every block reads back from the host as the
newest version its writer wrote (each block holds a versioned stamp; a writer writes its
blocks over and over, one version after another, each write with fsync).
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from guest_support import (
    GUEST_TIMEOUT,
    guest_image_fixture,  # noqa: F401  (the "guest_image" fixture)
    start_dataplane,
)

from dataplane import test_hooks
from dataplane.guest.harness.guest_image import GuestImage
from dataplane.guest.harness.processes import BackendProcess, short_socket_dir
from dataplane.guest.harness.qemu import GuestResult, run_guest

pytestmark = pytest.mark.guest

WRITERS = 8
BLOCKS = 8  # per writer, 4 KiB each
KILLS = 8
STOP_BLOCK = WRITERS * BLOCKS  # the host writes STOP here after the last kill
STOP = b"DP-STOP\n"
WRITE_SECONDS_MAX = 240  # guest seconds: a hang guard only (the writers end on STOP)
STAMP = "DPSTAMP w={:02d} b={:04d} v={:06d}\n"
KEYS = {"test-delay": "4:20000", "queue-size": "128"}

SCRIPT = f"""
DEV=/dev/vda
T=/tmp/rc
mkdir -p $T
end=$(( $(cut -d. -f1 /proc/uptime) + {WRITE_SECONDS_MAX} ))
stopped() {{
    dd if=$DEV bs=4096 skip={STOP_BLOCK} count=1 iflag=direct status=none | grep -q DP-STOP \\
        || [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ]
}}
writer() {{
    i=$1; v=0; ok=1
    while ! stopped; do
        v=$((v + 1)); b=0
        while [ $b -lt {BLOCKS} ]; do
            blk=$((i * {BLOCKS} + b))
            printf 'DPSTAMP w=%02d b=%04d v=%06d\\n' $i $blk $v > $T/s$i
            dd if=$T/s$i of=$DEV bs=4096 seek=$blk count=1 oflag=direct \\
                conv=sync,notrunc,fsync status=none \\
                || {{ echo "DP-FAIL writer $i block $blk version $v"; ok=0; }}
            b=$((b + 1))
        done
    done
    echo "DP-LAST w=$i v=$v ok=$ok"
    [ $ok = 1 ]
}}
echo DP-WRITERS-START
pids=
for i in $(seq 0 {WRITERS - 1}); do writer $i & pids="$pids $!"; done
rc=0
for p in $pids; do wait $p || rc=1; done
exit $rc
"""


def run_in_thread(**kw) -> tuple[threading.Thread, list]:
    out: list = []

    def target() -> None:
        try:
            out.append(run_guest(**kw))
        except BaseException as e:  # re-raised by the test
            out.append(e)

    t = threading.Thread(target=target, name="guest", daemon=True)
    t.start()
    return t, out


def wait_for(path: Path, text: str, guest: threading.Thread) -> None:
    while guest.is_alive():
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)


def check_blocks(image: Path, result: GuestResult) -> int:
    """Every writer's blocks hold its last version; the number of versions written."""
    last = [m.groups() for m in re.finditer(r"DP-LAST w=(\d+) v=(\d+) ok=(\d)", result.output)]
    assert len(last) == WRITERS, f"writers that finished: {last}\n{result.tail()}"
    data = image.read_bytes()
    total = 0
    for w, v, ok in last:
        assert ok == "1", f"writer {w} saw an I/O error"
        for b in range(int(w) * BLOCKS, (int(w) + 1) * BLOCKS):
            want = STAMP.format(int(w), b, int(v)).encode()
            got = data[b * 4096 : b * 4096 + len(want)]
            assert got == want, f"block {b} reads {got!r}, last written {want!r}"
        total += int(v)
    return total


def test_sigkill_under_guest_load_loses_no_write(guest_image: GuestImage, tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    image = tmp_path / "disk.img"
    image.write_bytes(bytes((STOP_BLOCK + 1) * 4096))
    sock = short_socket_dir() / "vub.sock"
    lives: list[BackendProcess] = []

    def start() -> None:
        n = len(lives)
        log = tmp_path / f"b{n}.log"
        lives.append(start_dataplane(sock, image, log_path=log, keys=KEYS, env=test_hooks.ON))

    start()
    console = tmp_path / "console.log"
    guest, out = run_in_thread(
        script=SCRIPT, sockets=[sock], image=guest_image, timeout=GUEST_TIMEOUT,
        log_path=console, reconnect_s=1,
    )  # fmt: skip
    try:
        wait_for(console, "DP-WRITERS-START", guest)
        for _ in range(KILLS):
            # A random moment once QEMU is back and the writers run again on this life.
            b = lives[-1]
            b.wait_ready(lambda b=b: "frontend connected" in b.log_text(), "QEMU back", 60)
            time.sleep(rng.uniform(0.3, 1.5))
            assert guest.is_alive(), "the guest finished before every kill"
            os.kill(lives[-1].pid, signal.SIGKILL)
            lives[-1].proc.wait()
            time.sleep(rng.uniform(0, 0.3))
            start()
        # The writers run until told, however long the kills took: STOP once QEMU is back.
        b = lives[-1]
        b.wait_ready(lambda b=b: "frontend connected" in b.log_text(), "QEMU back", 60)
        with image.open("r+b") as f:
            f.seek(STOP_BLOCK * 4096)
            f.write(STOP)
        guest.join(GUEST_TIMEOUT)
    finally:
        rc = lives[-1].stop()
    assert not guest.is_alive(), "the guest hung"
    if isinstance(out[0], BaseException):
        raise out[0]
    result: GuestResult = out[0]
    assert rc == 0, lives[-1].log_text()
    assert result.rc == 0, "\n".join(result.lines("DP-FAIL")) + "\n" + result.tail()
    assert "I/O error" not in result.output, result.tail()
    versions = check_blocks(image, result)
    recovered = sum("in flight resubmitted first" in b.log_text() for b in lives[1:])
    print(f"{versions} rounds of the writers over {KILLS} kills; {recovered} lives "
          "found requests in flight and resubmitted them")  # fmt: skip
    assert recovered, "no life found requests in flight behind completed ones"
