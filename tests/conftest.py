import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ringutil import IMG_SECTORS  # noqa: E402

from dataplane.guest.ring import GuestRam  # noqa: E402
from dataplane.harness.processes import short_socket_dir  # noqa: E402


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
