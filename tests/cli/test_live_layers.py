"""The latency layers inside the device: ``dataplane stat --layers`` against a live server.

A real ``dataplane serve --mgmt`` with a real frontend doing I/O.  No timed assertion:
the engine-delay test makes one layer slow on purpose (the test build's delay, 20 ms on
every completion) and compares orders of magnitude, with margins wide enough for a
loaded machine.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from clitest import assert_refused_on_python, assert_usage_error, run_cli
from guest_support import start_dataplane

from dataplane import test_hooks
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.spec import latency

SECTORS = 4096
LAYERS = [latency.key(n) for n in latency.HOST_LAYERS]


@pytest.fixture
def served(tmp_path):
    """serve(keys, *extra) -> (backend, mgmt socket); stopped and checked after."""
    sock_dir = short_socket_dir()
    started = []

    def start(keys: dict[str, str] | None = None, *extra: str):
        img = tmp_path / "a.img"
        img.write_bytes(os.urandom(SECTORS * 512))
        mgmt = sock_dir / "m.sock"
        b = start_dataplane(
            sock_dir / "a.sock", img, log_path=tmp_path / "serve.log", cache="writeback",
            extra_args=("--mgmt", str(mgmt), *extra), keys=keys,
            env=test_hooks.ON if keys and "test-delay" in keys else None,
        )  # fmt: skip
        started.append(b)
        return b, mgmt

    yield start
    for b in started:
        assert b.stop() == 0, b.log_text()
    shutil.rmtree(sock_dir, ignore_errors=True)


def do_io(sock, n: int = 6) -> None:
    with BlkDriver(sock) as d:
        for i in range(n):
            assert d.write(8 * i, bytes([i + 1]) * 4096).status == 0
            assert d.read(8 * i, 4096).data == bytes([i + 1]) * 4096


def layers_json(mgmt) -> dict:
    proc = run_cli("stat", str(mgmt), "--layers", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("datapath", ["native", "python"])
def test_stat_layers_json_and_table(served, datapath):
    b, mgmt = served(None, "--datapath", datapath)
    do_io(b.socket)
    doc = layers_json(mgmt)
    assert doc["layers"] == LAYERS
    (dev,) = doc["devices"].values()
    (q,) = dev["queues"]
    assert q["index"] == 0 and q["requests"] == 12
    shares = [q["layers"][k]["share"] for k in LAYERS]
    assert all(0 <= s <= 1 for s in shares) and sum(shares) == pytest.approx(1)
    for k in LAYERS:
        f = q["layers"][k]
        assert f["count"] == 12
        assert 0 <= f["p50-ns"] <= f["p99-ns"]
        assert f["mean-ns"] >= 0
    # The layers tile the time in the device: their means add up to the total.
    total = sum(q["layers"][k]["mean-ns"] for k in LAYERS)
    assert total == pytest.approx(q["total-mean-ns"])
    # Keys are kebab-case all the way down.
    assert all("_" not in k for k in _keys(doc))

    # The live table: requests between two snapshots (I/O goes on meanwhile).
    proc = run_cli("stat", str(mgmt), "--layers", "--count", "1", "--interval", "0.05")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("dataplane stat --layers: 1 device(s)")
    assert all(k in lines[1] for k in LAYERS) and "total" in lines[1]
    assert lines[2].split()[:2] == ["vblk0", "q0"]
    # Over the interval (no I/O in it here): no requests, no figures, and it says so.
    assert lines[2].split()[2] == "0"


def _keys(obj) -> list[str]:
    if isinstance(obj, dict):
        return [k for k, v in obj.items() for k in (k, *_keys(v))]
    if isinstance(obj, list):
        return [k for v in obj for k in _keys(v)]
    return []


def test_stat_layers_usage(served):
    _, mgmt = served()
    assert_usage_error(run_cli("stat", str(mgmt), "--layers", "--prometheus"), "--layers")


def test_engine_delay_shows_in_the_host_io_layer_only(served):
    """Every completion held 100 ms (test-delay=1:100000): submit_complete takes it, and the
    other layers' medians stay below half of it. Medians, not means or shares: a loaded
    machine may stall any pass for tens of milliseconds, but not most of eight of them.
    (The python datapath refuses test-delay: it is a C-only key.)"""
    assert_refused_on_python("test-delay=1:100000")
    b, mgmt = served({"test-delay": "1:100000"})
    do_io(b.socket, n=4)
    (dev,) = layers_json(mgmt)["devices"].values()
    (q,) = dev["queues"]
    io = q["layers"]["submit-complete"]
    assert io["count"] == 8
    assert io["p50-ns"] >= 90e6 and io["mean-ns"] >= 90e6  # the 100 ms delay (bucket: +-10 %)
    for k in LAYERS:
        if k != "submit-complete":
            assert q["layers"][k]["p50-ns"] < 50e6, (k, q["layers"][k])
