"""``dataplane bench``: the ring-replay benchmark against real backends (short runs)."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from clitest import assert_usage_error, run_cli
from guest_support import short_socket_dir, start_dataplane
from waits import WAIT_S

from dataplane.errors import UsageError
from dataplane.guest.bench import hist
from dataplane.guest.bench.trace import KINDS, TraceWriter, read_trace
from dataplane.guest.clib import ffi, lib
from dataplane.json_keys import snake_keys

IMAGE_SIZE = 16 << 20
HAVE_QSD = shutil.which("qemu-storage-daemon") is not None
HAVE_FIO = shutil.which("fio") is not None
needs_qsd = pytest.mark.skipif(
    not HAVE_QSD, reason="qemu-storage-daemon not installed (Debian package qemu-system-x86)"
)
needs_fio = pytest.mark.skipif(not HAVE_FIO, reason="fio not installed (Debian package fio)")


def bench(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """``dataplane bench ARGS``, one round unless ARGS say (the default is tested on its own)."""
    if not any(a.startswith("--repeat") for a in args):
        args = (*args, "--repeat", "1")
    return run_cli("bench", *args, env=env, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "disk.img"
    with p.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    return p


def load(path: Path) -> dict:
    """The --json document, every key checked to be kebab-case, in Python's names."""
    doc = json.loads(path.read_text())

    def keys(value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield k
                yield from keys(v)
        elif isinstance(value, list):
            for v in value:
                yield from keys(v)

    assert not [k for k in keys(doc) if "_" in k], "a snake_case key in the --json document"
    return snake_keys(doc)


def check_schema(doc: dict, targets: list[str], rounds: int) -> None:
    assert doc["schema"] == "dataplane-bench/2"
    assert [r["target"] for r in doc["results"]] == targets
    for r in doc["results"]:
        assert isinstance(r["ios"], int) and r["ios"] > 0
        assert r["iops"] > 0 and r["bw_mib_s"] > 0
        assert set(r["lat_us"]) >= {"p50", "p99", "p999"}
        assert 0 < r["lat_us"]["p50"] <= r["lat_us"]["p99"] <= r["lat_us"]["p999"]
        assert isinstance(r["backend_cpu_s"], float) and r["backend_cpu_s"] >= 0
        assert sum(r["ops"].values()) == r["ios"]
        assert set(r["ops"]) == set(KINDS)
        assert len(r["rounds"]) == rounds
        assert sum(x["ios"] for x in r["rounds"]) == r["ios"]
        assert r["ratio"]["iops"] == pytest.approx(r["iops"] / doc["results"][0]["iops"])
    assert doc["results"][0]["ratio"]["iops"] == 1.0


# --- verify against real backends ----------------------------------------------


@pytest.mark.parametrize("aio", ["io_uring", "native", "threads"])
def test_verify_ours(image: Path, tmp_path: Path, aio: str) -> None:
    out = tmp_path / "r.json"
    proc = ok(
        bench(
            *f"--target ours --image {image} --aio {aio} --rw randrw --iodepth 8 --runtime 1"
            f" --verify --json {out}".split()
        )
    )
    assert "ours" in proc.stdout
    (r,) = load(out)["results"]
    assert r["ops"]["read"] > 0 and r["ops"]["write"] > 0


@pytest.mark.parametrize("aio", ["io_uring", "native", "threads"])
@pytest.mark.parametrize("notify", ["irq", "poll"])
def test_verify_ours_misaligned_buffers(image: Path, tmp_path: Path, aio: str, notify: str) -> None:
    """Buffers only 2-byte aligned, O_DIRECT: every request goes through a bounce buffer."""
    out = tmp_path / "r.json"
    ok(
        bench(
            *f"--target ours --image {image} --aio {aio} --cache none --rw randrw --iodepth 8"
            f" --bs 8k --runtime 1 --buf-align 2 --notify {notify} --verify --json {out}".split()
        )
    )
    doc = load(out)
    assert doc["workload"]["buf_align"] == 2 and doc["workload"]["notify"] == notify
    (r,) = doc["results"]
    assert r["ops"]["read"] > 0 and r["ops"]["write"] > 0


@needs_qsd
def test_verify_qsd_two_queues(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    ok(
        bench(
            *f"--target qsd --image {image} --num-queues 2 --rw randrw --iodepth 4 --runtime 1"
            f" --verify --json {out}".split()
        )
    )
    (r,) = load(out)["results"]
    assert r["ops"]["read"] > 0 and r["ops"]["write"] > 0


def test_verify_direct_descriptors_without_event_idx(image: Path) -> None:
    """The other ring paths: three ring descriptors per request, VRING_USED_F_NO_NOTIFY."""
    ok(
        bench(
            *f"--image {image} --num-queues 2 --no-indirect --no-event-idx --rw write --bs 64k"
            " --iodepth 4 --ios 2000 --verify".split()
        )
    )


def test_verify_reports_misdirected_data(image: Path) -> None:
    """Sector 8 holds sector 0's stamp: a read run fails, naming sector 8."""
    ok(bench("--image", str(image), "--rw", "write", "--size", "64k", "--ios", "16", "--verify"))
    with image.open("r+b") as f:
        first = f.read(512)
        f.seek(8 * 512)
        f.write(first)
    proc = bench("--image", str(image), "--rw", "read", "--size", "64k", "--ios", "64", "--verify")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "sector 8" in proc.stderr and "another sector" in proc.stderr


def test_stamp_and_check() -> None:
    buf = ffi.new("uint64_t[64]")
    addr = int(ffi.cast("uintptr_t", buf))
    fs, fg = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    assert lib.dp_drv_check(addr, 7, 5, fs, fg) == lib.DP_VERIFY_NO_STAMP
    assert lib.dp_drv_check(addr, 7, 0, fs, fg) == lib.DP_VERIFY_OK  # never written: anything
    lib.dp_drv_stamp(addr, 7, 5)
    assert lib.dp_drv_check(addr, 7, 5, fs, fg) == lib.DP_VERIFY_OK
    assert lib.dp_drv_check(addr, 7, 0, fs, fg) == lib.DP_VERIFY_OK
    assert lib.dp_drv_check(addr, 7, 6, fs, fg) == lib.DP_VERIFY_GEN
    assert lib.dp_drv_check(addr, 8, 0, fs, fg) == lib.DP_VERIFY_SECTOR
    assert (fs[0], fg[0]) == (7, 5)
    buf[40] ^= 1
    assert lib.dp_drv_check(addr, 7, 5, fs, fg) == lib.DP_VERIFY_CHECKSUM


# --- targets, JSON, output ---------------------------------------------------------


def test_json_schema_null_engine_two_rounds(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    targets = ["ours", "qsd"] if HAVE_QSD else ["ours"]
    if HAVE_FIO:
        targets.append("fio")
    args = [a for t in targets for a in ("--target", t)]
    proc = ok(
        bench(*args, *f"--aio null --iodepth 4 --runtime 0.5 --repeat 2 --json {out}".split())
    )
    check_schema(load(out), targets, rounds=2)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("dataplane bench: randread") and "2 rounds" in lines[0]
    # Each target described as it is, one line each, before the table.
    assert (
        lines[1].startswith("  ours: dataplane ") and "null engine, a 1024 MiB device" in lines[1]
    )
    # Issue 18: the header says how each waits for work: ours polls, qsd has no iothread.
    assert lines[1].endswith("polls up to 64 µs before sleeping (the default --poll-us)")
    if HAVE_QSD:
        assert (
            "  qsd: qemu-storage-daemon, null-co of 1024 MiB (read-zeroes); no iothread: its main "
            "loop serves the export and does not poll"
        ) in lines
    header = next(line for line in lines if line.startswith("target "))
    assert "of limit" not in header  # no limit target ran: no column of dashes
    assert "of limit" not in proc.stdout
    for column in ("IOPS", "MiB/s", "p50 us", "p99 us", "p99.9 us", "be CPU%", "drv CPU%"):
        assert column in header
    legend = " ".join(lines[lines.index(header) + len(targets) + 1 :])
    assert legend.startswith("legend: be CPU%")
    assert "divided by the first target's" in legend and "xIOPS above 1: more IOPS" in legend
    assert proc.stderr.count("round 2") == len(targets)  # the progress lines
    assert f"results written to {out}" in proc.stderr


@pytest.mark.parametrize("notify", ["irq", "poll"])
def test_limit_target_row(tmp_path: Path, notify: str) -> None:
    """The ideal device: a row with the documented fields, and every row's fraction of it."""
    out = tmp_path / "r.json"
    proc = ok(
        bench(
            *f"--target ours --target limit --aio null --iodepth 8 --runtime 0.5"
            f" --notify {notify} --buf-align 512 --json {out}".split()
        )
    )
    doc = load(out)
    check_schema(doc, ["ours", "limit"], rounds=1)
    ours, limit = doc["results"]
    assert limit["kind"] == "limit"
    assert limit["of_limit"] == 1.0
    assert ours["of_limit"] == pytest.approx(ours["iops"] / limit["iops"])
    assert limit["ops"]["read"] == limit["ios"]
    assert limit["backend_cpu_s"] > 0  # the device threads' own CPU time
    table_header = next(line for line in proc.stdout.splitlines() if line.startswith("target"))
    assert "of limit" in table_header
    assert "limit: the ideal device" in proc.stdout
    assert "of limit: this target's IOPS as a fraction" in " ".join(proc.stdout.split())


def test_limit_target_without_limit_in_the_run(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    ok(bench(*f"--target ours --aio null --iodepth 2 --runtime 0.3 --json {out}".split()))
    assert load(out)["results"][0]["of_limit"] is None


def test_socket_target(image: Path, tmp_path: Path) -> None:
    sock_dir = short_socket_dir()
    sock = sock_dir / "vub.sock"
    backend = start_dataplane(sock, image, num_queues=2, log_path=tmp_path / "serve.log")
    try:
        out = tmp_path / "r.json"
        ok(
            run_cli(
                "bench",
                *f"--target socket:{sock} --num-queues 2 --iodepth 2 --ios 2000 --bs 8k"
                f" --json {out}".split(),
                timeout=120,
            )
        )
        doc = load(out)
        (r,) = doc["results"]
        assert r["target"] == f"socket:{sock}"
        assert doc["repeat"] == 3  # the default: one short run can flip which target wins
        # The header describes the backend that answered, not the bench's own settings.
        target_line = doc["description"].splitlines()[1]
        assert f"socket:{sock}: a running backend (pid {backend.pid}" in target_line
        assert "a 16 MiB device, 2 queue(s)" in target_line
        assert r["ios"] == 3 * 2000 and r["bytes_read"] == 3 * 2000 * 8192  # 3 rounds
        assert r["backend_cpu_s"] is not None  # the pid came from SO_PEERCRED
        # The bench's guest RAM is sealed as QEMU's is: the server has nothing to warn about.
        assert "not sealed" not in backend.log_text()
    finally:
        assert backend.stop() == 0
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "r.png"
    proc = ok(bench("--aio", "null", "--runtime", "0.3", "--repeat", "1", "--plot", str(png)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {png}" in proc.stderr


def test_backend_failures_exit_1(tmp_path: Path) -> None:
    proc = bench("--aio", "null", "--ours-arg=--bogus", timeout=60)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "exited with code 2 before logging 'listening'" in line and "--bogus" in line
    # A backend that dies mid-run is noticed at once, not after the stall timeout.  It dies
    # once its log (this shell's stderr) narrates a request: the run is under way.
    script = (
        '"$0" -m dataplane "$@" --trace-requests 1 & log=$(readlink /proc/$$/fd/2); '
        'while kill -0 $! && ! grep -q "trace #1" "$log"; do sleep 0.05; done; kill -9 $!'
    )
    dies = f"sh -c {shlex.quote(script)} {sys.executable}"
    proc = bench("--aio", "null", "--runtime", "600", "--ours-cmd", dies, timeout=WAIT_S)
    assert proc.returncode == 1, proc.stderr
    assert "ours exited with status 0 during the run" in proc.stderr.strip().splitlines()[-1]


# --- trace replay ---------------------------------------------------------------------


def write_trace(path: Path, n: int, *, queues: int = 2, spacing_ns: int = 1000) -> list[tuple]:
    rnd = random.Random(4)
    entries = []
    with TraceWriter(path) as w:
        for i in range(n):
            q = rnd.randrange(queues)
            vtype = rnd.choice([0, 0, 0, 1, 1, 4, 11, 13])
            length = 0 if vtype == 4 else 512 * rnd.randint(1, 64)
            sector = 0 if vtype == 4 else rnd.randrange(IMAGE_SIZE // 512 - 64)
            assert w.record(q, vtype, sector, length, t_ns=i * spacing_ns)
            entries.append((q, vtype, sector, length))
        assert not w.record(0, 8, 0, 20)  # GET_ID is not a trace entry
    return entries


def test_replay_reproduces_count_and_mix(image: Path, tmp_path: Path) -> None:
    trace_path = tmp_path / "t.trace"
    write_trace(trace_path, 3000)
    mix = read_trace(trace_path).mix()
    assert all(mix[k] for k in KINDS)
    out = tmp_path / "r.json"
    ok(
        bench(
            *f"--image {image} --cache writeback --replay {trace_path} --num-queues 2"
            f" --iodepth 8 --json {out}".split()
        )
    )
    (r,) = load(out)["results"]
    assert r["ios"] == 3000
    assert r["ops"] == mix


def test_replay_original_timing(image: Path, tmp_path: Path) -> None:
    trace_path = tmp_path / "t.trace"
    write_trace(trace_path, 50, queues=1, spacing_ns=10_000_000)  # 0.49 s of trace
    out = tmp_path / "r.json"
    ok(
        bench(
            *f"--image {image} --replay {trace_path} --replay-timing original --json {out}".split()
        )
    )
    (r,) = load(out)["results"]
    assert r["ios"] == 50
    assert r["runtime_s"] >= 0.49


def test_trace_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "t.trace"
    entries = write_trace(p, 100)
    t = read_trace(p)
    assert len(t) == 100
    letters = {0: 0, 1: 1, 4: 2, 11: 3, 13: 4}
    assert list(t.queue) == [e[0] for e in entries]
    assert list(t.kind) == [letters[e[1]] for e in entries]
    assert list(t.sector) == [e[2] for e in entries]
    assert list(t.length) == [e[3] for e in entries]
    assert list(t.t_ns) == [i * 1000 for i in range(100)]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("0 0 X 0 512\n", "unknown type"),
        ("0 0 R 0 100\n", "multiple of 512"),
        ("0 0 R 0\n", "5 fields"),
        ("a 0 R 0 512\n", "integers"),
        ("", "no requests"),
    ],
)
def test_trace_errors(tmp_path: Path, body: str, needle: str) -> None:
    p = tmp_path / "t.trace"
    p.write_text("# dataplane-trace v1\n" + body)
    with pytest.raises(UsageError, match=needle):
        read_trace(p)


def test_hist_buckets_invert_index() -> None:
    rnd = random.Random(1)
    for v in [0, 1, 63, 64, 65, 127, 128, 1000, 10**6, 2**40 + 12345, 2**63 + 1] + [
        rnd.randrange(1, 2**45) for _ in range(500)
    ]:
        i = lib.dp_hist_index(v)
        low, high = hist.bucket_range(i)
        assert low <= v < high
        assert (high - low) / max(low, 1) <= 1 / 64 or high - low == 1
    h = [0] * hist.BUCKETS
    for v in range(1, 1001):
        h[lib.dp_hist_index(v * 1000)] += 1
    assert hist.percentile(h, 50) == pytest.approx(500_000, rel=0.02)
    assert hist.percentile(h, 99.9) == pytest.approx(999_000, rel=0.02)


# --- bad arguments: one line, exit 2 ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--target", "nope"], ["unknown target 'nope'", "socket:PATH"]),
        (["--bs", "1000"], ["--bs 1000", "multiple of 512"]),
        (["--bs", "2M"], ["--bs", "1 MiB"]),
        (["--bs", "4x"], ["not a size"]),
        (["--rw", "sideways"], ["--rw"]),
        (["--runtime", "1", "--ios", "5"], ["not allowed with"]),
        (["--verify"], ["--verify", "null engine"]),
        (["--iodepth", "512"], ["--iodepth 512", "--queue-size"]),
        (["--queue-size", "100"], ["power of two"]),
        (["--size", "1G", "--offset", "1G"], ["past the device"]),
        (["--target", "ours", "--aio", "io_uring"], ["--image is required"]),
        (["--buf-align", "3"], ["--buf-align 3", "power of two"]),
        (["--buf-align", "8k"], ["--buf-align 8192", "power of two"]),
        (["--notify", "sometimes"], ["--notify"]),
    ],
)
def test_bad_arguments(args: list[str], needles: list[str]) -> None:
    assert_usage_error(bench("--aio", "null", *args, timeout=30), *needles)


def test_a_socket_target_that_is_not_there_fails_at_once(tmp_path: Path) -> None:
    """Issue 18: one line and exit 2 before anything runs, not 10 s of silence and exit 1."""
    missing = tmp_path / "nosuch.sock"
    assert_usage_error(bench("--target", f"socket:{missing}", timeout=30), "no such socket")
    assert_usage_error(bench("--target", f"socket:{tmp_path}", timeout=30), "is not a socket")
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))  # bound, never listening: refused
    try:
        assert_usage_error(bench("--target", f"socket:{stale}", timeout=30), "cannot connect")
    finally:
        s.close()


def test_missing_tools(image: Path) -> None:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    proc = bench("--target", "qsd", "--image", str(image), env=env, timeout=30)
    assert_usage_error(proc, "qemu-storage-daemon is not installed")
    proc = bench("--target", "fio", "--image", str(image), env=env, timeout=30)
    assert_usage_error(proc, "fio is not installed")


def test_bad_trace_and_missing_image(tmp_path: Path) -> None:
    p = tmp_path / "t.trace"
    p.write_text("# dataplane-trace v1\n0 0 R 0 7\n")
    assert_usage_error(bench("--aio", "null", "--replay", str(p), timeout=30), "line 2")
    proc = bench("--image", str(tmp_path / "none.img"), timeout=30)
    assert_usage_error(proc, "none.img", "No such file")


def test_plot_without_matplotlib(tmp_path: Path) -> None:
    # Hide matplotlib from the child: a package of that name that refuses to import.
    fake = tmp_path / "hide" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=str(fake.parent))
    proc = bench("--aio", "null", "--plot", str(tmp_path / "x.png"), env=env, timeout=30)
    assert_usage_error(proc, "matplotlib")


def test_dirty_log_both_runs_side_by_side(image: Path, tmp_path: Path) -> None:
    """``--dirty-log both``: each round runs ours without and with dirty logging (the bench
    plays a migrating QEMU), verified; the Python datapath offers no LOG_SHMFD: exit 1."""
    out = tmp_path / "r.json"
    proc = ok(
        bench(
            *f"--image {image} --cache writeback --rw randrw --verify --iodepth 8 --ios 3000"
            f" --dirty-log both --json {out}".split()
        )
    )
    check_schema(load(out), ["ours", "ours+dirty-log"], rounds=1)
    assert "[ours+dirty-log: dirty logging on: SET_LOG_BASE, LOG_ALL" in proc.stdout
    proc = bench(*f"--image {image} --ios 100 --dirty-log --ours-arg=--datapath=python".split())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "does not offer LOG_SHMFD" in proc.stderr
    assert "Traceback" not in proc.stderr
