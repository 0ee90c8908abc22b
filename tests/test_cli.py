"""User mistakes: one clear line on stderr, exit status 2, never a traceback."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess

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
            "--poll-us needs --datapath native",
        ),
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
    proc = run_cli("serve", "--socket", "s", "--image", "i", "--num-queues", "0")
    assert_usage_error(proc, "argument --num-queues: '0' must be positive")
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
