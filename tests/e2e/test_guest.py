"""End-to-end: boot a real Linux guest (QEMU, TCG) on the backend and check the image.

Each test runs a busybox workload from dataplane.guest.harness.workloads inside the guest, which
writes, reads back, flushes, discards and write-zeroes /dev/vda (and /dev/vdb) with O_DIRECT, checks
on the host that the image file holds what the guest reported. Set DATAPLANE_GUEST_BACKEND=qsd to
run them against qemu-storage-daemon.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guest_support import (
    AIO_ENGINES,
    GUEST_TIMEOUT,
    IMAGE_SIZE,
    BackendFactory,
    assert_guest_ok,
    backend_fixture,  # noqa: F401  (the "backend" fixture)
    guest_image_fixture,  # noqa: F401  (the "guest_image" fixture)
    make_pattern_image,
    qemu_or_skip,
    watch,
)

from dataplane.guest.harness.guest_image import GuestImage
from dataplane.guest.harness.qemu import QEMU_VERSIONS, run_guest
from dataplane.guest.harness.workloads import (
    REGION_SIZE,
    check_image,
    combine_scripts,
    parse_irqs,
    parse_md5,
    verify_script,
)

pytestmark = pytest.mark.guest


@pytest.mark.parametrize(
    "aio,qemu",
    [(aio, QEMU_VERSIONS[0]) for aio in AIO_ENGINES] + [("io_uring", QEMU_VERSIONS[1])],
)
def test_guest_verify(
    aio: str,
    qemu: str,
    guest_image: GuestImage,
    backend: BackendFactory,
    tmp_path: Path,
) -> None:
    image = make_pattern_image(tmp_path / "disk.img")
    backends = [backend(image, aio=aio, num_queues=1)]
    result = run_guest(
        verify_script("/dev/vda"),
        [backends[0].socket],
        image=guest_image,
        timeout=GUEST_TIMEOUT,
        log_path=tmp_path / "console.log",
        abort_check=watch(*backends),
        qemu=qemu_or_skip(qemu),
    )
    assert_guest_ok(result, {"/dev/vda": image}, {"/dev/vda": IMAGE_SIZE})
    # The host-side check is not vacuous: one flipped byte in a reported range is caught.
    record = parse_md5(result.output, "/dev/vda")[0]
    with image.open("r+b") as f:
        f.seek(record.offset)
        byte = f.read(1)
        f.seek(record.offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert check_image(image, result.output, "/dev/vda")


def test_guest_multiqueue(
    guest_image: GuestImage,
    backend: BackendFactory,
    tmp_path: Path,
) -> None:
    """Two vCPUs, two queues: writers pinned on both CPUs land on both virtqueues."""
    image = make_pattern_image(tmp_path / "disk.img")
    backends = [backend(image, aio="io_uring", num_queues=2)]
    script = combine_scripts(
        verify_script("/dev/vda", 0, writers=8, cpus=2),
        verify_script("/dev/vda", REGION_SIZE, writers=8, cpus=2),
    )
    result = run_guest(
        script,
        [backends[0].socket],
        smp=2,
        num_queues=2,
        image=guest_image,
        timeout=GUEST_TIMEOUT,
        log_path=tmp_path / "console.log",
        abort_check=watch(*backends),
    )
    assert_guest_ok(result, {"/dev/vda": image}, {"/dev/vda": IMAGE_SIZE})
    assert any("queues=2" in line for line in result.lines("DP-INFO")), result.lines("DP-INFO")
    irqs = parse_irqs(result.output, "/dev/vda")
    assert sorted(irqs) == [0, 1] and all(irqs.values()), f"per-queue interrupts: {irqs}"


def test_guest_two_disks(
    guest_image: GuestImage,
    backend: BackendFactory,
    tmp_path: Path,
) -> None:
    """Two devices (two backends) exercised concurrently: /dev/vda and /dev/vdb."""
    images = {
        "/dev/vda": make_pattern_image(tmp_path / "a.img"),
        "/dev/vdb": make_pattern_image(tmp_path / "b.img"),
    }
    backends = [backend(img, aio="io_uring") for img in images.values()]
    script = combine_scripts(
        verify_script("/dev/vda", 0), verify_script("/dev/vdb", 2 * REGION_SIZE)
    )
    result = run_guest(
        script,
        [b.socket for b in backends],
        image=guest_image,
        timeout=GUEST_TIMEOUT,
        log_path=tmp_path / "console.log",
        abort_check=watch(*backends),
    )
    assert_guest_ok(result, images, dict.fromkeys(images, IMAGE_SIZE))
