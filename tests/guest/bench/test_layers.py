"""``dataplane bench --layers``: the round trip cut into layers that add up to it.

The layers tile the bench driver's round trip (publish -> reap) by construction: the
device's stamps run from one boundary to the next, and the two cross-process layers
are differences of sums of absolute times over the same requests.  So the test is
an accounting identity, robust on a loaded machine; the 10 % margin is the issue's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from clitest import run_cli

from dataplane.guest.bench import layers_plot
from dataplane.json_keys import snake_keys
from dataplane.spec.latency import GUEST_LAYERS, HOST_LAYERS

needs_qsd = pytest.mark.skipif(
    shutil.which("qemu-storage-daemon") is None,
    reason="qemu-storage-daemon not installed (Debian package qemu-system-x86)",
)


def bench_layers(tmp_path: Path, *args: str) -> tuple[dict, Path, str]:
    pytest.importorskip("matplotlib")
    png, doc = tmp_path / "layers.png", tmp_path / "run.json"
    proc = run_cli(
        "bench", "--iodepth", "1", "--ios", "3000", "--repeat", "1", *args,
        "--layers", str(png), "--json", str(doc), timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return snake_keys(json.loads(doc.read_text())), png, proc.stderr


def check_picture(png: Path, stderr: str) -> None:
    import matplotlib.image

    assert f"layers written to {png}" in stderr
    assert png.stat().st_size > 0
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 100 and img.shape[1] > 100


def check_adds_up(result: dict) -> None:
    sums = result["layer_sums_ns"]
    assert sums["n"] == result["ios"]
    assert set(sums) == {"n", "round_trip", *GUEST_LAYERS}
    n, total = sums["n"], sums["round_trip"]
    means = {k: sums[k] / n for k in GUEST_LAYERS}
    assert sum(means.values()) == pytest.approx(total / n, rel=0.10)
    # Each layer is a time, not an artefact of the subtraction (a few ns of clock skew at most).
    assert all(m > -1000 for m in means.values()), sorted(means.items())
    assert means["used_notify"] > 0 and means["kick_to_pop"] > 0


@pytest.mark.parametrize("datapath", ["native", "python"])
def test_layers_add_up_on_the_null_engine(tmp_path: Path, datapath: str) -> None:
    doc, png, stderr = bench_layers(tmp_path, "--aio", "null", f"--ours-arg=--datapath={datapath}")
    (ours,) = doc["results"]
    check_adds_up(ours)
    assert ours["layer_sums_ns"]["submit_complete"] < ours["layer_sums_ns"]["round_trip"]
    check_picture(png, stderr)
    assert doc["layers_title"].startswith("null engine: randread")


@needs_qsd
def test_layers_add_up_on_a_page_cached_image(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    with img.open("wb") as f:
        f.truncate(16 << 20)
    doc, png, stderr = bench_layers(
        tmp_path, "--image", str(img), "--cache", "writeback", "--target", "ours",
        "--target", "qsd",
    )  # fmt: skip
    ours, qsd = doc["results"]
    check_adds_up(ours)
    # qemu-storage-daemon's inside is not stamped: the guest-side total only.
    assert set(qsd["layer_sums_ns"]) == {"n", "round_trip", "guest_publish"}
    assert qsd["layer_sums_ns"]["n"] == qsd["ios"]
    check_picture(png, stderr)
    assert "page cache" in doc["layers_title"]


def test_one_picture_of_several_runs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    docs = []
    for qd in ("1", "4"):
        doc = tmp_path / f"qd{qd}.json"
        proc = run_cli(
            "bench", "--aio", "null", "--iodepth", qd, "--ios", "500", "--repeat", "1",
            "--json", str(doc), "--layers", str(tmp_path / f"qd{qd}.png"), timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        docs.append(str(doc))
    out = tmp_path / "all.png"
    assert layers_plot.main([str(out), *docs]) == 0
    check_picture(out, f"layers written to {out}")
    panels = [layers_plot.panel_of_json(Path(d)) for d in docs]
    assert ["iodepth=4" in p.title for p in panels] == [False, True]
    assert all(set(HOST_LAYERS[1:]) <= set(p.bars[0].means or {}) for p in panels)
