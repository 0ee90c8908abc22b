"""Shell workloads for the test guest, and the host-side checks of what they report.

The scripts run under busybox ``sh`` inside the guest built by ``scripts/build-guest.sh``
(see :mod:`dataplane.guest.harness.qemu`). They do O_DIRECT I/O on a virtio-blk disk, verify it
inside the guest, and print machine-readable lines on the console so that the host can check
the image file:

``DP-MD5 <offset> <length> <md5> <device>``
    the image bytes ``[offset, offset + length)`` must have this md5 (written data, or data
    that was never written and must still hold the image's original contents);
``DP-ZERO <offset> <length> <device>``
    the range was write-zeroed (``blkdiscard -z``) and must read as zeros on the host;
``DP-INFO <device> key=value ...``
    what the guest kernel sees (queues, discard and write-zeroes limits, cache mode);
``DP-IRQ <device> <virtioN-req.Q> <count>``
    interrupts taken so far for each virtqueue of the device (one MSI-X vector per queue);
``DP-FAIL <what>``
    an in-guest mismatch or failed command (the script then exits nonzero);
``DP-SKIP <what>``
    a step the device does not support (discard on a device without VIRTIO_BLK_F_DISCARD).

Everything stays small (a few MiB per region) because TCG is slow.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "REGION_SIZE",
    "Md5Record",
    "ZeroRecord",
    "check_image",
    "combine_scripts",
    "parse_irqs",
    "parse_md5",
    "parse_zero",
    "verify_script",
]

KiB = 1024
MiB = 1024 * KiB

REGION_SIZE = 8 * MiB
"""Bytes that one :func:`verify_script` touches, from ``base`` (regions must not overlap)."""

# (name, offset within the region, length, dd block size). Offsets are sector (512) aligned,
# some deliberately not page aligned.
_WRITES: tuple[tuple[str, int, int, int], ...] = (
    ("page", 0, 4 * KiB, 4 * KiB),
    ("sectors", 64 * KiB + 512, 1536, 512),
    ("medium", 128 * KiB, 64 * KiB, 64 * KiB),
    ("multi", 256 * KiB + 3584, 200 * KiB, 8 * KiB),
)
_BIG_OFF, _BIG_LEN, _BIG_BS = 1 * MiB, 1 * MiB, 128 * KiB  # written with conv=fsync (a FLUSH)
_CONC_OFF = 2 * MiB  # concurrent writers: [2 MiB, 2 MiB + writers * writer_bytes) <= 4 MiB
_UNTOUCHED_OFF, _UNTOUCHED_LEN = 4 * MiB + 512, 96 * KiB  # never written: original contents
_ZERO_OFF, _ZERO_SPAN = 5 * MiB, 512 * KiB  # written, then [+64 KiB, +320 KiB) write-zeroed
_ZERO_HOLE_OFF, _ZERO_HOLE_LEN = 64 * KiB, 256 * KiB
_DISCARD_OFF, _DISCARD_SPAN = 6 * MiB, 512 * KiB  # written, then first 256 KiB discarded
_DISCARD_LEN = 256 * KiB


def _check_params(device: str, base: int, writers: int, writer_bytes: int) -> None:
    if not re.fullmatch(r"/dev/[A-Za-z0-9_]+", device):
        raise ValueError(f"bad device path {device!r}")
    if base < 0 or base % MiB:
        raise ValueError(f"base must be a non-negative multiple of 1 MiB, got {base}")
    if writers < 1 or writer_bytes < 4 * KiB or writer_bytes % (4 * KiB):
        raise ValueError("need writers >= 1 and writer_bytes a positive multiple of 4 KiB")
    if writers * writer_bytes > _UNTOUCHED_OFF - _CONC_OFF:
        raise ValueError(
            f"concurrent writers need {writers * writer_bytes} bytes; at most "
            f"{_UNTOUCHED_OFF - _CONC_OFF} fit in the region"
        )


def verify_script(
    device: str = "/dev/vda",
    base: int = 0,
    *,
    writers: int = 4,
    writer_bytes: int = 128 * KiB,
    cpus: int | None = None,
    discard: bool = True,
    write_zeroes: bool = True,
    require_discard: bool = False,
) -> str:
    """A busybox ``sh`` script that exercises ``device`` in ``[base, base + REGION_SIZE)``.

    Several of these may run at once (see :func:`combine_scripts`) on disjoint regions of one
    device or on different devices (``blkdiscard`` runs with ``-f``, no O_EXCL, for that).

    Steps: single writes of several sizes and alignments (read back with O_DIRECT and compared);
    a 1 MiB write in 128 KiB blocks with ``conv=fsync`` (so a FLUSH); ``writers`` background
    ``dd`` writers on disjoint ``writer_bytes`` ranges in 4 KiB blocks, pinned round-robin on
    ``cpus`` CPUs with ``taskset`` when given (to spread the requests over the queues); a read
    of a never-written range; ``blkdiscard -z`` (write zeroes) inside a written range; a discard
    (``blkdiscard``) when the device supports it; ``sync``. It prints ``DP-MD5``/``DP-ZERO``
    lines for the host (see the module docstring) and exits nonzero on any mismatch.
    """
    _check_params(device, base, writers, writer_bytes)
    if cpus is not None and cpus < 1:
        raise ValueError("cpus must be >= 1")
    name = device.rsplit("/", 1)[1]
    tag = f"{name}-{base}"
    lines = [
        f"# dataplane guest workload: verify {device} [{base}, {base + REGION_SIZE})",
        f"DEV={device}",
        f"BASE={base}",
        f"T=/tmp/dp-{tag}",
        'mkdir -p "$T"',
        "bad=0",
        'fail() { echo "DP-FAIL $DEV $*"; bad=1; }',
        "md5() { md5sum \"$1\" | cut -d' ' -f1; }",
        "# rnd FILE LEN: LEN random bytes",
        'rnd() { dd if=/dev/urandom of="$1" bs="$2" count=1 iflag=fullblock status=none; }',
        "# put FILE OFF BS [CONV]: write FILE at byte OFF of $DEV with O_DIRECT",
        'put() { dd if="$1" of="$DEV" bs="$3" seek="$2" oflag=direct,seek_bytes '
        "conv=notrunc${4:+,$4} status=none; }",
        "# get FILE OFF LEN: read LEN bytes at byte OFF of $DEV with O_DIRECT",
        'get() { dd if="$DEV" of="$1" bs=65536 skip="$2" count="$3" '
        "iflag=direct,skip_bytes,count_bytes,fullblock status=none; }",
        "# check NAME OFF LEN: read back and compare with $T/NAME.w",
        "check() {",
        '    get "$T/$1.r" "$2" "$3" || { fail "read $1 at $2"; return 1; }',
        '    cmp -s "$T/$1.w" "$T/$1.r" || { fail "mismatch $1 at $2 len $3"; return 1; }',
        "}",
        "# verify NAME OFF LEN: check, then report the md5 (for ranges that stay as they are)",
        "verify() {",
        '    check "$@" && echo "DP-MD5 $2 $3 $(md5 "$T/$1.r") $DEV"',
        '    rm -f "$T/$1.r"',
        "}",
        '[ -b "$DEV" ] || { echo "DP-FAIL $DEV missing"; exit 2; }',
        f"q=/sys/block/{name}",
        'echo "DP-INFO $DEV size=$(blockdev --getsize64 $DEV) queues=$(ls $q/mq | wc -l)'
        " discard_max=$(cat $q/queue/discard_max_bytes)"
        " write_zeroes_max=$(cat $q/queue/write_zeroes_max_bytes)"
        ' cache=$(cat $q/queue/write_cache | tr " " _)"',
        "",
        "# 1. single writes of several sizes and alignments",
    ]
    for wname, off, length, bs in _WRITES:
        lines += [
            f'rnd "$T/{wname}.w" {length}',
            f'put "$T/{wname}.w" $((BASE + {off})) {bs} || fail "write {wname}"',
            f"verify {wname} $((BASE + {off})) {length}",
        ]
    lines += [
        "",
        "# 2. a larger write, then fsync (a FLUSH request)",
        f'rnd "$T/big.w" {_BIG_LEN}',
        f'put "$T/big.w" $((BASE + {_BIG_OFF})) {_BIG_BS} fsync || fail "write+fsync big"',
        f"verify big $((BASE + {_BIG_OFF})) {_BIG_LEN}",
        "",
        f"# 3. {writers} concurrent writers on disjoint ranges",
        "pids=",
    ]
    for i in range(writers):
        lines.append(f'rnd "$T/c{i}.w" {writer_bytes}')
    for i in range(writers):
        pin = f"taskset -c {i % cpus} " if cpus else ""
        off = _CONC_OFF + i * writer_bytes
        lines.append(
            f'{pin}dd if="$T/c{i}.w" of="$DEV" bs=4096 seek=$((BASE + {off}))'
            " oflag=direct,seek_bytes conv=notrunc status=none &"
        )
        lines.append('pids="$pids $!"')
    lines += [
        'for p in $pids; do wait "$p" || fail "concurrent writer (pid $p)"; done',
    ]
    for i in range(writers):
        lines.append(f"verify c{i} $((BASE + {_CONC_OFF + i * writer_bytes})) {writer_bytes}")
    lines += [
        "",
        "# 4. a range never written keeps the image's original contents (checked on the host)",
        f'get "$T/untouched.r" $((BASE + {_UNTOUCHED_OFF})) {_UNTOUCHED_LEN} '
        '|| fail "read untouched"',
        f'echo "DP-MD5 $((BASE + {_UNTOUCHED_OFF})) {_UNTOUCHED_LEN} $(md5 "$T/untouched.r") $DEV"',
        'rm -f "$T/untouched.r"',
    ]
    if write_zeroes:
        zoff = f"$((BASE + {_ZERO_OFF}))"
        hole = f"$((BASE + {_ZERO_OFF + _ZERO_HOLE_OFF}))"
        lines += [
            "",
            "# 5. write zeroes (blkdiscard -z) inside a written range",
            f'rnd "$T/zero.w" {_ZERO_SPAN}',
            f'put "$T/zero.w" {zoff} 65536 || fail "write zero span"',
            f"check zero {zoff} {_ZERO_SPAN}",
            f'if /usr/sbin/blkdiscard -f -z -o {hole} -l {_ZERO_HOLE_LEN} "$DEV"; then',
            f'    dd if=/dev/zero of="$T/zeros" bs={_ZERO_HOLE_LEN} count=1 status=none',
            f'    dd if=/dev/zero of="$T/zero.w" bs=65536 seek={_ZERO_HOLE_OFF // 65536} '
            f"count={_ZERO_HOLE_LEN // 65536} conv=notrunc status=none",
            f"    verify zero {zoff} {_ZERO_SPAN}",
            f'    get "$T/hole.r" {hole} {_ZERO_HOLE_LEN} || fail "read zeroed range"',
            '    if cmp -s "$T/zeros" "$T/hole.r"; then',
            f'        echo "DP-ZERO {hole} {_ZERO_HOLE_LEN} $DEV"',
            "    else",
            f'        fail "write-zeroes range {hole} not zero"',
            "    fi",
            '    rm -f "$T/zeros" "$T/hole.r"',
            "else",
            '    fail "blkdiscard -z"',
            "fi",
        ]
    if discard:
        doff = f"$((BASE + {_DISCARD_OFF}))"
        keep = f"$((BASE + {_DISCARD_OFF + _DISCARD_LEN}))"
        unsupported = (
            'fail "discard unsupported by the device"'
            if require_discard
            else 'echo "DP-SKIP $DEV discard unsupported"'
        )
        lines += [
            "",
            "# 6. discard the first half of a written range; the second half must survive",
            'if [ "$(cat $q/queue/discard_max_bytes)" -gt 0 ]; then',
            f'    rnd "$T/disc.w" {_DISCARD_SPAN}',
            f'    put "$T/disc.w" {doff} 65536 || fail "write discard span"',
            f"    check disc {doff} {_DISCARD_SPAN}",
            f'    /usr/sbin/blkdiscard -f -o {doff} -l {_DISCARD_LEN} "$DEV" || fail "blkdiscard"',
            f'    dd if="$T/disc.w" of="$T/keep.w" bs={_DISCARD_LEN} skip=1 count=1 status=none',
            f"    verify keep {keep} {_DISCARD_SPAN - _DISCARD_LEN}",
            "else",
            f"    {unsupported}",
            "fi",
        ]
    lines += [
        "",
        "# 7. flush everything",
        "sync",
        'blockdev --flushbufs "$DEV" || fail "blockdev --flushbufs"',
        'rm -rf "$T"',
        "# interrupts per virtqueue so far (one MSI-X vector per queue): shows which queues ran",
        'vdev=$(basename "$(readlink $q/device)")',
        'awk -v d="$vdev" -v dev="$DEV" \'$NF ~ ("^" d "-req[.]") '
        "{ s = 0; for (i = 2; i < NF && $i ~ /^[0-9]+$/; i++) s += $i; "
        'print "DP-IRQ " dev " " $NF " " s }\' /proc/interrupts',
        'if [ "$bad" -eq 0 ]; then echo "DP-OK $DEV $BASE"; else echo "DP-BAD $DEV $BASE"; fi',
        'exit "$bad"',
        "",
    ]
    return "\n".join(lines)


def combine_scripts(*scripts: str) -> str:
    """One script that runs ``scripts`` concurrently and fails if any of them fails."""
    if not scripts:
        raise ValueError("combine_scripts needs at least one script")
    lines = ["# dataplane guest workload: scripts run concurrently", "rc=0"]
    for i, script in enumerate(scripts):
        eof = f"DP_PART_{i}_EOF"
        if eof in script:
            raise ValueError(f"script {i} contains the heredoc terminator {eof}")
        lines += [f"cat > /tmp/dp-part{i}.sh <<'{eof}'", script.rstrip("\n"), eof]
    for i in range(len(scripts)):
        lines += [f"sh /tmp/dp-part{i}.sh & p{i}=$!"]
    for i in range(len(scripts)):
        lines += [f'wait "$p{i}" || {{ echo "DP-FAIL part {i} exited $?"; rc=1; }}']
    lines += ['exit "$rc"', ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Md5Record:
    offset: int
    length: int
    md5: str
    device: str


@dataclass(frozen=True)
class ZeroRecord:
    offset: int
    length: int
    device: str


_MD5_RE = re.compile(r"DP-MD5 (\d+) (\d+) ([0-9a-f]{32})(?: (/dev/\w+))?")
_ZERO_RE = re.compile(r"DP-ZERO (\d+) (\d+)(?: (/dev/\w+))?")
_IRQ_RE = re.compile(r"DP-IRQ (/dev/\w+) virtio\d+-req\.(\d+) (\d+)")


def parse_md5(output: str, device: str | None = None) -> list[Md5Record]:
    """The ``DP-MD5`` records in console ``output`` (only ``device``'s, when given)."""
    records = [
        Md5Record(int(m[1]), int(m[2]), m[3], m[4] or "/dev/vda") for m in _MD5_RE.finditer(output)
    ]
    return [r for r in records if device is None or r.device == device]


def parse_zero(output: str, device: str | None = None) -> list[ZeroRecord]:
    """The ``DP-ZERO`` records in console ``output`` (only ``device``'s, when given)."""
    records = [
        ZeroRecord(int(m[1]), int(m[2]), m[3] or "/dev/vda") for m in _ZERO_RE.finditer(output)
    ]
    return [r for r in records if device is None or r.device == device]


def parse_irqs(output: str, device: str = "/dev/vda") -> dict[int, int]:
    """Queue index -> interrupt count from the last ``DP-IRQ`` lines for ``device``."""
    irqs: dict[int, int] = {}
    for m in _IRQ_RE.finditer(output):
        if m[1] == device:
            irqs[int(m[2])] = int(m[3])
    return irqs


def check_image(image: Path, output: str, device: str = "/dev/vda") -> list[str]:
    """Check the image file against the guest's ``DP-MD5``/``DP-ZERO`` lines for ``device``.

    Returns a list of problems (empty when everything matches). Having no records at all is a
    problem too, so a workload that printed nothing cannot pass.
    """
    problems: list[str] = []
    md5s = parse_md5(output, device)
    zeros = parse_zero(output, device)
    if not md5s:
        problems.append(f"no DP-MD5 lines for {device} in the guest output")
    size = Path(image).stat().st_size
    with open(image, "rb") as f:
        for r in md5s:
            if r.offset + r.length > size:
                problems.append(f"DP-MD5 {r.offset} {r.length}: past the image end ({size})")
                continue
            f.seek(r.offset)
            got = hashlib.md5(f.read(r.length)).hexdigest()
            if got != r.md5:
                problems.append(
                    f"{device} [{r.offset}, +{r.length}): image md5 {got}, guest saw {r.md5}"
                )
        for z in zeros:
            if z.offset + z.length > size:
                problems.append(f"DP-ZERO {z.offset} {z.length}: past the image end ({size})")
                continue
            f.seek(z.offset)
            data = f.read(z.length)
            if data.count(0) != z.length:
                first = next(i for i, b in enumerate(data) if b)
                problems.append(
                    f"{device} [{z.offset}, +{z.length}) should be zero; "
                    f"first nonzero byte at {z.offset + first}"
                )
    return problems
