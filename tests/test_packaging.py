"""Packaging: ``python -m build`` makes an sdist and a wheel; the wheel runs from a fresh venv.

The wheel is built from the sdist (``build``'s default), so the sdist is checked to hold
everything a build needs.  The fresh venv gets the wheel and its dependencies from the
package index, as a user's would.  Then ``dataplane --version`` runs, and ``dataplane bench
--target ours`` is run from inside the unpacked sdist, a source tree with no built
extension: the ``ours`` it starts must be the installed dataplane, not the tree's.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from dataplane import __version__

REPO = Path(__file__).resolve().parent.parent


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 600):
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_sdist_and_wheel_build_and_the_wheel_runs_in_a_fresh_venv(tmp_path):
    pytest.importorskip("build", reason="the 'build' package (pip install 'dataplane[test]')")
    dist = tmp_path / "dist"
    proc = run(sys.executable, "-m", "build", "--outdir", dist, REPO)
    assert "project.license" not in proc.stdout + proc.stderr  # no deprecated license table
    (sdist,) = dist.glob("dataplane-*.tar.gz")
    (wheel,) = dist.glob("dataplane-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for ext in ("dataplane/device/_c.", "dataplane/guest/_c."):  # the device's, the guest's
        assert any(n.startswith(ext) and n.endswith(".so") for n in names), ext
    assert "dataplane/serve/metrics.py" in names and not any(n.startswith("tests/") for n in names)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", wheel)
    assert run(venv / "bin" / "dataplane", "--version").stdout.strip() == f"dataplane {__version__}"

    with tarfile.open(sdist) as t:
        t.extractall(tmp_path / "src", filter="data")
    (tree,) = (tmp_path / "src").iterdir()
    assert (tree / "dataplane").is_dir() and not list((tree / "dataplane").rglob("_c.*"))
    bench = run(
        venv / "bin" / "dataplane", "bench", "--target", "ours", "--aio", "null",
        "--ios", "500", "--repeat", "1", cwd=tree, timeout=120,
    )  # fmt: skip
    assert bench.stdout.startswith("dataplane bench:"), bench.stdout + bench.stderr
    ours = bench.stdout.splitlines()[1]
    assert ours.startswith(f"  ours: dataplane {__version__} ({venv}/bin/python"), ours
    assert "-P -m dataplane serve" in ours
