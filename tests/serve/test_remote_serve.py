"""``dataplane serve`` on remote disks: NBD exports (qemu-nbd, nbdkit) and RBD images (Ceph).

Real servers, a real ``dataplane serve`` process, and BlkDriver playing QEMU and the guest:
the device follows what the target offers, shows its kind, and a target that cannot be
opened is one clear line and exit status 2 at start, or an error reply from ``add-device``
that leaves the server serving.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from clitest import assert_usage_error, run_cli
from engine_support import pattern
from remote_servers import (
    CEPH_PROGRAMS,
    NBD_PROGRAMS,
    NbdServer,
    free_port,
    missing,
    nbdkit,
    qemu_nbd,
    read_export,
)
from remote_support import (
    listening_line,
    serve_fixture,  # noqa: F401  (the "serve" fixture)
    servers_fixture,  # noqa: F401  (the "servers" fixture)
)
from waits import wait_until

from dataplane.guest.virtio_blk import BlkDriver
from dataplane.serve.device_checks import MAX_POLL_US
from dataplane.serve.mgmt_client import MgmtClient
from dataplane.spec.blk import (
    CONFIG,
    VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_WRITE_ZEROES,
)

SIZE = 4 << 20
FEATURES = {
    "flush": VIRTIO_BLK_F_FLUSH,
    "wce": VIRTIO_BLK_F_CONFIG_WCE,
    "discard": VIRTIO_BLK_F_DISCARD,
    "write_zeroes": VIRTIO_BLK_F_WRITE_ZEROES,
    "ro": VIRTIO_BLK_F_RO,
}
needs_nbd = pytest.mark.skipif(bool(missing(NBD_PROGRAMS)), reason=str(missing(NBD_PROGRAMS)))
needs_ceph = pytest.mark.skipif(bool(missing(CEPH_PROGRAMS)), reason=str(missing(CEPH_PROGRAMS)))
_names = itertools.count()


@pytest.fixture
def disk_file(tmp_path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(pattern(SIZE, seed=5))
    return path


def offered(d: BlkDriver) -> set[str]:
    return {name for name, bit in FEATURES.items() if d.features >> bit & 1}


def eval_server(tmp_path: Path) -> NbdServer:
    """nbdkit's eval plugin: a 4 MiB export that can write, and cannot flush, trim or zero."""
    sock = tmp_path / "eval.sock"
    argv = [
        "nbdkit", "--foreground", "--exit-with-parent", "--unix", str(sock),
        "--filter=nozero", "eval", f"get_size=echo {SIZE}", "pread=head -c $3 /dev/zero",
        "can_write=exit 0", "pwrite=cat >/dev/null", "zeromode=none",
    ]  # fmt: skip
    return NbdServer(argv, tmp_path / "eval.log", export="", sock=sock, port=None)


# -- NBD ----------------------------------------------------------------------------------


@needs_nbd
@pytest.mark.parametrize(
    "server, features, blk_size",
    [
        ("qemu-nbd", {"flush", "wce", "discard", "write_zeroes"}, 512),
        ("qemu-nbd --read-only", {"flush", "wce", "ro"}, 512),
        ("nbdkit: no flush, trim or zero", set(), 512),
        ("nbdkit: 4 KiB blocks", {"flush", "wce", "discard", "write_zeroes"}, 4096),
    ],
)
def test_the_device_follows_what_the_export_offers(
    server, features, blk_size, disk_file, tmp_path, servers, serve
):
    if server.startswith("qemu-nbd"):
        nbd = qemu_nbd(disk_file, tmp_path, read_only="read-only" in server)
    elif "4 KiB" in server:
        policy = ["blocksize-minimum=4096", "blocksize-error-policy=error"]
        nbd = nbdkit(disk_file, tmp_path, filters=["blocksize-policy"], params=policy)
    else:
        nbd = eval_server(tmp_path)
    b = serve(servers(nbd).uri)
    with BlkDriver(b.socket) as d:
        assert offered(d) == features
        capacity, *_, got_blk_size = CONFIG.unpack(d.config)[:7]
        assert (capacity, got_blk_size) == (SIZE // 512, blk_size)
        if "ro" in features:
            assert d.write(0, bytes(4096)).status == 1  # IOERR
        assert d.read(8, 4096).status == 0


@needs_nbd
def test_an_export_is_served_and_shows_its_kind(disk_file, tmp_path, servers, serve):
    nbd = servers(qemu_nbd(disk_file, tmp_path))
    b = serve(nbd.uri, "--num-queues", "2", "--iothreads", "2", "--reconnect-s", "3")
    listening = listening_line(b)
    assert f": nbd {nbd.uri}, {SIZE // 512} sectors, 2 queue(s) on 2 thread(s)" in listening
    assert "aio=nbd" in listening and "cache=" not in listening
    with MgmtClient(b.socket.parent / "m.sock") as m:
        (dev,) = m.call("devices")["devices"]
        assert (dev["image-kind"], dev["engine"], dev["image"]) == ("nbd", "nbd", nbd.uri)
        assert dev["reconnect-s"] == 3 and len(dev["threads"]) == 2
        with BlkDriver(b.socket, num_queues=2) as d:
            one, two = pattern(8192, seed=11), pattern(4096, seed=12)
            assert d.write(16, one, queue=0).status == 0
            assert d.write(64, two, queue=1).status == 0
            assert d.read(16, 8192, queue=1).data == one
            assert d.flush().status == 0
            assert d.write_zeroes(64, 8).status == 0
            assert d.discard(128, 8).status == 0
            assert d.read(64, 4096, queue=0).data == bytes(4096)
        stats = m.call("stats")["devices"]["vblk0"]
        assert stats["image-kind"] == "nbd"
        assert 'image_kind="nbd"' in m.call("metrics")["text"]
    data = read_export(nbd.uri, tmp_path)
    assert data[16 * 512 : 16 * 512 + 8192] == one
    assert data[64 * 512 : 64 * 512 + 4096] == bytes(4096)
    assert data[:8192] == pattern(SIZE, seed=5)[:8192]  # untouched


@needs_nbd
def test_polling_a_remote_disk_is_off_unless_asked_and_then_warned(
    disk_file, tmp_path, servers, serve
):
    nbd = servers(qemu_nbd(disk_file, tmp_path))

    def read_some(b) -> None:
        with BlkDriver(b.socket) as d:
            for i in range(20):
                assert d.read(8 * i, 4096).data == pattern(SIZE, seed=5)[4096 * i : 4096 * (i + 1)]

    def polls(b) -> int:
        with MgmtClient(b.socket.parent / "m.sock") as m:
            (t,) = m.call("stats")["devices"]["vblk0"]["iothreads"]
        return t["loop"]["poll-hits"] + t["loop"]["poll-misses"]

    quiet = serve(nbd.uri)
    read_some(quiet)
    assert polls(quiet) == 0
    assert "poll-us" not in quiet.log_text()
    quiet.stop()
    # The window opens after a wait shorter than poll-us (QEMU's adaptive rule): the
    # largest poll-us makes any wait under a second open it, however busy the machine.
    polled = serve(nbd.uri, "--poll-us", str(MAX_POLL_US))
    warning = f"{nbd.uri}: poll-us={MAX_POLL_US} on a remote disk: polling does not see"
    assert warning in polled.log_text()
    wait_until(lambda: read_some(polled) or polls(polled) > 0, "the thread to poll")


@needs_nbd
def test_iothreads_need_an_export_with_multi_conn(disk_file, tmp_path, servers, sock_dir):
    nbd = servers(qemu_nbd(disk_file, tmp_path, extra=["--shared=1"]))  # no multi-conn
    proc = run_cli(
        "serve", "--socket", str(sock_dir / "s"), "--image", nbd.uri,
        "--num-queues", "2", "--iothreads", "2",
    )  # fmt: skip
    assert_usage_error(proc, f"{nbd.uri}: iothreads=2", "multi-conn", "use iothreads=1")
    assert not (sock_dir / "s").exists()


def bad_nbd_targets(tmp_path: Path, good: NbdServer) -> list[tuple[str, str]]:
    """(image=, what the error says) for each NBD target that cannot be opened."""
    return [
        (f"nbd+unix:///disk?socket={tmp_path}/none.sock", "cannot connect to the NBD server"),
        (f"nbd://127.0.0.1:{free_port()}/disk", "Connection refused"),
        (f"nbd+unix:///nope?socket={good.sock}", "server has no export named 'nope'"),
    ]


@needs_nbd
def test_an_nbd_target_that_cannot_be_opened_stops_start_up(disk_file, tmp_path, servers, sock_dir):
    good = servers(qemu_nbd(disk_file, tmp_path))
    for image, needle in bad_nbd_targets(tmp_path, good):
        proc = run_cli("serve", "--socket", str(sock_dir / "s"), "--image", image)
        assert_usage_error(proc, f"dataplane: error: {image}: ", needle)
        assert not (sock_dir / "s").exists()


@needs_nbd
def test_add_device_refuses_such_a_target_and_keeps_serving(
    disk_file, tmp_path, servers, serve, sock_dir
):
    good = servers(qemu_nbd(disk_file, tmp_path))
    b = serve(good.uri)
    new = sock_dir / "new.sock"
    with MgmtClient(b.socket.parent / "m.sock") as m:
        for image, needle in bad_nbd_targets(tmp_path, good):
            reply = m.request("add-device", spec={"socket": str(new), "image": image})
            assert reply["ok"] is False and needle in reply["error"], reply
            assert image in reply["error"] and not new.exists()
        reply = m.request("add-device", spec={"socket": str(new), "image": good.uri, "aio": "null"})
        assert reply["ok"] is False and "aio= is for an image file only" in reply["error"]
        assert [d["name"] for d in m.call("devices")["devices"]] == ["vblk0"]
        with BlkDriver(b.socket) as d:
            assert d.read(0, 4096).data == pattern(4096, seed=5)
        other = tmp_path / "other.img"
        other.write_bytes(bytes(SIZE))
        added = m.call("add-device", spec={"socket": str(new), "image": str(other)})
        assert added["device"]["image-kind"] == "file"
    assert b.proc.poll() is None


# -- RBD ----------------------------------------------------------------------------------


def new_rbd_image(cluster, data: bytes | None = None) -> str:
    name = f"serve{os.getpid()}-{next(_names)}"
    if data is None:
        cluster.rbd("create", "--size", f"{SIZE >> 20}M", f"rbd/{name}")
    else:
        cluster.rbd("import", "-", f"rbd/{name}", input=data)
    return f"rbd:rbd/{name}"


def bad_rbd_targets(cluster, tmp_path: Path) -> list[tuple[list[str], str]]:
    """(serve flags, what the error says) for each RBD target that cannot be opened."""
    garbage = tmp_path / "garbage.conf"
    garbage.write_text("this is [not a ceph.conf\n")
    conf = ["--ceph-conf", str(cluster.conf)]
    return [
        (["--image", "rbd:nopool/x", *conf], "rbd:nopool/x: no pool nopool"),
        (["--image", "rbd:rbd/noimage", *conf], "rbd:rbd/noimage: no image noimage in pool rbd"),
        (["--image", "rbd:rbd/x", "--ceph-conf", str(garbage)], "cannot read the Ceph config"),
        (["--image", "rbd:rbd/x", "--ceph-conf", str(tmp_path / "no.conf")], "not a readable"),
    ]


def as_spec(flags: list[str]) -> dict[str, str]:
    return {k.removeprefix("--"): v for k, v in zip(flags[::2], flags[1::2], strict=True)}


@needs_ceph
def test_an_rbd_target_that_cannot_be_opened_stops_start_up(ceph_cluster, tmp_path, sock_dir):
    for flags, needle in bad_rbd_targets(ceph_cluster, tmp_path):
        proc = run_cli("serve", "--socket", str(sock_dir / "s"), *flags)
        assert_usage_error(proc, "dataplane: error: ", needle)
        assert not (sock_dir / "s").exists()
    image = new_rbd_image(ceph_cluster)
    proc = run_cli(
        "serve", "--socket", str(sock_dir / "s"), "--image", image,
        "--ceph-conf", str(ceph_cluster.conf), "--num-queues", "2", "--iothreads", "2",
    )  # fmt: skip
    assert_usage_error(proc, f"{image}: iothreads=2", "one handle", "use iothreads=1")


@needs_ceph
def test_an_rbd_image_is_served_and_add_device_refuses_what_cannot_open(
    ceph_cluster, tmp_path, serve, sock_dir
):
    base = pattern(SIZE, seed=21)
    image = new_rbd_image(ceph_cluster, base)
    conf = str(ceph_cluster.conf)
    b = serve(image, "--ceph-conf", conf, "--ceph-user", "admin")
    listening = listening_line(b)
    assert f": rbd {image}, {SIZE // 512} sectors" in listening and "aio=rbd" in listening
    with BlkDriver(b.socket) as d:
        assert offered(d) == {"flush", "wce", "discard", "write_zeroes"}
        data = pattern(16384, seed=22)
        assert d.write(40, data).status == 0
        assert d.flush().status == 0
        assert d.read(40, 16384).data == data
        assert d.write_zeroes(8, 8).status == 0
    after = ceph_cluster.export(image.removeprefix("rbd:"))
    assert after[40 * 512 : 40 * 512 + 16384] == data
    assert after[8 * 512 : 16 * 512] == bytes(4096) and after[:4096] == base[:4096]

    new = sock_dir / "new.sock"
    with MgmtClient(b.socket.parent / "m.sock") as m:
        (dev,) = m.call("devices")["devices"]
        assert (dev["image-kind"], dev["ceph-conf"], dev["ceph-user"]) == ("rbd", conf, "admin")
        for flags, needle in bad_rbd_targets(ceph_cluster, tmp_path):
            reply = m.request("add-device", spec={"socket": str(new), **as_spec(flags)})
            assert reply["ok"] is False and needle in reply["error"], reply
            assert not new.exists()
        # A snapshot is served read-only.
        ceph_cluster.rbd("snap", "create", f"{image.removeprefix('rbd:')}@s1")
        snap = m.call("add-device", spec={"socket": str(new), "image": f"{image}@s1",
                                          "ceph-conf": conf, "name": "snap"})  # fmt: skip
        assert snap["device"]["image-kind"] == "rbd"
        with BlkDriver(new) as d:
            assert offered(d) == {"flush", "wce", "ro"}
            assert d.read(40, 16384).data == data
            assert d.write(40, bytes(512)).status == 1  # IOERR
        assert m.call("stats", name="snap")["devices"]["snap"]["image-kind"] == "rbd"
    assert b.proc.poll() is None
