"""Prometheus metrics: ``serve --metrics`` over HTTP and the ``metrics`` management command.

A real ``dataplane serve`` with a real frontend doing I/O, scraped over HTTP on the loopback
address and read back with prometheus_client's own text parser; Debian's ``promtool check
metrics`` lints the same text where the prometheus package is installed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import urllib.request

import pytest
from clitest import assert_usage_error, run_cli
from guest_support import start_dataplane
from prometheus_client.parser import text_string_to_metric_families

from dataplane.device.stats import LAT_LAYERS, STAT_KINDS
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.guest.virtio_blk import BlkDriver
from dataplane.serve.mgmt_client import MgmtClient

SECTORS = 4096
TYPES = {
    "dataplane_device_info": "gauge",
    "dataplane_requests": "counter",
    "dataplane_completed_requests": "counter",
    "dataplane_read_bytes": "counter",
    "dataplane_written_bytes": "counter",
    "dataplane_request_errors": "counter",
    "dataplane_notifications": "counter",
    "dataplane_inflight_requests": "gauge",
    "dataplane_frontend_connected": "gauge",
    "dataplane_frontend_connections": "counter",
    "dataplane_latency_seconds": "histogram",
    "dataplane_batch_requests": "histogram",
}


@pytest.fixture
def served(tmp_path):
    """serve(*extra) -> (backend, metrics URL, mgmt socket); stopped and checked after."""
    sock_dir = short_socket_dir()
    started = []

    def start(*extra: str):
        img = tmp_path / "a.img"
        img.write_bytes(os.urandom(SECTORS * 512))
        mgmt = sock_dir / "m.sock"
        b = start_dataplane(
            sock_dir / "a.sock", img, log_path=tmp_path / "serve.log",
            extra_args=("--metrics", "127.0.0.1:0", "--mgmt", str(mgmt), *extra),
        )  # fmt: skip
        started.append(b)
        m = re.search(r"metrics served on (http://127\.0\.0\.1:\d+/metrics)", b.log_text())
        assert m, b.log_text()
        return b, m[1], mgmt

    yield start
    for b in started:
        assert b.stop() == 0, b.log_text()
    shutil.rmtree(sock_dir, ignore_errors=True)


def do_io(sock) -> None:
    with BlkDriver(sock) as d:
        for i in range(3):
            assert d.write(8 * i, bytes([i + 1]) * 4096).status == 0
        for i in range(2):
            assert d.read(8 * i, 4096).data == bytes([i + 1]) * 4096
        assert d.flush().status == 0


def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return r.headers["Content-Type"], r.read().decode()


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, name: str, sample: str, **labels: str) -> float:
    for s in fams[name].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((sample, labels))


@pytest.mark.parametrize("datapath", ["native", "python"])
def test_metrics_over_http_by_the_book(served, datapath):
    b, url, _ = served("--datapath", datapath)
    do_io(b.socket)
    ctype, text = scrape(url)
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    fams = families(text)
    for name, kind in TYPES.items():
        assert fams[name].type == kind, name
    for f in fams.values():
        assert f.documentation, f"{f.name} has no HELP"
        for s in f.samples:
            assert not math.isnan(s.value), s
            # No thread ids or list positions as values: every label is a name or a number
            # the user chose (device, queue, layer, kind, status, thread name, le).
            assert "tid" not in s.labels
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples), f.name
    assert text.count("# TYPE dataplane_latency_seconds histogram") == 1
    dev = {"device": "vblk0", "queue": "0"}
    assert value(fams, "dataplane_requests", "dataplane_requests_total", kind="write", **dev) == 3
    assert value(fams, "dataplane_requests", "dataplane_requests_total", kind="read", **dev) == 2
    assert value(fams, "dataplane_requests", "dataplane_requests_total", kind="flush", **dev) == 1
    completed = "dataplane_completed_requests_total"
    assert value(fams, "dataplane_completed_requests", completed, **dev) == 6
    assert value(fams, "dataplane_written_bytes", "dataplane_written_bytes_total", **dev) == 12288
    assert value(fams, "dataplane_frontend_connections", "dataplane_frontend_connections_total",
                 device="vblk0") == 1  # fmt: skip
    info = fams["dataplane_device_info"].samples[0].labels
    assert info["datapath"] == datapath and info["device"] == "vblk0"

    # One histogram family, one series per layer, real bounds in seconds, cumulative.
    lat = fams["dataplane_latency_seconds"]
    assert {s.labels["layer"] for s in lat.samples} == set(LAT_LAYERS)
    for layer in LAT_LAYERS:
        buckets = [
            (float(s.labels["le"]), s.value)
            for s in lat.samples
            if s.name.endswith("_bucket") and s.labels["layer"] == layer
        ]
        bounds = [le for le, _ in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf
        assert 1e-7 < bounds[0] < 1e-6 and 10 < bounds[-2] < 100  # seconds, not ns
        counts = [n for _, n in buckets]
        assert counts == sorted(counts)
        count = value(fams, "dataplane_latency_seconds", "dataplane_latency_seconds_count",
                      layer=layer)  # fmt: skip
        assert count == counts[-1] == 6  # every completed request, once per layer
        total = value(fams, "dataplane_latency_seconds", "dataplane_latency_seconds_sum",
                      layer=layer)  # fmt: skip
        assert 0 <= total < 60  # seconds, summed over the 6
    # The layers tile each request's time in the device: no layer's sum exceeds their total.
    sums = {layer: value(fams, "dataplane_latency_seconds", "dataplane_latency_seconds_sum",
                         layer=layer) for layer in LAT_LAYERS}  # fmt: skip
    assert sum(sums.values()) > 0
    popped = value(fams, "dataplane_batch_requests", "dataplane_batch_requests_sum")
    assert popped == 6  # the batch histogram's sum: requests popped
    if datapath == "native":
        passes = "dataplane_thread_passes_total"
        assert value(fams, "dataplane_thread_passes", passes, thread="dp/vblk0/0") > 0


def test_mgmt_metrics_is_the_same_exposition(served):
    b, url, mgmt = served("--num-queues", "2")
    do_io(b.socket)
    _, http_text = scrape(url)
    with MgmtClient(mgmt) as m:
        mgmt_text = m.call("metrics")["text"]
    http, via_mgmt = families(http_text), families(mgmt_text)
    assert {n: f.type for n, f in http.items()} == {n: f.type for n, f in via_mgmt.items()}
    for name in TYPES:
        assert http[name].documentation == via_mgmt[name].documentation
        assert [(s.name, s.labels) for s in http[name].samples] == [
            (s.name, s.labels) for s in via_mgmt[name].samples
        ]
    queues = {s.labels["queue"] for s in http["dataplane_requests"].samples}
    assert queues == {"0", "1"}
    kinds = {s.labels["kind"] for s in http["dataplane_requests"].samples}
    assert kinds == set(STAT_KINDS)
    # dataplane stat --prometheus prints the management socket's exposition.
    proc = run_cli("stat", str(mgmt), "--prometheus")
    assert proc.returncode == 0, proc.stderr
    assert set(families(proc.stdout)) == set(http)


def test_promtool_check_metrics(served):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; scripts/install-deps.sh)")
    b, url, _ = served()
    do_io(b.socket)
    _, text = scrape(url)
    assert "dataplane_latency_seconds_sum{" in text and "dataplane_batch_requests_sum{" in text
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_bad_metrics_address(tmp_path):
    img = tmp_path / "a.img"
    img.write_bytes(bytes(SECTORS * 512))
    sock = tmp_path / "a.sock"
    args = ("serve", "--socket", str(sock), "--image", str(img), "--metrics")
    assert_usage_error(run_cli(*args, "9100"), "--metrics", "is not ADDR:PORT")
    assert_usage_error(run_cli(*args, "127.0.0.1:http"), "is not ADDR:PORT")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_usage_error(run_cli(*args, f"127.0.0.1:{port}"), "cannot listen", "in use")
    assert not sock.exists()
