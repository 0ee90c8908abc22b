"""The C extension built with AddressSanitizer and UBSan runs the ring and differential tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "sanitize.py"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed (Debian package gcc)")
def test_ring_and_differential_tests_pass_under_asan_and_ubsan():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    assert " passed" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-3000:]
