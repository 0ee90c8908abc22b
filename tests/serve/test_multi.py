"""Many devices in one process, queues over threads, pinning, and the management socket.

Real ``dataplane serve`` processes on real sockets; BlkDriver plays QEMU and the guest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clitest import assert_usage_error, run_cli
from guest_support import start_dataplane
from waits import accepts, finishes, wait_until

from dataplane.cli.live_stats import queue_requests, thread_requests
from dataplane.device.iothread import comm_name
from dataplane.device.virtqueue import VRING_DESC_F_NEXT
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.serve.key_values import format_cpus, parse_cpus
from dataplane.serve.mgmt_client import MgmtClient

SECTORS = 4096


def image(tmp_path: Path, name: str, data: bytes | None = None) -> Path:
    p = tmp_path / name
    p.write_bytes(os.urandom(SECTORS * 512) if data is None else data)
    return p


@pytest.fixture
def serve(tmp_path, sock_dir):
    """serve(*extra_args) -> backend with device ``vblk0`` on sock_dir/a.sock, mgmt on m.sock."""
    started = []

    def start(*extra: str, img: Path | None = None):
        b = start_dataplane(
            sock_dir / "a.sock", img or image(tmp_path, "a.img"),
            log_path=tmp_path / f"serve{len(started)}.log",
            extra_args=("--mgmt", str(sock_dir / "m.sock"), *extra),
        )  # fmt: skip
        started.append(b)
        return b

    yield start
    for b in started:
        rc = b.stop()
        assert rc == 0, b.log_text()
        assert not b.socket.exists()
        assert not (sock_dir / "m.sock").exists()


def threads_of(pid: int) -> dict[str, str]:
    """Thread name (comm) -> Cpus_allowed_list, for every thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended after the listing
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out[comm] = line.split(":", 1)[1].strip()
    return out


# -- parsing -------------------------------------------------------------------------------


def test_cpu_list_syntax():
    assert parse_cpus("0:2-3", limit=8) == (0, 2, 3)
    assert parse_cpus("1,0", limit=8) == (1, 0)
    assert parse_cpus([3, 1], limit=8) == (3, 1)
    assert parse_cpus("0-1:1", limit=8) == (0, 1)
    assert format_cpus((0, 2, 3)) == "0:2-3"
    for bad in ("", "a", "3-1", "1-", "-1", True, "0-8", [9]):
        with pytest.raises(ValueError):
            parse_cpus(bad, limit=8)


def test_cpu_lists_name_only_cpus_that_exist_and_parse_in_linear_time():
    # Each would take hours expanded or compared pairwise, and takes microseconds checked first.
    for spec in (f"0-{10**18}", str(10**18), ",".join(["0"] * 100000), [1 << 60]):

        def refused(spec=spec) -> None:
            with pytest.raises(ValueError, match="CPU|CPUs"):
                parse_cpus(spec)

        finishes(refused, f"parse_cpus({str(spec)[:30]!r})")
    assert parse_cpus(f"0-{os.cpu_count() - 1}") == tuple(range(os.cpu_count()))


def test_thread_names_fit_the_kernel_comm():
    assert comm_name("dp/vblk0/1") == "dp/vblk0/1"
    assert comm_name("dp/a-very-long-device/12") == "dp/a-very-lo/12"
    assert all(len(comm_name(f"dp/{'x' * n}/3").encode()) <= 15 for n in range(40))


@pytest.mark.parametrize(
    "device,needle",
    [
        ("socket=S,image=I,bogus=1", "unknown key 'bogus'"),
        ("socket=S", "image= is required"),
        ("socket=S,image=I,num-queues=two", "num-queues='two' is not an integer"),
        ("socket=S,image=I,num-queues=2,iothreads=3", "iothreads=3 is more than the 2 queue"),
        ("socket=S,image=I,num-queues=2,cpus=0,1", "'1' is not KEY=VALUE"),
        ("socket=S,image=I,cpus=4096", "CPU 4096 does not exist"),
        ("socket=S,image=I,queue-size=100", "queue-size=100 must be a power of two"),
        ("socket=S,image=I,aio=spdk", "aio='spdk' is not one of"),
        ("socket=S,image=I,read-only=maybe", "is not on or off"),
        ("socket=S,image=I,name=a/b", "name='a/b' must be"),
        ("socket=S,image=I,poll-us=5,datapath=python", "poll-us= needs the C datapath"),
        ("socket=S,image=I,aio=null,aio=threads", "aio is given twice"),
    ],
)
def test_bad_device_spec(sock_dir, device, needle):
    spec = device.replace("S", str(sock_dir / "x.sock")).replace("I", str(sock_dir / "x.img"))
    assert_usage_error(run_cli("serve", "--device", spec), "--device #1", needle)
    assert list(sock_dir.iterdir()) == []


def test_duplicate_socket_image_or_name(sock_dir, tmp_path):
    a, b = image(tmp_path, "a.img"), image(tmp_path, "b.img")
    s = sock_dir / "s.sock"
    proc = run_cli("serve", "--socket", str(s), "--image", str(a),
                   "--device", f"socket={s},image={b}")  # fmt: skip
    assert_usage_error(proc, "same socket")
    same_a = tmp_path / ".." / tmp_path.name / "a.img"  # another spelling of the same file
    proc = run_cli("serve", "--device", f"socket={s},image={a}",
                   "--device", f"socket={sock_dir / 't.sock'},image={same_a}")  # fmt: skip
    assert_usage_error(proc, "same image")
    proc = run_cli("serve", "--device", f"socket={s},image={a},name=n",
                   "--device", f"socket={sock_dir / 't.sock'},image={b},name=n")  # fmt: skip
    assert_usage_error(proc, "two devices are named 'n'")
    assert list(sock_dir.iterdir()) == []


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--socket", "s"], "--image is required"),
        (["--aio", "null", "--device", "socket=s,image=i"], "--aio describes the --socket/--image"),
        (["--socket", "s", "--image", "i", "--iothreads", "2"], "--iothreads 2 is more than"),
        (["--socket", "s", "--image", "i", "--cpus", "0,x"], "is not a CPU list"),
        (["--socket", "s", "--image", "i", "--cpus", "4096"], "CPU 4096 does not exist"),
    ],
)
def test_bad_single_device_flags(args, needle):
    assert_usage_error(run_cli("serve", *args), needle)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[[device]]\nsocket = 'S'\nimage = 'I'\nnum_queues = 'x'\n", "[[device]] #1"),
        ("[[device]]\nsocket = 'S'\nimage = 'I'\nwat = 1\n", "unknown key 'wat'"),
        ("[[device]]\nsocket = 'S'\nimage = 'I'\ncpus = [4096]\n", "CPU 4096"),
        ("[[device]]\nsocket = 'S'\n", "image= is required"),
        ("devices = 1\n", "unknown top-level key 'devices'"),
        ("[[device]\n", "not valid TOML"),
        ("device = 3\n", "[[device]] tables"),
        ("mgmt = 3\n", "mgmt must be a socket path"),
    ],
)
def test_bad_config_file(tmp_path, text, needle):
    cfg = tmp_path / "dp.toml"
    cfg.write_text(text)
    assert_usage_error(run_cli("serve", "--config", str(cfg)), f"--config {cfg}", needle)


def test_config_file_missing(tmp_path):
    assert_usage_error(run_cli("serve", "--config", str(tmp_path / "no.toml")), "no such file")


def test_stat_needs_a_management_socket(serve, sock_dir):
    assert_usage_error(run_cli("stat", str(sock_dir / "nope.sock")), "no such socket")
    b = serve()
    # The device's vhost-user socket is not a management socket.
    assert_usage_error(run_cli("stat", str(b.socket)), "not a dataplane management socket")


# -- serving ---------------------------------------------------------------------------------


def test_config_file_serves_every_device(tmp_path, sock_dir):
    a, b = image(tmp_path, "a.img"), image(tmp_path, "b.img")
    cfg = tmp_path / "dp.toml"
    cfg.write_text(
        f'mgmt = "{sock_dir / "m.sock"}"\n'
        f'[[device]]\nname = "first"\nsocket = "{sock_dir / "a.sock"}"\nimage = "{a}"\n'
        f'num-queues = 2\niothreads = 2\ncpus = "0"\n'
        f'[[device]]\nsocket = "{sock_dir / "b.sock"}"\nimage = "{b}"\nread-only = true\n'
        'aio = "threads"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataplane", "serve", "--config", str(cfg)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: accepts(sock_dir / "m.sock"), "the management socket")
        with MgmtClient(sock_dir / "m.sock") as m:
            devs = {d["name"]: d for d in m.call("devices")["devices"]}
        assert list(devs) == ["first", "vblk0"]
        assert devs["first"]["iothreads"] == 2 and devs["first"]["cpus"] == [0]
        assert [t["queues"] for t in devs["first"]["threads"]] == [[0], [1]]
        assert devs["vblk0"]["read-only"] and devs["vblk0"]["engine"] == "threads"
        with BlkDriver(sock_dir / "b.sock") as d:
            assert d.write(0, b"x" * 512).status == 1  # read-only
            assert d.read(0, 512).data == b.read_bytes()[:512]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert sorted(p.name for p in sock_dir.iterdir()) == []


def test_queues_spread_over_pinned_named_threads(serve):
    cpus = sorted(os.sched_getaffinity(0))
    b = serve("--num-queues", "4", "--iothreads", "2", "--cpus", format_cpus(cpus[:2]))
    threads = threads_of(b.pid)
    dp = {name: allowed for name, allowed in threads.items() if name.startswith("dp/")}
    want = [cpus[0], cpus[1 % len(cpus)]]
    assert dp == {"dp/vblk0/0": str(want[0]), "dp/vblk0/1": str(want[1])}, threads
    with BlkDriver(b.socket, num_queues=4) as d:
        for q in range(4):
            assert d.write(8 * q, bytes([q + 1]) * 4096, queue=q).status == 0
        for q in range(4):
            assert d.read(8 * q, 4096, queue=3 - q).data == bytes([q + 1]) * 4096
        with MgmtClient(b.socket.parent / "m.sock") as m:
            stats = m.call("stats")["devices"]["vblk0"]
            info = m.call("devices")["devices"][0]
    assert [t["queues"] for t in info["threads"]] == [[0, 2], [1, 3]]
    assert [t["name"] for t in info["threads"]] == ["dp/vblk0/0", "dp/vblk0/1"]
    per_thread = thread_requests(stats)
    # 8 requests on queues 0 and 2 (thread 0) and 8 on queues 1 and 3 (thread 1).
    assert per_thread == {"dp/vblk0/0": 4, "dp/vblk0/1": 4} or not any(per_thread.values())
    per_queue = queue_requests(stats)
    if per_queue:
        assert per_queue == {0: 2, 1: 2, 2: 2, 3: 2}, stats


def test_hostile_ring_on_one_device_leaves_the_other_serving(serve, tmp_path, sock_dir):
    b_img = image(tmp_path, "b.img")
    b = serve("--device", f"socket={sock_dir / 'b.sock'},image={b_img},name=good")
    with BlkDriver(b.socket) as bad, BlkDriver(sock_dir / "b.sock") as good:
        assert good.write(0, b"\x5a" * 4096).status == 0
        # Device vblk0, queue 0: a descriptor chain that loops (0 -> 1 -> 0 -> ...).
        ring = bad.queues[0].ring
        hdr = bad.ram.alloc(16)
        ring.write_desc(0, hdr, 16, VRING_DESC_F_NEXT, 1)
        ring.write_desc(1, hdr, 16, VRING_DESC_F_NEXT, 0)
        ring.publish([0])
        bad.kick()
        wait_until(lambda: "queue 0 broken by guest" in b.log_text(), "the queue to break")
        # With two devices in the log, the line names the device's thread (issue 18).
        assert "dp/vblk0/0: queue 0 broken by guest" in b.log_text()
        # The other device, and the process, go on serving.
        for i in range(16):
            data = os.urandom(4096)
            assert good.write(8 * i, data).status == 0
            assert good.read(8 * i, 4096).data == data
        assert b.proc.poll() is None
    assert "ChainTooLong" in b.log_text()
    # A new connection to the broken device starts afresh.
    with BlkDriver(b.socket) as again:
        assert again.read(0, 512).status == 0


def test_runtime_add_and_remove(serve, tmp_path, sock_dir):
    b = serve()
    new_img = image(tmp_path, "new.img")
    new_sock = sock_dir / "new.sock"
    with MgmtClient(sock_dir / "m.sock") as m:
        # Mistakes answer ok=false and leave the connection usable.
        assert m.request("add-device", spec={"socket": str(new_sock)}) == {
            "ok": False,
            "error": "add-device: image= is required",
        }
        dup = m.request("add-device", spec={"socket": str(b.socket), "image": str(new_img)})
        assert not dup["ok"] and "same socket" in dup["error"]
        assert not m.request("remove-device", name="nope")["ok"]
        assert not m.request("frobnicate")["ok"]
        m.sock.sendall(b"this is not json\n")
        resp = m.read_response()
        assert resp["ok"] is False and "JSON" in resp["error"]
        assert [d["name"] for d in m.call("devices")["devices"]] == ["vblk0"]

        added = m.call(
            "add-device",
            spec={"socket": str(new_sock), "image": str(new_img), "name": "added",
                  "num-queues": 2, "iothreads": 2, "cpus": "0"},
        )["device"]  # fmt: skip
        assert added["name"] == "added" and len(added["threads"]) == 2
        # (each thread names itself first thing it runs, a moment after it started)
        wait_until(
            lambda: {"dp/added/0", "dp/added/1"} <= set(threads_of(b.pid)),
            "the added device's threads to be named",
        )
        with BlkDriver(new_sock, num_queues=2) as d:
            for q in (0, 1):
                assert d.write(16 * q, bytes([7 + q]) * 8192, queue=q).status == 0
                assert d.read(16 * q, 8192, queue=1 - q).data == bytes([7 + q]) * 8192
            assert d.flush().status == 0
            stats = m.call("stats", name="added")["devices"]
            assert list(stats) == ["added"]
            if queue_requests(stats["added"]):
                assert queue_requests(stats["added"]) == {0: 3, 1: 2}
            text = m.call("metrics")["text"]
            assert 'device="added"' in text and 'device="vblk0"' in text
            # Remove it while this frontend is connected: the connection is dropped.
            assert m.call("remove-device", name="added") == {"ok": True}
            assert not new_sock.exists()
            assert d.fe.sock.recv(1) == b""
        # (join() returns a moment before the kernel thread is gone)
        wait_until(
            lambda: not any(t.startswith("dp/added/") for t in threads_of(b.pid)),
            "the removed device's threads to exit",
        )
        assert [d["name"] for d in m.call("devices")["devices"]] == ["vblk0"]
        # The image lock went with it: the same image can be added again.
        assert m.call("add-device", spec={"socket": str(new_sock), "image": str(new_img)})
        with BlkDriver(new_sock) as d:
            assert d.read(0, 8192).data == bytes([7]) * 8192
    with BlkDriver(b.socket) as d:
        assert d.read(0, 512).status == 0
    assert new_img.read_bytes()[16 * 512 : 32 * 512] == bytes([8]) * 8192
    assert "added: removed" in b.log_text()


def test_stat_view_and_json(serve, sock_dir):
    b = serve("--num-queues", "2", "--iothreads", "2")
    with BlkDriver(b.socket, num_queues=2) as d:
        for q in (0, 1):
            assert d.write(q, b"\1" * 512, queue=q).status == 0
        proc = run_cli("stat", str(sock_dir / "m.sock"), "--json")
        assert proc.returncode == 0, proc.stderr
        snap = json.loads(proc.stdout)
        assert snap["ok"] and list(snap["devices"]) == ["vblk0"]
        proc = run_cli("stat", str(sock_dir / "m.sock"), "--count", "2", "--interval", "0.2")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert sum(line.startswith("dataplane stat:") for line in lines) == 2
        assert any(line.split()[:2] == ["vblk0", "all"] for line in lines), proc.stdout
        proc = run_cli("stat", str(sock_dir / "m.sock"), "--prometheus")
        assert proc.returncode == 0 and 'device="vblk0"' in proc.stdout
