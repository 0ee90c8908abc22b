"""End-to-end: a real guest's two queues served by two dataplane threads of one device."""

from __future__ import annotations

import shutil
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

from dataplane.cli.live_stats import queue_requests, thread_requests
from dataplane.guest.harness.guest_image import GuestImage
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.harness.qemu import run_guest
from dataplane.guest.harness.workloads import (
    REGION_SIZE,
    combine_scripts,
    parse_irqs,
    verify_script,
)
from dataplane.serve.mgmt_client import MgmtClient

pytestmark = pytest.mark.guest


def test_guest_two_queues_on_two_threads(
    guest_image: GuestImage,
    backend: BackendFactory,
    tmp_path: Path,
) -> None:
    """2 vCPUs, num-queues=2, iothreads=2: both queues carry I/O, each on its own thread."""
    if backend_kind() != "dataplane":
        pytest.skip("iothreads and the management socket are dataplane's")
    mgmt_dir = short_socket_dir()
    mgmt = mgmt_dir / "m.sock"
    try:
        image = make_pattern_image(tmp_path / "disk.img")
        b = backend(image, num_queues=2, extra_args=("--iothreads", "2", "--mgmt", str(mgmt)))
        script = combine_scripts(
            verify_script("/dev/vda", 0, writers=8, cpus=2),
            verify_script("/dev/vda", REGION_SIZE, writers=8, cpus=2),
        )
        result = run_guest(
            script,
            [b.socket],
            smp=2,
            num_queues=2,
            image=guest_image,
            timeout=GUEST_TIMEOUT,
            log_path=tmp_path / "console.log",
            abort_check=watch(b),
        )
        assert_guest_ok(result, {"/dev/vda": image}, {"/dev/vda": IMAGE_SIZE})
        irqs = parse_irqs(result.output, "/dev/vda")
        assert sorted(irqs) == [0, 1] and all(irqs.values()), f"per-queue interrupts: {irqs}"
        with MgmtClient(mgmt) as m:
            info = m.call("devices")["devices"][0]
            stats = m.call("stats")["devices"]["vblk0"]
        print("stats:", stats)
        assert [(t["name"], t["queues"]) for t in info["threads"]] == [
            ("dp/vblk0/0", [0]),
            ("dp/vblk0/1", [1]),
        ]
        per_queue = queue_requests(stats)
        if per_queue:  # BlkDevice.stats() with per-queue counters
            assert sorted(per_queue) == [0, 1] and all(per_queue.values()), per_queue
        # Each thread's own loop counted requests: queue i ran on thread i.
        per_thread = thread_requests(stats)
        assert per_thread and all(per_thread.values()), per_thread
    finally:
        shutil.rmtree(mgmt_dir, ignore_errors=True)
