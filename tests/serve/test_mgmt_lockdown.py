"""The management plane is locked down: socket modes, peer uids, bounded requests, probes that
never block, and paths checked before any device starts (never unlinking a live server's)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import threading

import pytest
from clitest import assert_usage_error, run_cli
from guest_support import start_dataplane
from waits import WAIT_S

from dataplane.device.image import F_OFD_SETLK
from dataplane.errors import UsageError
from dataplane.serve.mgmt import MAX_DEPTH, MAX_LINE
from dataplane.serve.mgmt_client import MgmtClient
from dataplane.serve.sockets import check_socket_path

SECTORS = 2048


@pytest.fixture
def serve(tmp_path, sock_dir):
    """serve() -> a backend with device vblk0 on sock_dir/a.sock and mgmt on sock_dir/m.sock."""
    started = []

    def start(umask: int | None = None):
        img = tmp_path / f"a{len(started)}.img"
        img.write_bytes(bytes(SECTORS * 512))
        old = os.umask(umask) if umask is not None else None
        try:
            b = start_dataplane(
                sock_dir / "a.sock", img, log_path=tmp_path / f"serve{len(started)}.log",
                extra_args=("--mgmt", str(sock_dir / "m.sock")),
            )  # fmt: skip
        finally:
            if old is not None:
                os.umask(old)
        started.append(b)
        return b

    yield start
    for b in started:
        rc = b.stop()
        assert rc == 0, b.log_text()


def test_sockets_are_0600_whatever_the_umask(serve, sock_dir):
    serve(umask=0)
    for name in ("a.sock", "m.sock"):
        assert stat.S_IMODE((sock_dir / name).lstat().st_mode) == 0o600, name


def _as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
         "/usr/bin/python3", "-c", code],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as nobody")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_a_client_of_another_uid_is_refused(serve, sock_dir):
    b = serve()
    m = sock_dir / "m.sock"
    os.chmod(sock_dir, 0o755)  # nobody may reach the directory...
    client = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"try:\n    s.connect({str(m)!r})\n"
        "except PermissionError:\n    print('EACCES'); sys.exit(0)\n"
        "print(s.recv(4096).decode().strip()); print(repr(s.recv(4096)))\n"
    )
    proc = _as_nobody(client)
    assert proc.stdout.strip() == "EACCES", proc  # ...but not the 0600 socket
    # Were the socket's mode opened up, SO_PEERCRED still refuses: one line, then EOF.  (The
    # client sends nothing: a request left unread when the server closes would reset it.)
    os.chmod(m, 0o666)
    proc = _as_nobody(client)
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[0]) == {"ok": False, "error": "permission denied (uid)"}, proc
    assert lines[1] == "b''"  # and disconnected
    assert "refused a client of uid 65534" in b.log_text()
    with MgmtClient(m) as c:  # root (and the server's own uid) still get in
        assert c.call("devices")["devices"][0]["name"] == "vblk0"


def test_requests_are_bounded(serve, sock_dir):
    serve()
    with MgmtClient(sock_dir / "m.sock") as m:
        deep = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
        m.sock.sendall(deep + b"\n")
        assert m.read_response() == {
            "ok": False, "error": f"request nested deeper than {MAX_DEPTH} levels",
        }  # fmt: skip
        m.sock.sendall(b"[" * 60000 + b"\n")  # deep, within MAX_LINE
        assert "deeper" in m.read_response()["error"]
        # Expanded, the range would take hours: a reply within the client's timeout says it
        # was refused before.
        resp = m.request("add-device", spec={"socket": "/x", "image": "/y", "cpus": f"0-{10**18}"})
        assert not resp["ok"] and f"CPU {10**18} does not exist" in resp["error"], resp
        assert m.call("devices")  # still usable
        m.sock.sendall(b" " * (MAX_LINE + 10) + b"\n")
        assert m.read_response() == {"ok": False, "error": "request line too long"}
    with MgmtClient(sock_dir / "m.sock") as m:
        assert m.call("devices")


def test_the_liveness_probe_never_blocks(sock_dir):
    path = sock_dir / "busy.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    clients = []
    try:
        while True:  # fill the backlog: a blocking connect would now wait for ever
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            clients.append(c)
            c.connect(str(path))
    except BlockingIOError:
        pass
    out: list[BaseException] = []

    def probe() -> None:
        try:
            check_socket_path(path)
        except UsageError as e:
            out.append(e)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(WAIT_S)
    try:
        assert not t.is_alive(), "the probe blocked on a live server with a full backlog"
        assert "in use by a running server" in str(out[0])
        assert path.exists()
    finally:
        for c in clients:
            c.close()
        listener.close()


def test_a_second_serve_on_a_live_mgmt_path_exits_2_and_leaves_the_first_reachable(
    serve, sock_dir, tmp_path
):
    serve()
    img = tmp_path / "second.img"
    img.write_bytes(bytes(SECTORS * 512))
    other = sock_dir / "other.sock"
    proc = run_cli("serve", "--mgmt", str(sock_dir / "m.sock"),
                   "--device", f"socket={other},image={img}")  # fmt: skip
    assert_usage_error(proc, f"socket path {sock_dir / 'm.sock'} is in use by a running server")
    assert "listening" not in proc.stderr  # no device of the second process ever started
    assert not other.exists()  # it removed only the socket it had bound itself
    with MgmtClient(sock_dir / "m.sock") as m:
        assert [d["name"] for d in m.call("devices")["devices"]] == ["vblk0"]
    # The same for a live device socket.
    proc = run_cli("serve", "--socket", str(sock_dir / "a.sock"), "--image", str(img))
    assert_usage_error(proc, "is in use by a running server")
    assert (sock_dir / "a.sock").exists()


def test_every_path_is_checked_before_any_device_starts(sock_dir, tmp_path):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    for p in (a, b):
        p.write_bytes(bytes(SECTORS * 512))
    fd = os.open(b, os.O_RDWR)
    fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    try:
        proc = run_cli("serve", "--mgmt", str(sock_dir / "m.sock"),
                       "--device", f"socket={sock_dir / 'a.sock'},image={a}",
                       "--device", f"socket={sock_dir / 'b.sock'},image={b}")  # fmt: skip
    finally:
        os.close(fd)
    assert_usage_error(proc, f"image {b} is in use by another process")
    assert "listening" not in proc.stderr and "dataplane thread" not in proc.stderr
    assert list(sock_dir.iterdir()) == []
