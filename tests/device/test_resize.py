"""resize_image: the served image grows (by us, or by the operator first), never shrinks."""

from __future__ import annotations

import os

import pytest

from dataplane.device.image import open_image, resize_image
from dataplane.errors import UsageError

MIB = 1 << 20


@pytest.fixture
def img(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.write(b"\xab" * MIB)
    image = open_image(path, read_only=False, cache="writeback")
    yield image
    image.close()


def test_growing_to_a_size_extends_the_file_sparsely_and_keeps_the_data(img):
    assert resize_image(img, 3 * MIB) == 3 * MIB // 512
    assert img.size == os.path.getsize(img.path) == 3 * MIB
    data = img.path.read_bytes()
    assert data[:MIB] == b"\xab" * MIB and data[MIB:] == bytes(2 * MIB)
    assert os.stat(img.path).st_blocks * 512 < 2 * MIB  # no blocks written for the new part


def test_without_a_size_the_grown_file_is_read_again(img):
    os.truncate(img.path, 2 * MIB)  # the operator's 'truncate -s 2M'
    assert img.sectors == MIB // 512
    assert resize_image(img) == 2 * MIB // 512 and img.size == 2 * MIB
    assert resize_image(img) == 2 * MIB // 512  # nothing changed: nothing to do


def test_the_size_is_read_through_the_served_fd_not_the_path(img, tmp_path):
    os.rename(img.path, tmp_path / "moved.img")
    (tmp_path / "disk.img").write_bytes(bytes(8 * MIB))
    assert resize_image(img) == MIB // 512


@pytest.mark.parametrize(
    ("new_size", "why"),
    [
        (MIB // 2, r"shrinking .* from 1048576 to 524288 bytes is refused"),
        (MIB + 100, r"not a positive multiple of 512"),
        (0, r"not a positive multiple of 512"),
    ],
)
def test_a_size_that_would_shrink_or_is_unaligned_is_refused_and_nothing_changes(
    img, new_size, why
):
    with pytest.raises(UsageError, match=why):
        resize_image(img, new_size)
    assert img.size == os.path.getsize(img.path) == MIB


def test_a_size_below_what_the_operator_already_grew_to_is_refused(img):
    os.truncate(img.path, 4 * MIB)
    with pytest.raises(UsageError, match=r"from 4194304 to 2097152 bytes is refused"):
        resize_image(img, 2 * MIB)
    assert os.path.getsize(img.path) == 4 * MIB


def test_a_file_shrunk_or_grown_unaligned_under_the_device_is_refused(img):
    os.truncate(img.path, MIB // 2)
    with pytest.raises(UsageError, match=r"shrank from 1048576 to 524288 .* grow it back"):
        resize_image(img)
    os.truncate(img.path, MIB + 1000)
    with pytest.raises(UsageError, match=r"not a multiple of 512: grow it to 1049600 bytes"):
        resize_image(img)
    assert img.size == MIB


def test_a_read_only_image_is_not_grown_but_its_growth_is_taken_in(tmp_path):
    path = tmp_path / "ro.img"
    path.write_bytes(bytes(MIB))
    image = open_image(path, read_only=True, cache="writeback")
    try:
        with pytest.raises(UsageError, match="served read-only"):
            resize_image(image, 2 * MIB)
        os.truncate(path, 2 * MIB)
        assert resize_image(image) == 2 * MIB // 512
    finally:
        image.close()
