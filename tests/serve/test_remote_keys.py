"""The device keys of a remote disk: image= forms, the keys each kind takes, what devices shows.

No server is needed: these are the checks made before anything connects.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clitest import assert_usage_error, run_cli

from dataplane.device.blkdev import default_serial
from dataplane.device.disk import ALL_CAN, offered_features
from dataplane.errors import UsageError
from dataplane.serve.config import load_config, parse_device
from dataplane.serve.device_keys import spec_of
from dataplane.serve.device_options import DeviceOptions, check_unique
from dataplane.spec.blk import (
    VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_WRITE_ZEROES,
)

NBD = "nbd+unix:///disk?socket=/run/nbd.sock"


@pytest.mark.parametrize(
    "image, kind, value",
    [
        ("/var/lib/disk.img", "file", Path("/var/lib/disk.img")),
        ("nbd://10.0.0.1:10809/vol", "nbd", "nbd://10.0.0.1:10809/vol"),
        ("nbd://storage/vol", "nbd", "nbd://storage/vol"),
        (NBD, "nbd", NBD),
        ("rbd:pool/vm-1", "rbd", "rbd:pool/vm-1"),
        ("rbd:pool/ns/vm-1@gold", "rbd", "rbd:pool/ns/vm-1@gold"),
    ],
)
def test_image_names_a_file_or_a_remote_disk(image, kind, value):
    opts = parse_device(f"socket=/tmp/s,image={image}")
    assert opts.kind == kind
    assert opts.image == value and type(opts.image) is type(value)


@pytest.mark.parametrize(
    "keys, needle",
    [
        (f"image={NBD},aio=threads", f"aio= is for an image file only, and {NBD} is an NBD"),
        (f"image={NBD},cache=writeback", "cache= is for an image file only"),
        (f"image={NBD},bounce-mib=64", "bounce-mib= is for an image file only"),
        ("image=rbd:p/i,reconnect-s=5", "reconnect-s= is for an NBD export only"),
        (f"image={NBD},ceph-conf=/etc/ceph/ceph.conf", "ceph-conf= is for an RBD image only"),
        ("image=/tmp/f.img,ceph-user=admin", "ceph-user= is for an RBD image only"),
        ("image=/tmp/f.img,ceph-keyring=/k", "and /tmp/f.img is an image file"),
        ("image=/tmp/f.img,reconnect-s=1", "reconnect-s= is for an NBD export only"),
        (f"image={NBD},datapath=python", "datapath=python: an NBD export is served by the nat"),
        ("image=rbd:p/i,datapath=python", "an RBD image is served by the native datapath only"),
        (f"image={NBD},reconnect-s=-1", "reconnect-s='-1' is not from 0 to 3600 seconds"),
        (f"image={NBD},reconnect-s=soon", "reconnect-s='soon' is not a number of seconds"),
        ("image=nbd:localhost:10809", "write an NBD export as a URI"),
        ("image=nbd+unix:///disk", "a UNIX socket URI needs ?socket=PATH"),
        ("image=rbd:pool", "is not an RBD image: use rbd:POOL/IMAGE"),
        ("image=rbd:pool/a b", "is not an RBD image"),
    ],
)
def test_keys_that_do_not_fit_the_image_are_refused(keys, needle):
    with pytest.raises(UsageError) as e:
        parse_device(f"socket=/tmp/s,{keys}", "--device #1")
    assert needle in str(e.value)
    assert str(e.value).startswith("--device #1: ")


def test_reconnect_s_reads_seconds():
    assert parse_device(f"socket=/s,image={NBD}").reconnect_s == 10
    assert parse_device(f"socket=/s,image={NBD},reconnect-s=2.5").reconnect_s == 2.5
    assert parse_device(f"socket=/s,image={NBD},reconnect-s=30s").reconnect_s == 30
    assert parse_device(f"socket=/s,image={NBD},reconnect_s=0").reconnect_s == 0


def test_the_same_checks_in_a_config_file(tmp_path):
    conf = tmp_path / "serve.toml"
    conf.write_text(
        f'[[device]]\nsocket = "/tmp/a"\nimage = "{NBD}"\nreconnect-s = 3\n\n'
        '[[device]]\nsocket = "/tmp/b"\nimage = "rbd:rbd/vm"\nceph-conf = "/etc/ceph/ceph.conf"\n'
        'ceph-user = "client.vm"\n'
    )
    nbd, rbd = load_config(conf).devices
    assert (nbd.kind, nbd.reconnect_s) == ("nbd", 3)
    assert (rbd.kind, rbd.ceph_conf, rbd.ceph_user) == (
        "rbd",
        Path("/etc/ceph/ceph.conf"),
        "client.vm",
    )
    conf.write_text('[[device]]\nsocket = "/tmp/a"\nimage = "rbd:rbd/vm"\nreconnect-s = 3\n')
    with pytest.raises(UsageError, match=r"\[\[device\]\] #1: reconnect-s= is for an NBD export"):
        load_config(conf)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--image", NBD, "--aio", "threads"], "--aio is for an image file only"),
        (["--image", NBD, "--cache", "writeback"], "--cache is for an image file only"),
        (["--image", "rbd:p/i", "--reconnect-s", "3"], "--reconnect-s is for an NBD export only"),
        (["--image", NBD, "--ceph-user", "admin"], "--ceph-user is for an RBD image only"),
        (["--image", NBD, "--datapath", "python"], "--datapath python: an NBD export is served"),
        (["--image", "nbd:host:10809"], "argument --image: 'nbd:host:10809': write an NBD"),
        (["--image", NBD, "--reconnect-s", "x"], "argument --reconnect-s: 'x' is not a number"),
    ],
)
def test_single_device_flags_are_checked_alike(args, needle, tmp_path):
    proc = run_cli("serve", "--socket", str(tmp_path / "s"), *args)
    assert_usage_error(proc, needle)
    assert not (tmp_path / "s").exists()


def test_devices_shows_the_keys_of_the_image_kind():
    nbd = spec_of(parse_device(f"socket=/s,image={NBD},reconnect-s=4"))
    assert nbd["image"] == NBD and nbd["reconnect-s"] == 4
    assert not {"aio", "cache", "bounce-mib", "ceph-conf", "ceph-user"} & nbd.keys()
    rbd = spec_of(parse_device("socket=/s,image=rbd:rbd/vm,ceph-conf=/c,ceph-user=vm"))
    assert (rbd["ceph-conf"], rbd["ceph-user"], rbd["ceph-keyring"]) == ("/c", "vm", None)
    assert not {"aio", "cache", "reconnect-s"} & rbd.keys()
    file = spec_of(parse_device("socket=/s,image=/tmp/f.img"))
    assert file["aio"] == "io_uring" and file["image"] == "/tmp/f.img"
    assert not {"reconnect-s", "ceph-conf"} & file.keys()


def test_two_devices_on_one_remote_disk_are_refused():
    a = DeviceOptions(image="rbd:rbd/vm", socket=Path("/tmp/a"), name="a")
    b = DeviceOptions(image="rbd:rbd/vm", socket=Path("/tmp/b"), name="b")
    with pytest.raises(UsageError, match="same image as device 'a': rbd:rbd/vm"):
        check_unique([a, b])
    check_unique([a, DeviceOptions(image="rbd:rbd/vm2", socket=Path("/tmp/b"), name="b")])


def test_the_default_serial_is_the_export_or_image_name():
    assert default_serial(NBD) == "disk"
    assert default_serial("nbd://host:10809/a-very-long-export-name") == "a-very-long-export-n"
    assert default_serial("nbd://host") == "dataplane"  # the default export has no name
    assert default_serial("rbd:pool/ns/vm-1@gold") == "vm-1"
    assert default_serial(Path("/x/disk.img")) == "disk.img"


def test_features_follow_what_the_backing_can_do():
    def bits(read_only: bool, **kw: bool) -> set[int]:
        f = offered_features(read_only=read_only, num_queues=1, can={**ALL_CAN, **kw})
        wanted = (
            VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_F_RO,
        )  # fmt: skip
        return {b for b in wanted if f >> b & 1}

    every = {VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD}
    assert bits(read_only=False) == every | {VIRTIO_BLK_F_WRITE_ZEROES}
    assert bits(read_only=False, flush=False, discard=False) == {VIRTIO_BLK_F_WRITE_ZEROES}
    assert bits(read_only=False, write_zeroes=False) == every
    assert bits(read_only=True, discard=True) == {
        VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_RO
    }  # fmt: skip
