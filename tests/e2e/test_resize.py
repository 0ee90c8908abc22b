"""Live resize with a real guest: the image grows while the guest runs, ``dataplane resize`` is
called, and the guest sees the new capacity without a reboot (``/sys/block/vda/size``
changes) and does I/O past the old end, checked on the host.

Twice in one boot: the operator grows the file and ``resize`` re-reads it; then ``resize``
grows it to a size.  The frontend learns it through the backend channel (SET_BACKEND_REQ_FD,
CONFIG_CHANGE_MSG), reads the config space again and interrupts the guest.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from clitest import run_cli
from guest_support import (
    GUEST_TIMEOUT,
    IMAGE_SIZE,
    BackendFactory,
    backend_fixture,  # noqa: F401  (the "backend" fixture)
    backend_kind,
    guest_image_fixture,  # noqa: F401  (the "guest_image" fixture)
    make_pattern_image,
    watch,
)

from dataplane.guest.harness.guest_image import GuestImage
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.harness.qemu import GuestResult, run_guest
from dataplane.guest.harness.workloads import check_image, parse_md5

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(
        backend_kind() == "qsd", reason="resize is our management command (qsd has its own)"
    ),
]

STAGES = 2
WAIT_S = 120  # how long the guest waits for each resize

GUEST_SCRIPT = f"""
DEV=/dev/vda
S=/sys/block/vda/size
for stage in $(seq 1 {STAGES}); do
    old=$(cat $S)
    echo "DP-RESIZE-READY $stage $old"
    i=0
    while [ "$(cat $S)" = "$old" ]; do
        i=$((i + 1))
        [ $i -gt {WAIT_S} ] && {{ echo "DP-FAIL $DEV stage $stage: size stayed $old"; exit 1; }}
        sleep 1
    done
    new=$(cat $S)
    echo "DP-RESIZED $stage $old $new"
    off=$((old * 512))
    dd if=/dev/urandom of=/tmp/w bs=65536 count=1 status=none
    dd if=/tmp/w of=$DEV bs=65536 seek=$off oflag=direct,seek_bytes conv=notrunc,fsync \\
        status=none || {{ echo "DP-FAIL $DEV write past the old end at $off"; exit 1; }}
    dd if=$DEV of=/tmp/r bs=65536 skip=$off count=1 iflag=direct,skip_bytes status=none \\
        || {{ echo "DP-FAIL $DEV read past the old end at $off"; exit 1; }}
    cmp -s /tmp/w /tmp/r || {{ echo "DP-FAIL $DEV mismatch past the old end at $off"; exit 1; }}
    echo "DP-MD5 $off 65536 $(md5sum /tmp/r | cut -d' ' -f1) $DEV"
done
exit 0
"""


def _wait_for(log: Path, needle: str, runner: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and runner.is_alive():
        if log.exists() and needle in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    pytest.fail(f"the guest never printed {needle!r}")


@pytest.mark.parametrize("datapath", ["native", "python"])
def test_guest_sees_the_disk_grow_without_a_reboot(
    guest_image: GuestImage, backend: BackendFactory, tmp_path: Path, datapath: str
) -> None:
    image = make_pattern_image(tmp_path / "disk.img")
    mgmt_dir = short_socket_dir()
    mgmt = mgmt_dir / "m.sock"
    b = backend(image, aio="io_uring", extra_args=("--mgmt", str(mgmt), "--datapath", datapath))
    console = tmp_path / "console.log"
    results: list[GuestResult | BaseException] = []

    def boot() -> None:
        try:
            results.append(
                run_guest(
                    GUEST_SCRIPT,
                    [b.socket],
                    image=guest_image,
                    timeout=GUEST_TIMEOUT,
                    log_path=console,
                    abort_check=watch(b),
                )  # fmt: skip
            )
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            results.append(e)

    runner = threading.Thread(target=boot, daemon=True)
    runner.start()
    sizes = [IMAGE_SIZE, 2 * IMAGE_SIZE, 3 * IMAGE_SIZE]
    _wait_for(console, f"DP-RESIZE-READY 1 {IMAGE_SIZE // 512}", runner, GUEST_TIMEOUT)
    os.truncate(image, sizes[1])  # the operator grows the file; resize re-reads it
    told = run_cli("resize", str(mgmt), "vblk0")
    assert told.returncode == 0, told.stderr
    assert f"vblk0: {sizes[1]} bytes; the frontend was told" in told.stdout
    _wait_for(console, f"DP-RESIZE-READY 2 {sizes[1] // 512}", runner, WAIT_S + 60)
    told = run_cli("resize", str(mgmt), "vblk0", str(sizes[2]))  # resize grows it
    assert told.returncode == 0, told.stderr
    assert f"vblk0: {sizes[2]} bytes; the frontend was told" in told.stdout
    runner.join(GUEST_TIMEOUT)
    shutil.rmtree(mgmt_dir, ignore_errors=True)
    (result,) = results
    if isinstance(result, BaseException):
        raise result
    assert result.rc == 0, "\n".join(result.lines("DP-FAIL")) + "\n" + result.tail()
    resized = [line.split()[1:] for line in result.lines("DP-RESIZED")]
    assert resized == [[str(n), str(sizes[n - 1] // 512), str(sizes[n] // 512)] for n in (1, 2)], (
        resized
    )
    assert os.path.getsize(image) == sizes[2]
    records = parse_md5(result.output, "/dev/vda")
    assert [r.offset for r in records] == sizes[:2]  # I/O just past each old end
    assert not check_image(image, result.output, "/dev/vda")  # the host reads what it wrote
