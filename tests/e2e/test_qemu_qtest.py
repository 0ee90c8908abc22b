"""QEMU's own vhost-user-blk conformance test (QEMU 7.2's tests/qtest/vhost-user-blk-test.c).

scripts/qemu-qtest.sh builds qos-test and a qtest-capable qemu-system-x86_64 once from
Debian's qemu source package (cached), then runs the six vhost-user-blk cases against
``dataplane serve``, started through scripts/qsd-standin with the inherited listening fds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "qemu-qtest.sh"
BUILD_TOOLS = ("meson", "ninja", "pkg-config", "dpkg-source", "cc")


@pytest.mark.slow
@pytest.mark.parametrize("datapath", ["native", "python"])
def test_qemu_vhost_user_blk_qtest_passes(datapath):
    missing = [t for t in BUILD_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"cannot build QEMU's qtest: {', '.join(missing)} missing "
                    "(scripts/install-deps.sh installs them)")  # fmt: skip
    env = {
        **os.environ,
        "DATAPLANE": str(Path(sys.executable).with_name("dataplane")),
        "DATAPLANE_DEVICE_KEYS": f"datapath={datapath}",
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=3600,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    print(proc.stdout)
    print(proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "qemu-qtest: 6/6 passed" in proc.stdout
    passed = [line for line in proc.stdout.splitlines() if line.startswith("ok ")]
    for case in ("basic", "indirect", "idx", "nxvirtq", "hotplug", "multiqueue"):
        assert any(line.endswith(f"/{case}") for line in passed), case
