"""``dataplane devices``, ``add-device`` and ``remove-device`` against a live server, in both
output modes; their mistakes (one line, exit 2); and what a newcomer met on the management
socket (issue 18): values in effect, one key spelling, names in messages and log lines."""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import shutil
import socket
import struct
from pathlib import Path

import pytest
from clitest import assert_usage_error, run_cli
from guest_support import start_dataplane
from waits import wait_until

from dataplane import test_hooks
from dataplane.cli import mgmt_socket
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.serve.mgmt_client import MgmtClient

MIB = 1 << 20


class Live:
    """A ``serve --mgmt`` with two devices: vblk0 (a.sock) and logs (b.sock, 10M bps limit)."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = short_socket_dir()
        self.tmp = tmp_path
        self.mgmt = self.dir / "m.sock"
        self.images = {n: tmp_path / f"{n}.img" for n in ("a", "b", "c")}
        for p in self.images.values():
            p.write_bytes(bytes(MIB))
        self.backend = start_dataplane(
            self.dir / "a.sock", self.images["a"], aio="threads", log_path=tmp_path / "serve.log",
            num_queues=2,
            extra_args=(
                "--mgmt", str(self.mgmt), "--device",
                f"socket={self.dir / 'b.sock'},image={self.images['b']},name=logs,"
                "bps-limit=10M,aio=threads",
            ),
        )  # fmt: skip
        wait_until(lambda: "management socket listening" in self.log(), "the management socket")

    def log(self) -> str:
        return self.backend.log_text()

    def cli(self, *args: str, env: dict[str, str] | None = None):
        return run_cli(*args, env=env)

    def stop(self) -> int:
        rc = self.backend.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc


@pytest.fixture
def live(tmp_path, monkeypatch):
    monkeypatch.setenv(test_hooks.ENV, "1")
    monkeypatch.delenv("DATAPLANE_MGMT", raising=False)
    server = Live(tmp_path)
    yield server
    assert server.stop() == 0, server.log()


def ok(proc):
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stdout


def test_devices_as_a_table_and_as_json(live):
    m = str(live.mgmt)
    lines = ok(live.cli("devices", "--mgmt", m)).splitlines()
    assert lines[0].split() == [
        "NAME", "STATE", "SIZE", "QUEUES/THREADS", "RO", "LIMITS", "DIRTY-LOG", "SOCKET", "IMAGE",
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"vblk0", "logs"}
    assert rows["vblk0"].split()[:6] == ["vblk0", "listening", "1", "MiB", "2/1", "no"]
    assert "bps 10 MiB/s" in rows["logs"] and f"{live.images['b']} (file)" in rows["logs"]
    assert ok(live.cli("devices", m)) == "\n".join(lines) + "\n"  # SOCKET as stat takes it
    devices = {d["name"]: d for d in json.loads(ok(live.cli("devices", "--mgmt", m, "--json")))}
    a = devices["vblk0"]
    # The values in effect, not null where a key was left out.
    assert a["serial"] == "a.img" and a["poll-us"] == 64 and a["socket-mode"] == "0600"
    assert a["socket-owner"] == pwd.getpwuid(os.geteuid()).pw_name
    assert a["socket-group"] == grp.getgrgid(os.getegid()).gr_name
    assert devices["logs"]["bps-limit"] == 10 * MIB
    assert a["state"] == "serving" and a["connected"] is False and a["size"] == MIB


def test_a_connected_device_shows_connected(live):
    from dataplane.guest.virtio_blk import BlkDriver

    with BlkDriver(live.dir / "a.sock"):
        out = ok(live.cli("devices", "--mgmt", str(live.mgmt)))
    assert next(ln for ln in out.splitlines() if ln.startswith("vblk0")).split()[1] == "connected"


def test_add_and_remove_in_both_output_modes(live):
    m = str(live.mgmt)
    c_sock, c_img = live.dir / "c.sock", live.images["c"]
    out = ok(live.cli("add-device", "--mgmt", m, f"socket={c_sock}", f"image={c_img}",
                      "name=extra", "read-only"))  # fmt: skip
    assert out.strip() == (
        f"extra: listening on {c_sock}: file {c_img}, 1 MiB, 1 queue(s) on 1 thread(s), read-only"
    )
    assert c_sock.is_socket()
    assert ok(live.cli("remove-device", "--mgmt", m, "extra")).strip() == "extra: removed"
    assert not c_sock.exists()
    # The same with --json, and the keys comma-separated as --device takes them.
    added = json.loads(ok(live.cli("add-device", "--mgmt", m, "--json",
                                   f"socket={c_sock},image={c_img},name=extra")))  # fmt: skip
    assert added["name"] == "extra" and added["state"] == "serving" and added["read-only"] is False
    assert json.loads(ok(live.cli("remove-device", "--mgmt", m, "--json", "extra"))) == {
        "removed": "extra"
    }
    assert "added at runtime: extra" in live.log() and "extra: removed" in live.log()


def test_mgmt_from_the_environment(live):
    env = {**os.environ, "DATAPLANE_MGMT": str(live.mgmt)}
    assert "vblk0" in ok(live.cli("devices", env=env))
    assert "vblk0" in ok(live.cli("stat", "--count", "1", "--interval", "0.1", env=env))
    assert ok(live.cli("remove-device", "logs", env=env)).strip() == "logs: removed"


def test_mgmt_at_the_default_path(monkeypatch, tmp_path):
    """A non-root user's default: $XDG_RUNTIME_DIR/dataplane/mgmt.sock, used when a server
    listens there; root's is /run/dataplane/mgmt.sock (not touched here: a shared host)."""
    monkeypatch.delenv("DATAPLANE_MGMT", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = tmp_path / "dataplane" / "mgmt.sock"
    assert mgmt_socket.default_path() == path
    with pytest.raises(Exception, match="no management socket: pass --mgmt SOCK"):
        mgmt_socket.resolve(None)
    assert mgmt_socket.serve_path() == path and path.parent.is_dir()  # serve --mgmt made it
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    try:
        assert mgmt_socket.resolve(None) == path
    finally:
        listener.close()
    monkeypatch.setenv("DATAPLANE_MGMT", "/elsewhere.sock")
    assert mgmt_socket.resolve(None) == Path("/elsewhere.sock") == mgmt_socket.serve_path()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert mgmt_socket.default_path() == Path("/run/dataplane/mgmt.sock")


def test_serve_mgmt_without_a_path_uses_dataplane_mgmt(tmp_path, monkeypatch):
    d = short_socket_dir()
    monkeypatch.setenv("DATAPLANE_MGMT", str(d / "env.sock"))
    img = tmp_path / "a.img"
    img.write_bytes(bytes(MIB))
    b = start_dataplane(d / "a.sock", img, aio="threads", log_path=tmp_path / "log",
                        extra_args=("--mgmt",))  # fmt: skip
    try:
        wait_until(lambda: (d / "env.sock").is_socket(), "the management socket")
        assert "vblk0" in ok(run_cli("devices"))
    finally:
        assert b.stop() == 0
        shutil.rmtree(d, ignore_errors=True)


def test_mistakes_are_one_line_and_exit_2(live, tmp_path):
    m = str(live.mgmt)
    # No server: no socket there, or a socket file nobody listens on.
    assert_usage_error(run_cli("devices", "--mgmt", str(tmp_path / "none.sock")),
                       "no such socket", "dataplane serve --mgmt")  # fmt: skip
    stale = live.dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    assert_usage_error(run_cli("devices", "--mgmt", str(stale)), "cannot connect")
    # The wrong kind of socket: a device's vhost-user socket. Its server says so in the log.
    assert_usage_error(run_cli("devices", "--mgmt", str(live.dir / "a.sock")),
                       "is not a dataplane management socket", "vhost-user")  # fmt: skip
    wait_until(lambda: "knocked on a device's vhost-user socket" in live.log(), "the server's hint")
    # No such device: the message lists those there are.
    assert_usage_error(run_cli("remove-device", "--mgmt", m, "nosuch"),
                       "no device named 'nosuch' (devices: vblk0, logs)")  # fmt: skip
    assert_usage_error(run_cli("stat", m, "--device", "nosuch", "--json"),
                       "(devices: vblk0, logs)")  # fmt: skip
    assert_usage_error(run_cli("set-limits", m, "nosuch", "iops-limit=5"), "(devices: vblk0, logs)")
    # Bad keys and values, refused before (or by) the server.
    c = f"socket={live.dir / 'c.sock'}"
    assert_usage_error(run_cli("add-device", "--mgmt", m, c, "image=/x.img", "colour=blue"),
                       "unknown key 'colour'", "num-queues")  # fmt: skip
    assert_usage_error(run_cli("add-device", "--mgmt", m, c, f"image={live.images['c']}",
                               "num-queues=0"), "num-queues=0 must be positive")  # fmt: skip
    assert_usage_error(run_cli("add-device", "--mgmt", m, c, "image=c.img"),
                       "image=c.img is a relative path", os.path.abspath("c.img"))  # fmt: skip
    assert_usage_error(run_cli("add-device", "--mgmt", m, c, f"image={live.images['c']}",
                               "name=logs"), "a device named 'logs' is served already")  # fmt: skip
    assert not (live.dir / "c.sock").exists()


def test_no_management_socket_anywhere(tmp_path, monkeypatch):
    if os.geteuid() == 0 and Path("/run/dataplane/mgmt.sock").exists():
        pytest.skip("a server listens at root's default path on this host")
    env = {k: v for k, v in os.environ.items() if k != "DATAPLANE_MGMT"}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    for args in (["devices"], ["remove-device", "x"], ["add-device", "name=x"], ["stat"]):
        assert_usage_error(run_cli(*args, env=env), "no management socket", "$DATAPLANE_MGMT")


def test_relative_paths_to_the_server_are_refused_in_json_too(live):
    with MgmtClient(live.mgmt) as c:
        resp = c.request("add-device", spec={"socket": "rel.sock", "image": "/abs.img"})
    assert not resp["ok"] and "socket=rel.sock is a relative path" in resp["error"]


def test_a_failed_device_shows_failed_with_its_reason(live):
    with MgmtClient(live.mgmt) as c:
        assert c.call("test-kill-thread", name="logs") == {"ok": True}
    out = ok(live.cli("devices", "--mgmt", str(live.mgmt)))
    assert next(ln for ln in out.splitlines() if ln.startswith("logs ")).split()[1] == "failed"
    assert "logs failed: dataplane thread dp/logs/0 died" in out
    table = ok(live.cli("stat", str(live.mgmt), "--count", "1", "--interval", "0.1"))
    lines = table.splitlines()
    assert lines[1].split()[-3:] == ["thrott/s", "size", "state"]
    vblk0 = next(ln for ln in lines if ln.split()[:2] == ["vblk0", "all"])
    assert vblk0.endswith("1 MiB listening")
    logs = next(ln for ln in lines if ln.split()[:2] == ["logs", "all"])
    assert logs.endswith("1 MiB failed")
    assert any(ln.startswith("logs failed: dataplane thread dp/logs/0 died") for ln in lines)
    ok(live.cli("remove-device", "--mgmt", str(live.mgmt), "logs"))


def test_stats_keys_are_kebab_case(live):
    def keys(value, where=""):
        if isinstance(value, dict):
            for k, v in value.items():
                yield f"{where}/{k}", k
                yield from keys(v, f"{where}/{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from keys(v, f"{where}[{i}]")

    with MgmtClient(live.mgmt) as c:
        stats = c.call("stats")["devices"]
        devices = c.call("devices")["devices"]
    assert set(stats) == {"vblk0", "logs"}  # device names stay as they are
    for where, k in [*keys(stats["vblk0"]), *keys(devices)]:
        assert "_" not in k, where
    assert "throttled-ns" in stats["logs"] and "image-kind" in stats["vblk0"]
    assert "write-zeroes" in stats["vblk0"]["queues"][0]["requests"]
    # stat's table reads the same counters under either spelling.
    assert "vblk0" in ok(live.cli("stat", str(live.mgmt), "--count", "1", "--interval", "0.1"))


def test_sizes_with_suffixes_live(live):
    m = str(live.mgmt)
    out = ok(live.cli("set-limits", m, "vblk0", "read-bps-limit=1.5M", "write-bps-limit=2MiB"))
    assert f"read-bps-limit={3 * MIB // 2}" in out and f"write-bps-limit={2 * MIB}" in out
    assert ok(live.cli("resize", m, "vblk0", "2M")).startswith(f"vblk0: {2 * MIB} bytes")
    assert live.images["a"].stat().st_size == 2 * MIB
    with MgmtClient(live.mgmt) as c:
        assert c.call("resize", name="vblk0", size="3MiB")["device"]["size"] == 3 * MIB
        resp = c.request("resize", name="vblk0", size="lots")
    assert not resp["ok"] and "not a number of bytes (e.g. 4096, 4k" in resp["error"]
    assert_usage_error(run_cli("set-limits", m, "vblk0", "bps-limit=fast"),
                       "bps-limit='fast' is not a number of bytes per second")  # fmt: skip


def test_a_vhost_user_frontend_on_the_management_socket_is_named_in_the_log(live):
    header = struct.pack("<III", 1, 1, 0)  # GET_FEATURES, as QEMU opens a session
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(str(live.mgmt))
        s.sendall(header)
        assert json.loads(s.makefile().readline()) == {"ok": False, "error": "not a JSON line"}
    assert "a vhost-user frontend such as QEMU?): give it a device's socket=" in live.log()


def test_shutdown_summaries_name_the_thread(live):
    assert live.stop() == 0
    log = live.log()
    for thread in ("dp/vblk0/0", "dp/logs/0"):
        assert f"{thread}: native datapath: " in log
        assert f"{thread}: requests by queue: " in log
    live.stop = lambda: 0  # stopped already


def test_read_only_advice_names_each_interface(live, tmp_path):
    img = tmp_path / "held.img"
    img.write_bytes(bytes(MIB))
    fd = os.open(img, os.O_RDWR)
    try:
        fcntl.fcntl(fd, 37, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0))  # F_OFD_SETLK
        with MgmtClient(live.mgmt) as c:
            resp = c.request("add-device", spec={"socket": str(live.dir / "h.sock"),
                                                 "image": str(img)})  # fmt: skip
        assert not resp["ok"]
        assert (
            'serve it read-only ("read-only": true; read-only=on with dataplane add-device)'
            in (resp["error"])
        )
        proc = run_cli("serve", "--socket", str(live.dir / "h.sock"), "--image", str(img))
        assert_usage_error(proc, "(--read-only; read-only=on in --device; read-only = true in "
                           "--config)")  # fmt: skip
    finally:
        os.close(fd)


def test_the_table_shows_dirty_logging_where_the_server_reports_it():
    from dataplane.cli.device_ops import table

    base = {
        "name": "a", "size": 3 << 29, "num-queues": 2, "threads": [{}, {}], "socket": "/s",
        "image": "/a.img", "image-kind": "file", "state": "serving", "connected": True,
    }  # fmt: skip
    plain = table([base])
    assert "DIRTY-LOG" not in plain and "1.5 GiB" in plain and "connected" in plain
    logged = table([{**base, "dirty-log": True, "dirty-pages-logged": 42},
                    {**base, "name": "b", "dirty-log": False, "state": "failed",
                     "error": "its thread died"}])  # fmt: skip
    head, a, b, why = logged.splitlines()
    assert "DIRTY-LOG" in head and "on (42 pages)" in a and " off " in b
    assert b.split()[1] == "failed" and why == "b failed: its thread died"
    assert table([]).startswith("no devices")
