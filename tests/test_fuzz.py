"""The fuzzers run: a short smoke of each (scripts/fuzz.sh NAME SECONDS); see docs/fuzzing.md."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Each smoke keeps a CPU busy for SMOKE_SECONDS by design: run by make test, not make check.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SMOKE_SECONDS = 20


def run_fuzzer(name: str) -> str:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "fuzz.sh"), name, str(SMOKE_SECONDS)],
        cwd=REPO, capture_output=True, text=True, timeout=SMOKE_SECONDS + 240,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    runs = re.search(r"Done (\d+) runs", out)
    assert runs and int(runs[1]) > 0, out[-3000:]
    return out


@pytest.mark.skipif(
    shutil.which("clang-14") is None,
    reason="clang-14 not installed (Debian packages clang-14, libclang-rt-14-dev)",
)
def test_ring_fuzzer_smoke():
    out = run_fuzzer("ring")
    assert "fuzz/corpus/ring" in out  # it started from the seeds in the repo


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris not installed (pip install 'dataplane[test]')",
)
def test_vhost_message_fuzzer_smoke():
    out = run_fuzzer("vhost")
    assert "fuzz/corpus/vhost" in out
