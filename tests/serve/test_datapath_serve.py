"""``dataplane serve --datapath {native,python}`` and ``--poll-us`` over a real socket."""

from __future__ import annotations

import os

import pytest
from guest_support import start_dataplane

from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.spec.blk import CONFIG_WRITEBACK_OFFSET

SECTORS = 2048


@pytest.mark.parametrize(
    "datapath,extra",
    [("native", ()), ("native", ("--poll-us", "50")), ("python", ())],
    ids=["native", "native-poll", "python"],
)
@pytest.mark.parametrize("aio", ["io_uring", "native", "threads"])
def test_serve_reads_and_writes_on_each_datapath(tmp_path, datapath, extra, aio):
    image = tmp_path / "disk.img"
    original = os.urandom(SECTORS * 512)
    image.write_bytes(original)
    sock_dir = short_socket_dir()
    b = start_dataplane(
        sock_dir / "s.sock", image, aio=aio, cache="writeback", log_path=tmp_path / "log",
        extra_args=("--datapath", datapath, *extra),
    )  # fmt: skip
    try:
        with BlkDriver(b.socket, queue_size=64) as drv:
            payload = os.urandom(8192)
            assert drv.write(8, payload).status == 0
            got = drv.read(8, 8192)
            assert (got.status, got.data) == (0, payload)
            drv.fe.set_config(CONFIG_WRITEBACK_OFFSET, bytes([0]))  # write-through from here
            assert drv.write(100, payload[:512]).status == 0
            assert drv.flush().status == 0
            assert drv.discard(200, 8).status == 0
            assert drv.get_id().data.rstrip(b"\0") == b"disk.img"
    finally:
        assert b.stop() == 0, b.log_text()
        sock_dir.rmdir()
    log = b.log_text()
    assert f"datapath={datapath}" in log
    if datapath == "native":
        assert "native datapath:" in log  # the loop's counters, logged at exit
    img = image.read_bytes()
    assert img[8 * 512 : 8 * 512 + 8192] == payload
    assert img[100 * 512 : 101 * 512] == payload[:512]
    assert img[200 * 512 : 208 * 512] == bytes(4096)
    assert img[: 8 * 512] == original[: 8 * 512]
