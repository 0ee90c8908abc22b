import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ringutil import IMG_SECTORS  # noqa: E402

from dataplane.guest.ring import GuestRam  # noqa: E402


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
