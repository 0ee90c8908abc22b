"""Memory hotplug with a real guest: small base RAM and 12 memory-backend-memfd pc-dimms,
so that the guest's I/O buffers land in DIMM memory (the kernel takes user pages from
ZONE_NORMAL, which only the DIMMs populate above 4 GiB); one more DIMM is hot-added
through QMP while the guest does I/O.  The backend serves every region through
CONFIGURE_MEM_SLOTS (more than SET_MEM_TABLE's 8), the data verifies in the guest and
on the host, and the request narrative (--trace-requests) shows data buffers in DIMMs.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from guest_support import (
    GUEST_TIMEOUT,
    guest_image_fixture,  # noqa: F401  (the "guest_image" fixture)
    make_pattern_image,
    start_dataplane,
)

from dataplane.guest.harness.guest_image import GuestImage
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.harness.qemu import GuestResult, run_guest
from dataplane.guest.harness.qmp import Qmp
from dataplane.guest.harness.workloads import check_image

pytestmark = pytest.mark.guest

DIMMS = 12
DIMM_MIB = 128  # the memory block size of x86-64 Linux: a smaller DIMM cannot be added
BASE_MIB = 128
DIMM_BASE = 1 << 32  # pc: device memory starts at 4 GiB (base RAM is below it)
CHUNK = 128 * 1024
CHUNKS = 32
AFTER = 16  # write-read-verify rounds after the hot-added memory came online
ONLINE_WITHIN_S = 200  # guest seconds: a hang guard (GUEST_TIMEOUT is 300 by default)

SCRIPT = f"""
DEV=/dev/vda
T=/tmp/hp
mkdir -p $T
memtotal() {{ sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo; }}
online() {{ cat /sys/devices/system/memory/memory*/online | grep -c 1; }}
echo "DP-INFO memory total_kb=$(memtotal) blocks_online=$(online)"
m0=$(memtotal)
t0=$(date +%s)
echo DP-IO-START
i=0; after=-1; bad=0
while :; do
    k=$((i % {CHUNKS}))
    dd if=/dev/urandom of=$T/w bs={CHUNK} count=1 status=none
    dd if=$T/w of=$DEV bs={CHUNK} seek=$k oflag=direct conv=notrunc,fsync status=none \\
        || {{ echo "DP-FAIL write $i"; bad=1; }}
    dd if=$DEV of=$T/r bs={CHUNK} skip=$k count=1 iflag=direct status=none \\
        || {{ echo "DP-FAIL read $i"; bad=1; }}
    cmp -s $T/w $T/r || {{ echo "DP-FAIL mismatch $i"; bad=1; }}
    mv $T/w $T/c$k
    i=$((i + 1))
    if [ $after -lt 0 ] && [ "$(memtotal)" -gt "$m0" ]; then
        echo "DP-HOTPLUGGED round=$i total_kb=$(memtotal) blocks_online=$(online)"
        after=0
    fi
    [ $after -ge 0 ] && after=$((after + 1))
    [ $after -ge {AFTER} ] && break
    # A bound on time, not on rounds: the host adds the DIMM whenever it gets the CPU.
    [ $(($(date +%s) - t0)) -ge {ONLINE_WITHIN_S} ] \\
        && {{ echo "DP-FAIL no hot-added memory came online"; bad=1; break; }}
done
for k in $(seq 0 {CHUNKS - 1}); do
    [ -f $T/c$k ] && echo "DP-MD5 $((k * {CHUNK})) {CHUNK} $(md5sum < $T/c$k | cut -d' ' -f1) $DEV"
done
[ $bad = 0 ] && echo "DP-OK $DEV"
exit $bad
"""


def dimm_args(qmp: Path) -> list[str]:
    args = ["-qmp", f"unix:{qmp},server=on,wait=off"]
    for i in range(DIMMS):
        args += [
            "-object", f"memory-backend-memfd,id=d{i},size={DIMM_MIB}M,share=on",
            "-device", f"pc-dimm,id=dimm{i},memdev=d{i}",
        ]  # fmt: skip
    return args


def qmp_hot_add(path: Path) -> None:
    """object-add a memfd backend and device_add a pc-dimm on it, through QMP."""
    with Qmp(path, timeout=30) as qmp:
        qmp.execute(
            "object-add",
            **{"qom-type": "memory-backend-memfd", "id": "hot", "size": DIMM_MIB << 20,
               "share": True},
        )  # fmt: skip
        qmp.execute("device_add", driver="pc-dimm", id="dimmhot", memdev="hot")


def data_gpas(log: str) -> list[int]:
    """Guest addresses of the data buffers the narrative shows (not headers or status)."""
    return [
        int(gpa, 16)
        for gpa, length in re.findall(r"gpa (0x[0-9a-f]+) len (\d+)", log)
        if int(length) >= 512
    ]


def regions(log: str) -> list[tuple[int, int]]:
    found = re.findall(r"memory region added: guest (0x[0-9a-f]+)-(0x[0-9a-f]+)", log)
    return [(int(a, 16), int(b, 16)) for a, b in found]


@pytest.mark.parametrize("datapath", ["native", "python"])
def test_io_in_dimm_memory_and_a_dimm_hot_added_while_it_runs(
    datapath: str, guest_image: GuestImage, tmp_path: Path
) -> None:
    image = make_pattern_image(tmp_path / "disk.img", 8 << 20)
    d = short_socket_dir()
    b = start_dataplane(
        d / "vub.sock", image, log_path=tmp_path / "backend.log",
        extra_args=("--datapath", datapath, "--trace-requests", "100000"),
    )  # fmt: skip
    out: list = []
    console = tmp_path / "console.log"

    def guest() -> None:
        try:
            out.append(run_guest(
                SCRIPT, [d / "vub.sock"], image=guest_image, timeout=GUEST_TIMEOUT,
                log_path=console, mem_mib=BASE_MIB, mem_opts=f"slots={DIMMS + 4},maxmem=2G",
                extra_args=dimm_args(d / "qmp.sock"), append="memhp_default_state=online",
            ))  # fmt: skip
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=guest, daemon=True)
    t.start()
    try:
        while t.is_alive() and not (console.exists() and "DP-IO-START" in console.read_text()):
            time.sleep(0.2)
        added_at_start = len(regions(b.log_text()))
        time.sleep(2)  # some I/O first
        qmp_hot_add(d / "qmp.sock")
        t.join(GUEST_TIMEOUT)
    finally:
        assert b.stop() == 0, b.log_text()
    assert not t.is_alive(), "the guest hung"
    if isinstance(out[0], BaseException):
        raise out[0]
    result: GuestResult = out[0]
    log = b.log_text()
    assert result.rc == 0, "\n".join(result.lines("DP-FAIL")) + "\n" + result.tail()
    assert "DP-HOTPLUGGED" in result.output and "DP-OK /dev/vda" in result.output
    assert not check_image(image, result.output, "/dev/vda")
    mapped = regions(log)
    dimms = [r for r in mapped if r[0] >= DIMM_BASE]
    assert added_at_start > 8, "more regions than SET_MEM_TABLE carries, through ADD_MEM_REG"
    assert len(dimms) == DIMMS + 1 and len(mapped) == added_at_start + 1, mapped
    gpas = data_gpas(log)
    in_dimms = [g for g in gpas if any(a <= g <= z for a, z in dimms)]
    in_hot = [g for g in gpas if dimms[-1][0] <= g <= dimms[-1][1]]
    print(f"{len(mapped)} regions; {len(in_dimms)} of {len(gpas)} data buffers in DIMMs, "
          f"{len(in_hot)} in the hot-added one; " + " ".join(result.lines("DP-INFO")))  # fmt: skip
    assert len(in_dimms) > len(gpas) // 2, "the guest's I/O buffers were not in DIMM memory"
