"""``resize`` on the management socket and ``dataplane resize``, without a guest: what it
grows, what it refuses, and what it says when no frontend can be told.

test_guest_resize.py has the guest's side (the new capacity seen without a reboot).
"""

from __future__ import annotations

import os
import shutil

import pytest
from clitest import assert_usage_error, run_cli
from guest_support import start_dataplane

from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.serve.mgmt_client import MgmtClient

MIB = 1 << 20


@pytest.fixture(params=["native", "python"])
def served(tmp_path, request):
    sock_dir = short_socket_dir()
    image = tmp_path / "disk.img"
    image.write_bytes(b"\xab" * MIB)
    b = start_dataplane(
        sock_dir / "a.sock", image, aio="threads", log_path=tmp_path / "serve.log",
        extra_args=("--mgmt", str(sock_dir / "m.sock"), "--datapath", request.param),
    )  # fmt: skip
    yield image, sock_dir / "m.sock"
    rc = b.stop()
    shutil.rmtree(sock_dir, ignore_errors=True)
    assert rc == 0, b.log_text()


def test_resize_grows_the_file_and_rereads_what_the_operator_grew(served):
    image, mgmt = served
    proc = run_cli("resize", str(mgmt), "vblk0", str(2 * MIB))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"vblk0: {2 * MIB} bytes; the frontend was not told: no frontend is connected "
        "(it reads the new size when it connects)"
    )
    assert os.path.getsize(image) == 2 * MIB and image.read_bytes()[:MIB] == b"\xab" * MIB
    os.truncate(image, 4 * MIB)
    with MgmtClient(mgmt) as c:
        dev = c.call("resize", name="vblk0")["device"]
        assert dev["size"] == 4 * MIB
        again = c.call("resize", name="vblk0")["device"]
        assert again["told"] == "the size did not change"
        (listed,) = c.call("devices")["devices"]
    assert listed["size"] == 4 * MIB


def test_resize_refuses_shrinking_and_bad_requests(served):
    image, mgmt = served
    m = str(mgmt)
    assert_usage_error(run_cli("resize", m, "vblk0", str(MIB // 2)), "shrinking", "refused")
    assert_usage_error(run_cli("resize", m, "vblk0", str(MIB + 100)), "multiple of 512")
    assert_usage_error(run_cli("resize", m, "nope"), "no device named 'nope'")
    assert_usage_error(run_cli("resize", m, "vblk0", "big"), "argument SIZE")
    with MgmtClient(mgmt) as c:
        resp = c.request("resize", name="vblk0", size="big")
        assert not resp["ok"] and "not a number of bytes" in resp["error"]
        resp = c.request("resize")
        assert not resp["ok"] and 'resize needs "name"' in resp["error"]
    assert os.path.getsize(image) == MIB


def test_a_connected_driver_reads_past_the_old_end_after_resize(served):
    """The threads' bounds grow with the disk, on both datapaths: a request past the old end
    that failed before the resize succeeds after it (this frontend sets up no backend
    channel, so it is not told, and says so)."""
    image, mgmt = served
    old_end = MIB // 512
    with BlkDriver(mgmt.parent / "a.sock") as d:
        assert d.read(old_end, 512).status == 1  # IOERR: past the end
        with MgmtClient(mgmt) as c:
            dev = c.call("resize", name="vblk0", size=2 * MIB)["device"]
        assert "no backend channel" in dev["told"]
        assert d.write(old_end, b"\x5a" * 512).status == 0
        assert d.read(old_end, 512).data == b"\x5a" * 512
        assert d.read(2 * old_end, 512).status == 1  # the new end holds
    assert image.read_bytes()[MIB : MIB + 512] == b"\x5a" * 512
