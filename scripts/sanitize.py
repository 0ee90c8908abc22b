"""Build the C extensions with AddressSanitizer and UBSan, and run the ring tests under them.

    python scripts/sanitize.py [--keep DIR] [pytest args...]

Everything happens in a temporary directory: csrc/ and the dataplane package
are copied there, both extensions (the device's and the guest's) are built there with
``-fsanitize=address,undefined`` (through DP_EXTRA_CFLAGS/DP_EXTRA_LDFLAGS,
which csrc/build.py reads), and pytest runs from there, so
``import dataplane`` finds the sanitized copy and the checkout is untouched.
Python itself is not instrumented, so libasan is preloaded; leaks are not
checked (the interpreter keeps its own allocations to the end).  Any ASan or
UBSan report aborts the run with a non-zero status.

Without pytest args it runs the ring, datapath and differential tests of both
wings (the datapath differential ones with fewer examples: DP_DIFFERENTIAL_SCALE),
and those of the inflight tracker, the limiter, the test-delay stage and the dirty log.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SANITIZE = "-fsanitize=address,undefined"
CFLAGS = f"{SANITIZE} -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
DEFAULT_TESTS = ["device/test_virtqueue.py", "device/test_datapath.py"]
DEFAULT_TESTS += ["device/test_differential.py", "guest/test_ring.py", "spec/test_spec.py"]
DEFAULT_TESTS += ["device/test_inflight.py", "device/test_inflight_kill.py"]
DEFAULT_TESTS += ["device/test_limiter.py", "device/test_test_delay.py"]
DEFAULT_TESTS += ["device/test_dirty_log.py"]
# Each extension, where it lands in the package (csrc/build.py).
EXTENSIONS = {"dataplane.device._c": "dataplane/device", "dataplane.guest._c": "dataplane/guest"}


def libasan() -> str:
    out = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.path.isabs(out):
        sys.exit("sanitize: gcc does not know where libasan.so is (install libasan8 / gcc)")
    return out


def build(work: Path) -> dict[str, Path]:
    """Copy csrc/ and the package into ``work`` and build the sanitized extensions there."""
    shutil.copytree(REPO / "csrc", work / "csrc", ignore=shutil.ignore_patterns("*.o"))
    shutil.copytree(
        REPO / "dataplane",
        work / "dataplane",
        ignore=shutil.ignore_patterns("__pycache__", "_c.*"),
    )
    env = dict(os.environ, DP_EXTRA_CFLAGS=CFLAGS, DP_EXTRA_LDFLAGS=SANITIZE)
    # cwd is work, so build.py's relative source paths (csrc/...) and objects stay in it.
    script = "import runpy; b = runpy.run_path('csrc/build.py'); "
    script += "[x.compile(tmpdir='.') for x in b['BUILDERS']]"
    subprocess.run([sys.executable, "-c", script], cwd=work, env=env, check=True)
    out = {}
    for name, where in EXTENSIONS.items():
        built = list((work / where).glob("_c.*.so"))
        if len(built) != 1:
            sys.exit(f"sanitize: expected one {name} in {work / where}, got {built}")
        out[name] = built[0]
    return out


def sanitized_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=libasan(),
        ASAN_OPTIONS="detect_leaks=0:halt_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        PYTHONDONTWRITEBYTECODE="1",
        DP_DIFFERENTIAL_SCALE=env.get("DP_DIFFERENTIAL_SCALE", "0.25"),
    )
    env.pop("PYTHONPATH", None)
    return env


def run(work: Path, pytest_args: list[str]) -> int:
    built = build(work)
    env = sanitized_env()
    # The copies in work must be the ones imported (cwd comes first on sys.path with -m).
    for name, so in built.items():
        check = f"import {name} as n; print(n.__file__)"
        where = subprocess.run(
            [sys.executable, "-c", check], cwd=work, env=env, capture_output=True, text=True
        )
        if where.returncode or Path(where.stdout.strip()) != so:
            print(where.stdout, where.stderr, file=sys.stderr)
            sys.exit(f"sanitize: the sanitized extension {so} is not the one imported")
    args = pytest_args or [str(REPO / "tests" / t) for t in DEFAULT_TESTS]
    # --capture=sys: a report is written to fd 2 and ends the process at once, so pytest
    # must not be holding fd 2 in a capture file.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys", *args]
    print(f"sanitize: {' '.join(cmd)}  (in {work})", flush=True)
    return subprocess.run(cmd, cwd=work, env=env).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build in DIR and keep it (default: a temp dir)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        return run(args.keep, args.pytest_args)
    with tempfile.TemporaryDirectory(prefix="dp-sanitize-") as work:
        return run(Path(work), args.pytest_args)


if __name__ == "__main__":
    sys.exit(main())
