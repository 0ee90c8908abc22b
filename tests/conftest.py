import os
import shutil
import subprocess
import sys
from pathlib import Path

import hypothesis
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ringutil import IMG_SECTORS  # noqa: E402

from dataplane.guest.harness.processes import short_socket_dir  # noqa: E402
from dataplane.guest.ring import GuestRam  # noqa: E402

# Hypothesis times each example and each generation: on a loaded machine those checks fail
# tests that are right.  Per-test @settings override single fields and keep these.
hypothesis.settings.register_profile(
    "dataplane",
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile("dataplane")


# -- markers: what a test needs ---------------------------------------------------------
#
# `guest`: boots a QEMU guest; `remote`: starts a storage server (qemu-nbd, nbdkit, Ceph,
# libvirtd).  `make check` deselects both.  A test that uses one of these fixtures gets its
# marker here; a test that starts such a program without its marker fails (see below).
MARK_BY_FIXTURE = {"guest_image": "guest", "servers": "remote", "ceph_cluster": "remote"}
REMOTE_PROGRAMS = ("qemu-nbd", "nbdkit", "ceph-dev.sh", "ceph", "rbd", "libvirtd")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    xdist = config.pluginmanager.hasplugin("xdist")
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        for fixture, mark in MARK_BY_FIXTURE.items():
            if fixture in fixtures:
                item.add_marker(mark)
        if xdist and "ceph_cluster" in fixtures:
            # Under pytest-xdist's --dist loadgroup: one worker, so one session cluster.
            item.add_marker(pytest.mark.xdist_group("ceph"))


def needed_mark(argv: object) -> str | None:
    """The marker a test that runs ``argv`` must carry (None: any test may run it)."""
    words = [argv] if isinstance(argv, str | bytes | os.PathLike) else list(argv)
    names = [os.path.basename(os.fsdecode(w)) for w in words[:2]]
    if names[0].startswith("qemu-system") and "-kernel" in words:
        return "guest"
    if any(n in REMOTE_PROGRAMS or n.startswith("ceph-") for n in names):
        return "remote"
    return None


_spawned: list[str] = []  # the markers needed by what the running test has started
_popen_init = subprocess.Popen.__init__


def _recording_popen_init(self, args, *a, **kw):
    mark = needed_mark(args)
    if mark:
        _spawned.append(mark)
    _popen_init(self, args, *a, **kw)


subprocess.Popen.__init__ = _recording_popen_init


@pytest.fixture(autouse=True)
def _marked_for_what_it_starts(request):
    """A test that boots a guest or starts a remote server must say so with its marker."""
    _spawned.clear()
    yield
    unmarked = sorted({m for m in _spawned if request.node.get_closest_marker(m) is None})
    _spawned.clear()
    if unmarked:
        pytest.fail(f"this test starts what needs @pytest.mark.{unmarked[0]}: add the marker")


# -- on failure: the tail of every log the test wrote ------------------------------------

LOG_TAIL_LINES = 40


def log_files(item: pytest.Item) -> list[Path]:
    """The logs of a test: every ``*.log`` / ``log*`` file under its tmp_path (backends,
    servers, guest consoles), and those of each fixture value with a ``logs()`` method
    (the Ceph cluster, libvirtd)."""
    found: list[Path] = []
    funcargs = getattr(item, "funcargs", {})
    tmp = funcargs.get("tmp_path")
    if tmp is not None and tmp.is_dir():
        found += sorted(
            p for p in tmp.rglob("*")
            if p.is_file() and (p.suffix == ".log" or p.name.startswith("log"))
        )  # fmt: skip
    for value in funcargs.values():
        logs = getattr(value, "logs", None)
        if callable(logs):
            found += logs()
    return found


def tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * n * 4))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError as e:
        return f"(cannot read: {e})"
    return "\n".join(lines[-n:]) or "(empty)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for path in log_files(item):
            report.sections.append((f"last {LOG_TAIL_LINES} lines of {path}", tail(path)))


@pytest.fixture
def sock_dir():
    """A directory for UNIX sockets whose paths fit sun_path (short, under /tmp)."""
    d = short_socket_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def image(tmp_path):
    """A raw image of IMG_SECTORS sectors with a known pattern, and an fd open on it."""
    path = tmp_path / "img"
    path.write_bytes(bytes(range(256)) * (IMG_SECTORS * 2))
    fd = os.open(path, os.O_RDWR)
    yield path, fd
    os.close(fd)


@pytest.fixture
def ram():
    """4 MiB of shared guest RAM (a memfd)."""
    r = GuestRam(4 << 20)
    yield r
    r.close()


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory):
    """One throwaway Ceph cluster (scripts/ceph-dev.sh) for every test that needs one.

    With DATAPLANE_TEST_CEPH_DIR=DIR the tests use the cluster already running in DIR
    (started by ``scripts/ceph-dev.sh start DIR``) and leave it running.
    """
    from remote_servers import CEPH_PROGRAMS, CephCluster, missing

    why = missing(CEPH_PROGRAMS)
    if why:
        pytest.skip(why)
    reuse = os.environ.get("DATAPLANE_TEST_CEPH_DIR")
    if reuse:
        yield CephCluster(Path(reuse))
        return
    cluster = CephCluster(tmp_path_factory.mktemp("ceph"))
    print(cluster.start())  # the time to HEALTH_OK and the daemons' memory, for the log
    try:
        yield cluster
    finally:
        cluster.stop()
