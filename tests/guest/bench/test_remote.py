"""``dataplane bench`` on a remote disk: ours, qemu-storage-daemon and fio on the same export.

Each target runs verified I/O (ours and qsd; fio's own client runs unverified) against a
real qemu-nbd export and a real RBD image; nothing asserts a speed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from clitest import assert_usage_error, run_cli
from remote_servers import CEPH_PROGRAMS, NBD_PROGRAMS, missing, qemu_nbd
from remote_support import servers_fixture  # noqa: F401  (the "servers" fixture)

from dataplane.guest.bench.remote import fio_engine, qsd_blockdev

SIZE = 64 << 20
needs_tools = pytest.mark.skipif(
    not (shutil.which("qemu-storage-daemon") and shutil.which("fio")),
    reason="qemu-storage-daemon or fio not installed (scripts/install-deps.sh)",
)


def test_the_same_disk_for_qsd_and_fio(monkeypatch):
    unix = "nbd+unix:///disk?socket=/run/nbd.sock"
    assert qsd_blockdev(unix) == (
        "driver=nbd,node-name=f0,server.type=unix,server.path=/run/nbd.sock,export=disk"
    )
    assert qsd_blockdev("nbd://10.0.0.2/vol") == (
        "driver=nbd,node-name=f0,server.type=inet,server.host=10.0.0.2,server.port=10809,export=vol"
    )
    assert fio_engine(unix) == ["--ioengine=nbd", f"--uri={unix}"]
    monkeypatch.setenv("CEPH_CONF", "/etc/ceph/test.conf")
    assert qsd_blockdev("rbd:pool/ns/img@snap") == (
        "driver=rbd,node-name=f0,pool=pool,image=img,namespace=ns,snapshot=snap,"
        "conf=/etc/ceph/test.conf"
    )
    assert fio_engine("rbd:pool/img") == [
        "--ioengine=rbd", "--pool=pool", "--rbdname=img", "--clientname=admin", "--direct=1"
    ]  # fmt: skip


def run_bench(image: str, out: Path, env: dict[str, str] | None = None) -> dict:
    proc = run_cli(
        "bench", "--image", image, "--target", "ours", "--target", "qsd", "--target", "fio",
        "--rw", "randrw", "--iodepth", "8", "--ios", "2000", "--verify", "--repeat", "1",
        "--json", str(out), env=env, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(out.read_text())


@pytest.mark.skipif(bool(missing(NBD_PROGRAMS)), reason=str(missing(NBD_PROGRAMS)))
@needs_tools
def test_bench_an_nbd_export(tmp_path, servers):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(SIZE))
    nbd = servers(qemu_nbd(disk, tmp_path))
    doc = run_bench(nbd.uri, tmp_path / "r.json")
    assert [r["target"] for r in doc["results"]] == ["ours", "qsd", "fio"]
    for r in doc["results"]:
        assert r["ops"]["read"] > 0 and r["ops"]["write"] > 0, r
    assert "driver=nbd" in doc["description"] and "--ioengine=nbd" in doc["description"]


@pytest.mark.skipif(bool(missing(CEPH_PROGRAMS)), reason=str(missing(CEPH_PROGRAMS)))
@needs_tools
def test_bench_an_rbd_image(tmp_path, ceph_cluster):
    name = f"bench{os.getpid()}"
    ceph_cluster.rbd("create", "--size", f"{SIZE >> 20}M", f"rbd/{name}")
    env = {**os.environ, "CEPH_CONF": str(ceph_cluster.conf)}
    doc = run_bench(f"rbd:rbd/{name}", tmp_path / "r.json", env=env)
    assert [r["target"] for r in doc["results"]] == ["ours", "qsd", "fio"]
    assert "driver=rbd" in doc["description"] and "--ioengine=rbd" in doc["description"]


def test_a_remote_disk_that_cannot_be_opened(tmp_path):
    proc = run_cli(
        "bench", "--image", f"nbd+unix:///disk?socket={tmp_path}/none.sock", "--target", "ours"
    )
    assert_usage_error(proc, "cannot reach the remote disk", "Failed to connect")
