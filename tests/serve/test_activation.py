"""Inherited sockets, systemd socket activation, sd_notify, and socket ownership keys.

Real parts: sockets made here and passed as fds, systemd's own ``systemd-socket-activate``
running the example units' command line, ``systemd-analyze verify`` on the example units,
and a real frontend (BlkDriver) doing verified I/O through the socket.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from clitest import assert_usage_error, run_cli
from waits import WAIT_S

from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.serve import activation

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "examples" / "systemd"
SECTORS = 4096
DATAPLANE = Path(sys.executable).with_name("dataplane")


def make_image(path: Path) -> Path:
    path.write_bytes(os.urandom(SECTORS * 512))
    return path


def verified_io(sock: Path, image: Path) -> None:
    """Write, read back and flush through ``sock``; the bytes must be in ``image``."""
    data = os.urandom(16 * 1024)
    with BlkDriver(sock) as d:
        assert d.capacity == SECTORS
        assert d.write(64, data).status == 0
        assert d.read(64, len(data)).data == data
        assert d.flush().status == 0
    assert image.read_bytes()[64 * 512 : 64 * 512 + len(data)] == data


def listening_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    return s


def wait_log(proc: subprocess.Popen, log: Path, needle: str, timeout: float = WAIT_S) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if needle in text:
            return text
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before logging {needle!r}:\n{text}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {needle!r} within {timeout} s:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen, log: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=WAIT_S) == 0, log.read_text()
    return log.read_text()


# -- socket=fd:N -------------------------------------------------------------------------------


def test_listening_fd_serves_verified_io(tmp_path, sock_dir):
    img = make_image(tmp_path / "a.img")
    path = sock_dir / "a.sock"
    lsock = listening_socket(path)
    fd = lsock.fileno()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dataplane", "serve", "--device",
             f"socket=fd:{fd},image={img},name=passed"],
            pass_fds=[fd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    lsock.close()  # the child holds its own copy
    try:
        wait_log(proc, log, "listening")
        verified_io(path, img)
        verified_io(path, img)  # the next connection on the same inherited socket
    finally:
        text = stop(proc, log)
    assert f"passed listening on fd {fd}" in text
    # The socket file belongs to whoever bound it: serve leaves it in place.
    assert stat.S_ISSOCK(path.lstat().st_mode)


def test_the_single_device_flag_takes_a_listening_fd_too(tmp_path, sock_dir):
    img = make_image(tmp_path / "a.img")
    path = sock_dir / "b.sock"
    lsock = listening_socket(path)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dataplane", "serve", "--socket", f"fd:{lsock.fileno()}",
             "--image", str(img)],
            pass_fds=[lsock.fileno()], stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    lsock.close()
    try:
        wait_log(proc, log, "listening")
        verified_io(path, img)
    finally:
        stop(proc, log)


def _serve_with_fd(fd: int, img: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dataplane", "serve", "--device",
         f"socket=fd:{fd},image={img}{''.join(',' + e for e in extra)}"],
        pass_fds=[fd], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_an_fd_that_is_not_a_listening_unix_socket_is_refused(tmp_path):
    img = make_image(tmp_path / "a.img")
    with (tmp_path / "file").open("wb") as f:
        assert_usage_error(
            _serve_with_fd(f.fileno(), img), f"fd {f.fileno()}", "not an open socket"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        assert_usage_error(_serve_with_fd(s.fileno(), img), "not a listening UNIX stream socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # never listened
        assert_usage_error(_serve_with_fd(s.fileno(), img), "not a listening UNIX stream socket")
    assert_usage_error(
        run_cli("serve", "--device", f"socket=fd:97,image={img}"), "fd 97", "not an open socket"
    )
    assert_usage_error(run_cli("serve", "--device", f"socket=fd:1,image={img}"), "stdout")
    assert_usage_error(
        run_cli("serve", "--device", f"socket=fd:vm1,image={img}"),
        "no inherited socket is named 'vm1'",
    )


def test_listen_fds_for_another_process_are_ignored(tmp_path):
    img = make_image(tmp_path / "a.img")
    env = {**os.environ, "LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "vm1"}
    assert_usage_error(
        run_cli("serve", "--device", f"image={img},name=vm1", env=env), "socket= is required"
    )


def test_read_listen_env_takes_and_names_the_fds():
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "vm1:unknown"}
    fds = activation._read_listen_env(env)
    assert fds == [activation.InheritedSocket(3, "vm1"), activation.InheritedSocket(4, "")]
    assert env == {}  # taken out, so that no child sees them
    bad = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"}
    with pytest.raises(activation.UsageError, match="names 1 sockets but LISTEN_FDS is 2"):
        activation._read_listen_env(bad)


# -- sd_notify -----------------------------------------------------------------------------------


def _notify_socket(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + address[1:] if address.startswith("@") else address)
    s.settimeout(20)
    return s


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notify_sends_one_datagram(tmp_path, monkeypatch, kind):
    address = str(tmp_path / "notify") if kind == "path" else f"@dp-test-{uuid.uuid4().hex}"
    with _notify_socket(address) as s:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert activation.notify("READY=1", "STATUS=serving")
        assert s.recv(4096) == b"READY=1\nSTATUS=serving"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not activation.notify("READY=1")


# -- the example units, run by systemd's own socket activation ---------------------------------


def unit_values(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (comments out), values of repeated keys in order."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_example_units_verify():
    """``systemd-analyze verify`` on the example pair, as an instance (vm1)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    work = Path(short_socket_dir())
    try:
        for unit in ("dataplane@.socket", "dataplane@.service"):
            text = (UNITS / unit).read_text()
            # The one change: ExecStart's dataplane is this checkout's (verify checks it runs).
            (work / unit).write_text(text.replace("/opt/dataplane/bin/dataplane", str(DATAPLANE)))
        proc = subprocess.run(
            ["systemd-analyze", "verify", "dataplane@vm1.socket", "dataplane@vm1.service"],
            cwd=work, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_systemd_socket_activate_runs_the_example_units(tmp_path, sock_dir):
    """The example units' socket and command line, started by systemd-socket-activate."""
    if shutil.which("systemd-socket-activate") is None:
        pytest.skip("systemd-socket-activate not installed (Debian package systemd)")
    socket_unit = unit_values(UNITS / "dataplane@.socket")
    service = unit_values(UNITS / "dataplane@.service")
    assert service["Type"] == ["notify"] and socket_unit["Accept"] == ["no"]
    instance = "vm1"
    img = make_image(tmp_path / "vm1.img")
    etc = tmp_path / "etc"
    etc.mkdir()
    # The example config, its host paths moved into this test's directories.
    config = (UNITS / "vm1.toml").read_text()
    config = config.replace("/var/lib/dataplane/vm1.img", str(img))
    config = config.replace("/run/dataplane/", f"{sock_dir}/")
    config = re.sub(r'metrics = "127.0.0.1:\d+"', 'metrics = "127.0.0.1:0"', config)
    (etc / "vm1.toml").write_text(config)

    def expand(value: str) -> str:
        value = value.replace("%i", instance).replace("/run/dataplane/", f"{sock_dir}/")
        return value.replace("/etc/dataplane/", f"{etc}/")

    listen = Path(expand(socket_unit["ListenStream"][0]))
    fdname = expand(socket_unit["FileDescriptorName"][0])
    argv = expand(service["ExecStart"][0]).split()
    assert argv[0] == "/opt/dataplane/bin/dataplane"
    argv[0] = str(DATAPLANE)
    notify_address = f"@dp-test-{uuid.uuid4().hex}"
    log = tmp_path / "activate.log"
    with _notify_socket(notify_address) as notify, log.open("wb") as out:
        proc = subprocess.Popen(
            ["systemd-socket-activate", "--listen", str(listen), f"--fdname={fdname}",
             "-E", f"NOTIFY_SOCKET={notify_address}", "-E", "PYTHONUNBUFFERED=1", *argv],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_log(proc, log, "Listening on")
            # The first connection starts serve (Accept=no), which takes the listening fd.
            verified_io(listen, img)
            ready = notify.recv(4096).decode().split("\n")
            assert ready[0] == "READY=1" and ready[1].startswith("STATUS=serving 1 device")
            text = log.read_text()
            assert f"vm1 listening on fd 3 ({fdname})" in text
            assert "management socket listening" in text and "metrics served" in text
            proc.send_signal(signal.SIGTERM)
            assert notify.recv(4096).decode().split("\n")[0] == "STOPPING=1"
            assert proc.wait(timeout=WAIT_S) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "stopped on SIGTERM" in log.read_text()


def test_activated_device_needs_a_matching_name(tmp_path, sock_dir):
    if shutil.which("systemd-socket-activate") is None:
        pytest.skip("systemd-socket-activate not installed (Debian package systemd)")
    img = make_image(tmp_path / "a.img")
    path = sock_dir / "x.sock"
    proc = subprocess.Popen(
        ["systemd-socket-activate", "--listen", str(path), "--fdname=vm2",
         sys.executable, "-m", "dataplane", "serve", "--device", f"image={img},name=vm1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with _connect_when_listening(path):  # the connection starts the child
            _, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    assert "no socket systemd passed is named 'vm1'" in err and "passed: vm2" in err, err


# -- socket-mode, socket-group, socket-owner -------------------------------------------------


def _connect_when_listening(path: Path, timeout: float = WAIT_S) -> socket.socket:
    """systemd-socket-activate binds before it listens: the path can exist and still refuse."""
    deadline = time.monotonic() + timeout
    while True:
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect(str(path))
            return c
        except (FileNotFoundError, ConnectionRefusedError):
            c.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _other_user_and_group() -> tuple[str, str]:
    user = next((u for u in ("nobody", "daemon") if _exists(pwd.getpwnam, u)), None)
    group = next((g for g in ("daemon", "nogroup", "users") if _exists(grp.getgrnam, g)), None)
    if user is None or group is None:
        pytest.skip("no 'nobody'/'daemon' user or 'daemon'/'nogroup' group here")
    return user, group


def _exists(lookup, name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def test_socket_mode_group_and_owner_are_applied(tmp_path, sock_dir):
    user, group = _other_user_and_group()
    if os.geteuid() != 0:
        pytest.skip("socket-owner needs root")
    img = make_image(tmp_path / "a.img")
    path = sock_dir / "owned.sock"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dataplane", "serve", "--device",
             f"socket={path},image={img},socket-mode=0640,socket-group={group},"
             f"socket-owner={user}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_log(proc, log, "listening")
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_uid == pwd.getpwnam(user).pw_uid
        assert st.st_gid == grp.getgrnam(group).gr_gid
        verified_io(path, img)
    finally:
        stop(proc, log)
    assert not path.exists()


@pytest.mark.parametrize(
    "keys, needle",
    [
        ("socket-mode=999", "socket-mode='999' is not an octal mode"),
        ("socket-mode=1777", "from 0000 to 0777"),
        ("socket-mode=rw", "is not an octal mode like 0660"),
        ("socket-owner=no-such-user-here", "no user named 'no-such-user-here'"),
        ("socket-group=no-such-group-here", "no group named 'no-such-group-here'"),
    ],
)
def test_bad_socket_access_keys(tmp_path, sock_dir, keys, needle):
    img = make_image(tmp_path / "a.img")
    proc = run_cli("serve", "--device", f"socket={sock_dir / 's.sock'},image={img},{keys}")
    assert_usage_error(proc, needle)


def test_socket_access_keys_do_not_apply_to_an_inherited_fd(tmp_path, sock_dir):
    img = make_image(tmp_path / "a.img")
    with listening_socket(sock_dir / "s.sock") as s:
        proc = _serve_with_fd(s.fileno(), img, "socket-mode=0660")
    assert_usage_error(proc, "apply to a socket path", "SocketMode=")


def test_socket_path_too_long(tmp_path):
    img = make_image(tmp_path / "a.img")
    long_path = "/tmp/" + "x" * 120 + ".sock"
    assert_usage_error(
        run_cli("serve", "--socket", long_path, "--image", str(img)),
        "--socket",
        "130 bytes",
        "at most 107",
    )
    assert_usage_error(
        run_cli("serve", "--device", f"socket={long_path},image={img}"), "at most 107"
    )
