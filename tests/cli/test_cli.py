"""User mistakes: one clear line on stderr, exit status 2, never a traceback."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clitest import assert_usage_error, run_cli
from guest_support import start_dataplane


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(1 << 20))
    return p


def test_missing_image(sock_dir, tmp_path):
    proc = run_cli("serve", "--socket", str(sock_dir / "s"), "--image", str(tmp_path / "nope"))
    assert_usage_error(proc, "does not exist", "truncate")
    assert not (sock_dir / "s").exists()


def test_image_size_not_multiple_of_512(sock_dir, tmp_path):
    img = tmp_path / "odd.img"
    img.write_bytes(bytes(1000))
    proc = run_cli("serve", "--socket", str(sock_dir / "s"), "--image", str(img))
    assert_usage_error(proc, "multiple of 512")


def test_unwritable_image_without_read_only(sock_dir, image):
    if os.geteuid() == 0:
        # File modes do not stop root; the immutable attribute does.
        if subprocess.run(["chattr", "+i", str(image)], capture_output=True).returncode:
            pytest.skip("chattr +i is not available here, and root ignores file modes")
    else:
        image.chmod(0o444)
    try:
        proc = run_cli("serve", "--socket", str(sock_dir / "s"), "--image", str(image))
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(image)], check=True)
    assert_usage_error(proc, "not writable", "--read-only")


def test_socket_held_by_live_server(sock_dir, image):
    path = sock_dir / "live.sock"
    holder = socket.socket(socket.AF_UNIX)
    holder.bind(str(path))
    holder.listen(1)
    try:
        proc = run_cli("serve", "--socket", str(path), "--image", str(image))
        assert_usage_error(proc, "in use by a running server")
        assert path.exists()
    finally:
        holder.close()


def test_stale_socket_is_replaced(sock_dir, image, tmp_path):
    path = sock_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens
    b = start_dataplane(path, image, log_path=tmp_path / "log")
    assert b.stop() == 0
    assert not path.exists()


def test_image_open_for_writing_elsewhere(sock_dir, image):
    fd = os.open(image, os.O_RDWR)
    try:
        lock = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
        fcntl.fcntl(fd, 37, lock)  # F_OFD_SETLK, as QEMU and dataplane take it
        proc = run_cli("serve", "--socket", str(sock_dir / "s"), "--image", str(image))
        assert_usage_error(proc, "in use by another process")
        proc = run_cli(
            "serve", "--socket", str(sock_dir / "s"), "--image", str(image), "--read-only"
        )
        assert_usage_error(proc, "in use by another process")
    finally:
        os.close(fd)


def test_two_backends_never_share_one_image(sock_dir, image, tmp_path):
    b = start_dataplane(sock_dir / "a.sock", image, log_path=tmp_path / "log")
    try:
        proc = run_cli("serve", "--socket", str(sock_dir / "b.sock"), "--image", str(image))
        assert_usage_error(proc, "in use by another process")
    finally:
        assert b.stop() == 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["serve"], "required"),
        (["serve", "--socket", "s", "--image", "i", "--aio", "spdk"], "invalid choice"),
        (["serve", "--socket", "s", "--image", "i", "--num-queues", "0"], "must be positive"),
        (["serve", "--socket", "s", "--image", "i", "--queue-size", "100"], "power of two"),
        (["serve", "--socket", "s", "--image", "i", "--serial", "x" * 21], "20 bytes"),
        (["serve", "--socket", "s", "--image", "i", "--cache", "unsafe"], "invalid choice"),
        (["serve", "--socket", "s", "--image", "i", "--datapath", "rust"], "invalid choice"),
        (["serve", "--socket", "s", "--image", "i", "--poll-us", "-1"], "from 0 to"),
        (
            ["serve", "--socket", "s", "--image", "i", "--poll-us", "1", "--datapath", "python"],
            "--poll-us needs the C datapath (--datapath native)",
        ),
        (
            ["serve", "--socket", "s", "--image", "i", "--datapath=python", "--iops-limit", "5"],
            "--iops-limit needs the C datapath (--datapath native)",
        ),
        (
            ["serve", "--socket", "s", "--image", "i", "--datapath=python", "--bounce-mib", "64"],
            "--bounce-mib needs the C datapath (--datapath native)",
        ),
        (
            ["serve", "--device", "socket=s,image=i,datapath=python,limit-burst-ms=5"],
            "limit-burst-ms= needs the C datapath (datapath=native)",
        ),
        (["serve", "--device", "socket=s,image=i,test-delay=4:2000"], "unknown key 'test-delay'"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments(args, needle):
    assert_usage_error(run_cli(*args), needle)


def test_socket_directory_missing(image, tmp_path):
    proc = run_cli("serve", "--socket", str(tmp_path / "no" / "s.sock"), "--image", str(image))
    assert_usage_error(proc, "does not exist")


def test_sigint_shuts_down_cleanly(sock_dir, image, tmp_path):
    b = start_dataplane(sock_dir / "s.sock", image, log_path=tmp_path / "log")
    b.proc.send_signal(2)
    assert b.proc.wait(20) == 0
    assert not (sock_dir / "s.sock").exists()
    assert "stopped on SIGINT" in b.log_text()


def test_a_parser_error_names_its_command_once():
    proc = run_cli("serve", "--socket", "s", "--image", "i", "--num-queues", "x")
    assert_usage_error(proc, "argument --num-queues: 'x' is not an integer")
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("dataplane serve: error: argument --num-queues")
    assert line.count("dataplane") == 2  # the prefix, and the --help hint; never doubled
    assert_usage_error(run_cli("frobnicate"), "dataplane: error: argument command")


def test_version():
    from dataplane import __version__

    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"dataplane {__version__}"


def test_stat_on_a_regular_file_or_directory(tmp_path, image):
    assert_usage_error(run_cli("stat", str(image)), "is a regular file, not a socket", "--mgmt")
    assert_usage_error(run_cli("stat", str(tmp_path)), "is a directory, not a socket")


# --- issue 18: the newcomer's rough edges ------------------------------------------------


def test_record_and_trace_requests_advice_that_works(tmp_path):
    device = f"socket={tmp_path}/d.sock,image={tmp_path}/d.img"
    for flag, value in (("--record", str(tmp_path / "r.trace")), ("--trace-requests", "3")):
        proc = run_cli("serve", "--device", device, flag, value)
        assert_usage_error(proc, f"{flag} applies to the --socket/--image device only",
                           "give --socket and --image")  # fmt: skip
        assert "key of --device" not in proc.stderr
    proc = run_cli("serve", "--device", device, "--num-queues", "2")
    assert_usage_error(proc, "write it as num-queues=... in --device")


def test_cpus_flag_error_speaks_of_the_flag():
    proc = run_cli("serve", "--socket", "s", "--image", "i", "--cpus", "x")
    assert_usage_error(proc, "argument --cpus: 'x' is not a CPU list (e.g. --cpus 0:2-3)")
    assert "cpus=" not in proc.stderr


def test_two_devices_with_one_name(tmp_path):
    d = tmp_path
    proc = run_cli(
        "serve",
        "--device", f"socket={d}/a.sock,image={d}/a.img,name=extra",
        "--device", f"socket={d}/b.sock,image={d}/b.img,name=extra",
    )  # fmt: skip
    assert_usage_error(proc, "two devices are named 'extra': give each its own name=")


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    from dataplane.serve.config import load_config

    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    conf = conf_dir / "vm.toml"
    conf.write_text(
        'mgmt = "run/m.sock"\n[[device]]\nsocket = "vm.sock"\nimage = "disks/vm.img"\n'
        '[[device]]\nsocket = "/abs/b.sock"\nimage = "nbd://127.0.0.1/x"\n'
    )
    monkeypatch.chdir(tmp_path)  # elsewhere than the file
    cfg = load_config(Path("etc/vm.toml"))
    assert cfg.devices[0].image == Path("etc/disks/vm.img")
    assert cfg.devices[0].socket == Path("etc/vm.sock")
    assert (
        cfg.devices[1].socket == Path("/abs/b.sock") and cfg.devices[1].image == "nbd://127.0.0.1/x"
    )
    assert cfg.mgmt == Path("etc/run/m.sock")


def test_a_config_with_a_relative_image_serves_from_anywhere(tmp_path, sock_dir):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "disk.img").write_bytes(bytes(1 << 20))
    (conf_dir / "c.toml").write_text(
        f'[[device]]\nsocket = "{sock_dir}/c.sock"\nimage = "disk.img"\naio = "threads"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = tmp_path / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dataplane", "serve", "--config", "../conf/c.toml"],
            cwd=elsewhere, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "listening" not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert "file ../conf/disk.img" in log.read_text(), log.read_text()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096), ("4k", 4096), ("4K", 4096), ("4KiB", 4096), ("1M", 1 << 20),
        ("3G", 3 << 30), ("1.5G", 3 << 29), ("2GiB", 2 << 30), ("1T", 1 << 40),
        ("1GB", 10**9), ("10MB", 10**7), ("512B", 512), ("0x1000", 4096),
    ],
)  # fmt: skip
def test_sizes_take_suffixes(text, size):
    from dataplane.argtypes import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["x", "-1", "1.3", "4kx", "1iB", "M"])
def test_bad_sizes(text):
    from dataplane.argtypes import parse_size

    with pytest.raises(ValueError, match="not a"):
        parse_size(text)


def test_sizes_and_rates_in_every_command():
    from dataplane.cli import build_parser

    p = build_parser()
    args = p.parse_args(["serve", "--socket", "s", "--image", "i", "--bps-limit", "10M",
                         "--read-bps-limit", "1G", "--iops-limit", "5000"])  # fmt: skip
    assert (args.bps_limit, args.read_bps_limit, args.iops_limit) == (10 << 20, 1 << 30, 5000)
    from dataplane.cli import live_ops

    resize = p.parse_args(["resize", "m.sock", "vblk0", "3G"])
    assert live_ops._split(resize) == (Path("m.sock"), ["vblk0", "3G"])
    assert live_ops._request(resize, ["vblk0", "3G"]) == (
        "resize",
        {"name": "vblk0", "size": 3 << 30},
    )
    assert p.parse_args(["bench", "--size", "1G", "--bs", "64k"]).size == 1 << 30
    assert_usage_error(run_cli("resize", "m.sock", "vblk0", "3Q"), "argument SIZE", "not a size")
    assert_usage_error(run_cli("serve", "--socket", "s", "--image", "i", "--bps-limit", "x"),
                       "argument --bps-limit", "bytes per second")  # fmt: skip
    from dataplane.serve.config import parse_device

    opts = parse_device("socket=/s,image=/i,write-bps-limit=2M,read-bps-limit=1.5M")
    assert (opts.limits.write_bps, opts.limits.read_bps) == (2 << 20, 3 << 19)


def test_metavars_are_even():
    """No metavar made from a dest (NUM_QUEUES, RWMIXREAD): each says what it takes."""
    import re

    for cmd in ("serve", "bench", "stat", "devices", "add-device", "remove-device",
                "set-limits", "resize"):  # fmt: skip
        usage = run_cli(cmd, "--help").stdout
        for flag, metavar in re.findall(r"\[(--[a-z-]+) ([A-Z][A-Z_.|:]*)\]", usage):
            assert metavar != flag[2:].upper().replace("-", "_") or "_" not in metavar, (
                cmd, flag, metavar,
            )  # fmt: skip
            assert metavar in ("N", "K", "S", "MS", "SIZE", "PCT", "FILE", "DIR", "PATH", "LIST",
                               "MODE", "GROUP", "USER", "ID", "NAME", "SOCK", "SPEC", "TARGET",
                               "ARG", "CMD", "ADDR:PORT", "FILE.PNG", "PATH|FD:N",
                               "FILE|URI"), (cmd, flag, metavar)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "socket", "words"),
    [
        (["set-limits", "m.sock", "vblk0", "iops-limit=5"], "m.sock", ["vblk0", "iops-limit=5"]),
        (["set-limits", "vblk0", "iops-limit=5"], "ENV", ["vblk0", "iops-limit=5"]),
        (["set-limits", "--mgmt", "/m", "vblk0", "iops-limit=5"], "/m", ["vblk0", "iops-limit=5"]),
        (["resize", "m.sock", "vblk0", "2G"], "m.sock", ["vblk0", "2G"]),
        (["resize", "/run/m.sock", "vblk0"], "/run/m.sock", ["vblk0"]),
        (["resize", "m.sock", "vblk0"], "m.sock", ["vblk0"]),
        (["resize", "vblk0", "2G"], "ENV", ["vblk0", "2G"]),
        (["resize", "vblk0"], "ENV", ["vblk0"]),
    ],
)
def test_set_limits_and_resize_find_their_socket(argv, socket, words, monkeypatch):
    """SOCKET may be left out as for the other management commands ($DATAPLANE_MGMT here)."""
    from dataplane.cli import build_parser, live_ops

    monkeypatch.setenv("DATAPLANE_MGMT", "ENV")
    assert live_ops._split(build_parser().parse_args(argv)) == (Path(socket), words)
