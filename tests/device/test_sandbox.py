"""``serve --sandbox`` and ``--user``: every thread filtered (``Seccomp: 2``) with no new
privileges, I/O on every engine and both datapaths inside the lists, a forbidden call on a
dataplane thread killing the process (SIGSYS) or only logged, and the switch to another user.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from clitest import assert_usage_error, run_cli
from guest_support import (
    AIO_ENGINES,
    GUEST_TIMEOUT,
    IMAGE_SIZE,
    assert_guest_ok,
    backend_fixture,  # noqa: F401  (the "backend" fixture)
    guest_image_fixture,  # noqa: F401  (the "guest_image" fixture)
    make_pattern_image,
    start_dataplane,
    watch,
)
from waits import WAIT_S, wait_until

from dataplane import test_hooks
from dataplane.device.sandbox import control, iothread
from dataplane.guest.harness.qemu import run_guest
from dataplane.guest.harness.workloads import verify_script
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.serve.mgmt_client import MgmtClient

SECTORS = 2048


def task_status(pid: int) -> dict[str, dict[str, str]]:
    """Each thread of ``pid``: its name and the fields of /proc/PID/task/TID/status."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        out[task.name] = {k: v.strip() for k, v in fields.items()}
    return out


def assert_confined(pid: int) -> dict[str, dict[str, str]]:
    tasks = task_status(pid)
    for tid, st in tasks.items():
        assert st["Seccomp"] == "2", f"thread {tid} ({st['Name']}) is not filtered: {st}"
        assert st["NoNewPrivs"] == "1", f"thread {tid} ({st['Name']}) may gain privileges"
    dp = [st for st in tasks.values() if st["Name"].startswith("dp/")]
    assert dp, f"no dataplane thread among {[st['Name'] for st in tasks.values()]}"
    for st in dp:  # the control list and its own on top
        assert int(st["Seccomp_filters"]) >= 2, st
    return tasks


def start(tmp_path: Path, sock_dir: Path, *args: str, aio: str = "io_uring", name="a"):
    img = tmp_path / f"{name}.img"
    img.write_bytes(bytes(SECTORS * 512))
    return img, start_dataplane(
        sock_dir / f"{name}.sock", img, aio=aio, cache="writeback",
        log_path=tmp_path / f"{name}.log",
        extra_args=("--mgmt", str(sock_dir / "m.sock"), *args),
    )  # fmt: skip


def io_round(sock: Path) -> None:
    data = os.urandom(8192)
    with BlkDriver(sock) as d:
        assert d.write(8, data).status == 0
        assert d.read(8, 8192).data == data
        assert d.flush().status == 0
        assert d.discard(64, 8).status == 0
        assert d.write_zeroes(128, 8).status == 0


@pytest.mark.parametrize("datapath", ["native", "python"])
@pytest.mark.parametrize("aio", AIO_ENGINES)
def test_io_on_every_engine_stays_inside_the_lists(tmp_path, sock_dir, aio, datapath):
    img, b = start(tmp_path, sock_dir, "--sandbox", "on", "--datapath", datapath, aio=aio)
    assert_confined(b.proc.pid)
    for _ in range(2):  # a reconnect: the second connection starts the rings again
        io_round(sock_dir / "a.sock")
    # A device added after confinement: its thread loads its own list as it starts.
    extra = tmp_path / "c.img"
    extra.write_bytes(bytes(SECTORS * 512))
    with MgmtClient(sock_dir / "m.sock") as m:
        spec = {"socket": str(sock_dir / "c.sock"), "image": str(extra), "name": "c", "aio": aio}
        reply = m.request("add-device", spec=spec)
        assert reply["ok"], reply
    io_round(sock_dir / "c.sock")
    tasks = assert_confined(b.proc.pid)
    assert any(st["Name"] == "dp/c/0" for st in tasks.values())
    with MgmtClient(sock_dir / "m.sock") as m:
        assert m.request("remove-device", name="c")["ok"]
    assert b.stop() == 0, b.log_text()
    assert "sandbox on: seccomp allow-lists loaded" in b.log_text()


@pytest.fixture
def hooks(monkeypatch):
    monkeypatch.setenv(test_hooks.ENV, "1")


def forbidden_call(sock_dir: Path) -> dict:
    with MgmtClient(sock_dir / "m.sock") as m:
        return m.request("test-forbidden-call", name="vblk0")


def test_forbidden_call_on_a_dataplane_thread_kills_the_process(tmp_path, sock_dir, hooks):
    assert "getppid" not in iothread.ALLOW and "getppid" in control.ALLOW
    _, b = start(tmp_path, sock_dir, "--sandbox", "on")
    try:
        reply = forbidden_call(sock_dir)
    except (ConnectionError, OSError, ValueError):
        pass  # the process died before it could answer, as it should
    else:
        pytest.fail(f"the backend answered {reply} instead of dying")
    wait_until(lambda: b.proc.poll() is not None, "the backend to be killed", WAIT_S)
    assert b.proc.returncode == -signal.SIGSYS, b.log_text()


def _dmesg() -> list[str] | None:
    proc = subprocess.run(["dmesg"], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines() if proc.returncode == 0 else None


def test_forbidden_call_in_log_mode_is_logged_and_survived(tmp_path, sock_dir, hooks):
    before = _dmesg()
    _, b = start(tmp_path, sock_dir, "--sandbox", "log")
    reply = forbidden_call(sock_dir)
    assert reply["ok"] and reply["ppid"] == os.getpid(), reply
    io_round(sock_dir / "a.sock")
    assert b.proc.poll() is None
    if before is not None:  # dmesg readable here: the kernel's line names the call (110)
        pid = b.proc.pid

        def logged() -> bool:
            # New lines by content, not by count: the kernel's log is a ring that may be full.
            seen = set(before)
            new = [line for line in _dmesg() or [] if line not in seen]
            return any(re.search(rf"type=1326 .*pid={pid} .*syscall=110 ", line) for line in new)

        wait_until(logged, "the kernel to log getppid (syscall 110) as a seccomp event")
    assert b.stop() == 0, b.log_text()


def test_on_is_the_default(tmp_path, sock_dir, monkeypatch):
    monkeypatch.delenv("DATAPLANE_SANDBOX", raising=False)
    _, b = start(tmp_path, sock_dir)
    assert_confined(b.proc.pid)
    assert b.stop() == 0


def test_off_loads_no_filter_but_sets_no_new_privs(tmp_path, sock_dir):
    _, b = start(tmp_path, sock_dir, "--sandbox", "off")
    for st in task_status(b.proc.pid).values():
        assert st["Seccomp"] == "0" and st["NoNewPrivs"] == "1", st
    assert b.stop() == 0


def test_every_list_entry_is_a_known_call_with_a_reason():
    for table in (control.ALLOW, iothread.ALLOW, *iothread.ENGINE_ALLOW.values()):
        for name, why in table.items():
            assert re.fullmatch(r"[a-z0-9_]+", name) and len(why) > 5, (name, why)
    # libseccomp knows every name: each list loads (log mode) in a child process.
    code = (
        "from dataplane.device import sandbox\n"
        "from dataplane.device.sandbox import control, iothread\n"
        "sandbox.load(sorted(control.ALLOW), log=True, tsync=False)\n"
        "for e in (None, *iothread.ENGINE_ALLOW):\n"
        "    names = {**iothread.ALLOW, **iothread.ENGINE_ALLOW.get(e, {})}\n"
        "    sandbox.load(sorted(names), log=True, tsync=False)\n"
        "print('loaded')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "loaded" in out.stdout, out.stderr


def test_unknown_user_and_bad_mode_are_usage_errors(tmp_path):
    img = tmp_path / "x.img"
    img.write_bytes(bytes(4096))
    sock = str(tmp_path / "x.sock")
    assert_usage_error(
        run_cli("serve", "--socket", sock, "--image", str(img), "--user", "no-such-user-x"),
        "no user 'no-such-user-x'",
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'sandbox = "maybe"\n[[device]]\nsocket = "{sock}"\nimage = "{img}"\n')
    assert_usage_error(run_cli("serve", "--config", str(cfg)), 'sandbox must be "on"')


def _nobody() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("--user needs root to switch users")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody on this host")


def test_user_nobody_every_thread_switches_and_add_device_says_whose_access(tmp_path, sock_dir):
    nobody = _nobody()
    os.chmod(sock_dir, 0o777)  # nobody removes its sockets at exit
    cfg = tmp_path / "c.toml"
    img = tmp_path / "a.img"
    img.write_bytes(bytes(SECTORS * 512))
    cfg.write_text(
        f'user = "nobody"\nsandbox = "on"\nmgmt = "{sock_dir / "m.sock"}"\n'
        f'[[device]]\nsocket = "{sock_dir / "a.sock"}"\nimage = "{img}"\ncache = "writeback"\n'
    )
    img.chmod(0o600)  # root's: opened before the switch
    from dataplane.guest.harness.processes import _spawn, dataplane_command

    argv = [*dataplane_command(), "serve", "--config", str(cfg)]
    b = _spawn("dataplane", argv, sock_dir / "a.sock", tmp_path / "serve.log")
    b.wait_ready(lambda: "running as nobody" in b.log_text(), "logging 'running as'", WAIT_S)
    tasks = assert_confined(b.proc.pid)
    for st in tasks.values():
        assert st["Uid"].split() == [str(nobody.pw_uid)] * 4, st
        assert st["Gid"].split()[0] == str(nobody.pw_gid), st
        assert st["CapEff"] == st["CapPrm"] == "0000000000000000", st
    io_round(sock_dir / "a.sock")
    other = tmp_path / "b.img"
    other.write_bytes(bytes(SECTORS * 512))
    other.chmod(0o600)
    with MgmtClient(sock_dir / "m.sock") as m:
        spec = {"socket": str(sock_dir / "b.sock"), "image": str(other), "name": "b"}
        reply = m.request("add-device", spec=spec)
    assert not reply["ok"] and "as user nobody" in reply["error"], reply
    assert b.stop() == 0, b.log_text()
    assert not (sock_dir / "a.sock").exists()


@pytest.mark.guest
def test_a_real_guest_served_by_nobody_under_the_sandbox(guest_image, backend, tmp_path):
    nobody = _nobody()
    image = make_pattern_image(tmp_path / "disk.img")
    b = backend(image, num_queues=2, extra_args=("--user", "nobody", "--sandbox", "on"))
    os.chmod(b.socket.parent, 0o777)  # nobody removes its socket at exit
    result = run_guest(
        verify_script("/dev/vda"),
        [b.socket],
        image=guest_image,
        timeout=GUEST_TIMEOUT,
        log_path=tmp_path / "console.log",
        abort_check=watch(b),
        num_queues=2,
    )
    assert_guest_ok(result, {"/dev/vda": image}, {"/dev/vda": IMAGE_SIZE})
    for st in assert_confined(b.proc.pid).values():
        assert st["Uid"].split() == [str(nobody.pw_uid)] * 4, st


def test_the_example_unit_rates_ok_with_systemd_analyze_security():
    """The README's score: ``systemd-analyze security --offline=true`` on the example unit."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    unit = Path(__file__).resolve().parents[2] / "examples" / "systemd" / "dataplane@.service"
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 1.4, proc.stdout
