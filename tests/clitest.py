"""Running the ``dataplane`` command as a user would, and checking how it refuses mistakes."""

from __future__ import annotations

import os
import subprocess
import sys

from dataplane import test_hooks


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dataplane", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def assert_usage_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit status 2, one line on stderr naming every needle, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def assert_refused_on_python(keys: str) -> None:
    """``serve --device ...,KEYS,datapath=python`` exits 2 at start with one line saying that
    the first of KEYS needs the C datapath (the test hooks on, so that test-delay is a key)."""
    env = {**os.environ, **test_hooks.ON}
    proc = run_cli("serve", "--device", f"socket=s,image=i,{keys},datapath=python", env=env)
    first = keys.split("=", 1)[0]
    assert_usage_error(proc, f"{first}= needs the C datapath (datapath=native)")
