"""The device's lifetime and the commands a session hands its threads (device/blkdev.py)."""

from __future__ import annotations

import concurrent.futures
import logging

import pytest

from dataplane.device.blkdev import BlkDevice, all_done, default_serial
from dataplane.serve.device_options import DeviceOptions

Future = concurrent.futures.Future
LOG = logging.getLogger("dataplane.test")
WAIT_S = 60


def test_all_done_waits_for_every_future_and_gives_the_first_failure():
    a, b, c = Future(), Future(), Future()
    out = all_done([a, b, c])
    b.set_exception(RuntimeError("b failed"))
    assert not out.done()  # a and c still run: what they guard must stay until they end
    a.set_result(1)
    c.set_exception(OSError("c failed"))
    with pytest.raises(RuntimeError, match="b failed"):
        out.result(WAIT_S)


def test_all_done_gives_the_results_in_order():
    a, b = Future(), Future()
    out = all_done([a, b])
    b.set_result("b")
    a.set_result("a")
    assert out.result(WAIT_S) == ["a", "b"]
    assert all_done([]).result(0) == []


def test_all_done_cannot_be_cancelled():
    a = Future()
    out = all_done([a])
    assert not out.cancel()  # a caller that gives up leaves the command to finish
    a.set_result(None)
    assert out.result(WAIT_S) == [None]


@pytest.fixture
def device(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    opts = DeviceOptions(image, aio="threads", num_queues=2, iothreads=2)
    dev = BlkDevice("vb", opts, LOG)
    yield dev
    dev.close()


def test_a_command_to_every_thread_skips_a_dead_one(device):
    """The fan-out (set_writeback, set_memory, set_dirty_log, resize) goes to the live
    threads: a dead one released everything itself, and its device has failed."""
    dead = device.threads[1]
    with pytest.raises(RuntimeError):
        dead.kill(RuntimeError("killed by the test")).result(WAIT_S)
    dead.join(WAIT_S)
    assert device.failed is not None and "killed by the test" in device.failed
    assert device.ring_alive(0) and not device.ring_alive(1)
    assert device.set_writeback(True).result(WAIT_S) == [None]
    assert device.set_memory(None).result(WAIT_S) == [None]
    with pytest.raises(RuntimeError, match="died"):
        device.stop_ring(1).result(WAIT_S)


def test_the_default_serial_is_the_image_name(device):
    assert device.disk.serial == b"disk.img" == default_serial(device.opts.image).encode()
