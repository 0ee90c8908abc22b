"""Every engine against real files and the real kernel: no mocks."""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
from collections.abc import Iterator

import pytest
from engine_support import Buffers, pattern, run, run_one

from dataplane.device.engines import (
    ENGINES,
    AioEngine,
    Engine,
    IoRequest,
    Op,
    UringEngine,
    open_engine,
)
from dataplane.errors import EngineUnavailable

IMAGE_SIZE = 1 << 20
BLOCK = 4096
REAL_ENGINES = ["io_uring", "native", "threads"]


@pytest.fixture
def image_path(tmp_path) -> str:
    path = str(tmp_path / "disk.img")
    with open(path, "wb") as f:
        f.write(pattern(IMAGE_SIZE, seed=3))
    return path


def open_image(path: str, flags: int) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def rw_image_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def make_engine() -> Iterator:
    opened: list[Engine] = []

    def make(name: str, fd: int, queue_depth: int = 64) -> Engine:
        engine = ENGINES[name](fd, queue_depth)
        opened.append(engine)
        return engine

    yield make
    for engine in opened:
        engine.close()


@pytest.fixture(params=[0, os.O_DIRECT], ids=["buffered", "direct"])
def rw_fd(request, image_path) -> Iterator[int]:
    yield from open_image(image_path, os.O_RDWR | request.param)


@pytest.mark.parametrize("name", REAL_ENGINES)
def test_write_then_read_back_with_several_iovecs(name, rw_fd, make_engine):
    engine = make_engine(name, rw_fd)
    buf = Buffers(8 * BLOCK)
    data = pattern(4 * BLOCK, seed=9)
    buf.mem[: len(data)] = data
    write = IoRequest(Op.WRITE, offset=8 * BLOCK, length=len(data), token=1)
    write.iov = buf.iov(BLOCK, 2 * BLOCK, BLOCK)
    assert run_one(engine, write) == len(data)

    read = IoRequest(Op.READ, offset=8 * BLOCK, length=len(data), token=2)
    read.iov = buf.iov(2 * BLOCK, BLOCK, BLOCK, start=4 * BLOCK)
    assert run_one(engine, read) == len(data)
    assert buf.mem[4 * BLOCK : 8 * BLOCK] == data


@pytest.mark.parametrize("name", REAL_ENGINES)
def test_many_small_unaligned_iovecs_buffered(name, image_path, make_engine):
    for fd in open_image(image_path, os.O_RDWR):
        engine = make_engine(name, fd)
        buf = Buffers(2 * BLOCK)
        data = pattern(16 * 100, seed=5)
        buf.mem[1 : 1 + len(data)] = data
        write = IoRequest(Op.WRITE, offset=12345, length=len(data), token=7)
        write.iov = buf.iov(*[100] * 16, start=1)
        assert run_one(engine, write) == len(data)
        with open(image_path, "rb") as f:
            f.seek(12345)
            assert f.read(len(data)) == data


@pytest.mark.parametrize("name", REAL_ENGINES)
def test_read_across_end_of_file_is_continued_and_zero_filled(name, rw_fd, make_engine):
    engine = make_engine(name, rw_fd)
    buf = Buffers(4 * BLOCK)
    buf.mem[:] = b"\xff" * len(buf.mem)
    read = IoRequest(Op.READ, offset=IMAGE_SIZE - BLOCK, length=2 * BLOCK, token=3)
    read.iov = buf.iov(BLOCK // 2, BLOCK, BLOCK // 2)
    assert run_one(engine, read) == 2 * BLOCK
    assert buf.mem[:BLOCK] == pattern(IMAGE_SIZE, seed=3)[-BLOCK:]
    assert buf.mem[BLOCK : 2 * BLOCK] == bytes(BLOCK)


@pytest.mark.parametrize("name", REAL_ENGINES)
def test_flush_succeeds(name, rw_fd, make_engine):
    engine = make_engine(name, rw_fd)
    assert run_one(engine, IoRequest(Op.FLUSH, token=4)) == 0


@pytest.mark.parametrize("name", REAL_ENGINES)
def test_dsync_write(name, rw_fd, make_engine):
    engine = make_engine(name, rw_fd)
    buf = Buffers(2 * BLOCK)
    data = pattern(2 * BLOCK, seed=11)
    buf.mem[:] = data
    write = IoRequest(Op.WRITE, offset=0, length=len(data), dsync=True, token=5)
    write.iov = buf.iov(BLOCK, BLOCK)
    assert run_one(engine, write) == len(data)
    with open(rw_image_path(rw_fd), "rb") as f:
        assert f.read(len(data)) == data


@pytest.mark.parametrize("name", REAL_ENGINES)
@pytest.mark.parametrize(
    ("op", "unmap"),
    [(Op.DISCARD, False), (Op.WRITE_ZEROES, False), (Op.WRITE_ZEROES, True)],
    ids=["discard", "write-zeroes", "write-zeroes-unmap"],
)
def test_discard_and_write_zeroes_zero_the_range_and_keep_size(
    name, op, unmap, rw_fd, image_path, make_engine
):
    engine = make_engine(name, rw_fd)
    start, length = 4 * BLOCK, 8 * BLOCK
    req = IoRequest(op, offset=start, length=length, unmap=unmap, token=6)
    assert run_one(engine, req) == length
    # A range that runs past the end must not grow the image.
    tail = IoRequest(op, offset=IMAGE_SIZE - BLOCK, length=4 * BLOCK, unmap=unmap, token=7)
    assert run_one(engine, tail) == 4 * BLOCK

    with open(image_path, "rb") as f:
        got = f.read()
    want = pattern(IMAGE_SIZE, seed=3)
    assert os.path.getsize(image_path) == IMAGE_SIZE
    assert got[start : start + length] == bytes(length)
    assert got[-BLOCK:] == bytes(BLOCK)
    assert got[:start] == want[:start]
    assert got[start + length : -BLOCK] == want[start + length : -BLOCK]


@pytest.mark.parametrize("name", REAL_ENGINES)
def test_batch_of_64_mixed_requests_completes_each_token_once(name, rw_fd, make_engine):
    engine = make_engine(name, rw_fd, queue_depth=64)
    buf = Buffers(64 * BLOCK)
    for i in range(64):
        buf.mem[i * BLOCK : (i + 1) * BLOCK] = bytes([i]) * BLOCK
    reqs = []
    for i in range(64):
        kind = i % 8
        if kind < 4:
            reqs.append(IoRequest(Op.WRITE, i * BLOCK, BLOCK, buf.iov(BLOCK, start=i * BLOCK)))
        elif kind < 6:
            reqs.append(IoRequest(Op.READ, i * BLOCK, BLOCK, buf.iov(BLOCK, start=i * BLOCK)))
        elif kind == 6:
            reqs.append(IoRequest(Op.FLUSH))
        else:
            reqs.append(IoRequest(Op.WRITE_ZEROES, i * BLOCK, BLOCK, unmap=bool(i & 8)))
        reqs[-1].token = 1000 + i
    results = run(engine, reqs)
    assert results == {r.token: r.length for r in reqs}
    image = pattern(IMAGE_SIZE, seed=3)
    with open(rw_image_path(rw_fd), "rb") as f:
        got = f.read(64 * BLOCK)
    for i in range(64):
        block = got[i * BLOCK : (i + 1) * BLOCK]
        kind = i % 8
        if kind < 4:
            assert block == bytes([i]) * BLOCK
        elif kind == 7:
            assert block == bytes(BLOCK)
        else:
            assert block == image[i * BLOCK : (i + 1) * BLOCK]
            if kind < 6:
                assert buf.mem[i * BLOCK : (i + 1) * BLOCK] == block


@pytest.mark.parametrize("name", REAL_ENGINES)
def test_read_on_write_only_fd_is_negative_errno(name, image_path, make_engine):
    for fd in open_image(image_path, os.O_WRONLY):
        engine = make_engine(name, fd)
        buf = Buffers(BLOCK)
        read = IoRequest(Op.READ, 0, BLOCK, buf.iov(BLOCK), token=8)
        assert run_one(engine, read) == -errno.EBADF


@pytest.mark.parametrize("name", REAL_ENGINES)
def test_writes_and_fallocate_on_read_only_fd_are_negative_errno(name, image_path, make_engine):
    for fd in open_image(image_path, os.O_RDONLY):
        engine = make_engine(name, fd)
        buf = Buffers(BLOCK)
        reqs = [
            IoRequest(Op.WRITE, 0, BLOCK, buf.iov(BLOCK), token=1),
            IoRequest(Op.WRITE, 0, BLOCK, buf.iov(BLOCK), dsync=True, token=2),
            IoRequest(Op.DISCARD, 0, BLOCK, token=3),
            IoRequest(Op.WRITE_ZEROES, 0, BLOCK, token=4),
        ]
        assert run(engine, reqs) == dict.fromkeys((1, 2, 3, 4), -errno.EBADF)


@pytest.mark.parametrize("name", REAL_ENGINES)
def test_misaligned_direct_write_is_negative_errno(name, image_path, make_engine):
    for fd in open_image(image_path, os.O_RDWR | os.O_DIRECT):
        engine = make_engine(name, fd)
        buf = Buffers(2 * BLOCK)
        write = IoRequest(Op.WRITE, 0, BLOCK, buf.iov(BLOCK, start=1), token=9)
        good = IoRequest(Op.WRITE, BLOCK, BLOCK, buf.iov(BLOCK), token=10)
        assert run(engine, [write, good]) == {9: -errno.EINVAL, 10: BLOCK}


def test_null_engine_reads_zeros_and_succeeds(image_path, make_engine):
    for fd in open_image(image_path, os.O_RDWR):
        engine = make_engine("null", fd)
        buf = Buffers(2 * BLOCK)
        buf.mem[:] = b"\xff" * len(buf.mem)
        reqs = [
            IoRequest(Op.READ, 0, 2 * BLOCK, buf.iov(100, 2 * BLOCK - 100), token=1),
            IoRequest(Op.WRITE, 0, BLOCK, buf.iov(BLOCK), token=2),
            IoRequest(Op.FLUSH, token=3),
            IoRequest(Op.DISCARD, 0, BLOCK, token=4),
            IoRequest(Op.WRITE_ZEROES, 0, BLOCK, unmap=True, token=5),
        ]
        assert run(engine, reqs) == {1: 2 * BLOCK, 2: BLOCK, 3: 0, 4: BLOCK, 5: BLOCK}
        assert buf.mem[:] == bytes(2 * BLOCK)
        with open(image_path, "rb") as f:
            assert f.read() == pattern(IMAGE_SIZE, seed=3)


def test_engines_are_reusable_across_batches(image_path, make_engine):
    for fd in open_image(image_path, os.O_RDWR):
        for name in ENGINES:
            engine = make_engine(name, fd, queue_depth=4)
            buf = Buffers(4 * BLOCK)
            for batch in range(20):
                reqs = [
                    IoRequest(Op.READ, i * BLOCK, BLOCK, buf.iov(BLOCK, start=i * BLOCK))
                    for i in range(4)
                ]
                for i, r in enumerate(reqs):
                    r.token = batch * 4 + i
                assert set(run(engine, reqs).values()) == {BLOCK}


def test_io_uring_unavailable_falls_back_to_native_with_one_warning(
    image_path, monkeypatch, caplog
):
    def unavailable(self, fd: int, queue_depth: int) -> None:
        raise EngineUnavailable("io_uring_queue_init failed: Operation not permitted")

    monkeypatch.setattr(UringEngine, "__init__", unavailable)
    log = logging.getLogger("dataplane.test")
    for fd in open_image(image_path, os.O_RDWR):
        with caplog.at_level(logging.WARNING, logger="dataplane.test"):
            engine = open_engine("io_uring", fd, 8, log)
        try:
            assert isinstance(engine, AioEngine)
            assert len(caplog.records) == 1
            message = caplog.records[0].getMessage()
            assert caplog.records[0].levelno == logging.WARNING
            assert "io_uring" in message and "Operation not permitted" in message
            assert "\n" not in message
        finally:
            engine.close()


def test_open_engine_opens_io_uring_here_without_warning(image_path, caplog):
    log = logging.getLogger("dataplane.test")
    for fd in open_image(image_path, os.O_RDWR):
        with caplog.at_level(logging.WARNING):
            engine = open_engine("io_uring", fd, 8, log)
        engine.close()
        assert isinstance(engine, UringEngine)
        assert not caplog.records


@pytest.mark.parametrize("name", REAL_ENGINES)
def test_short_write_is_continued_until_the_error(name, image_path, make_engine):
    # RLIMIT_FSIZE below the image size makes the kernel cut a write short; the
    # engine must write the rest itself, which then fails with EFBIG.
    limit = IMAGE_SIZE - 2048
    for fd in open_image(image_path, os.O_RDWR):
        engine = make_engine(name, fd)
        buf = Buffers(2 * BLOCK)
        buf.mem[:] = b"\x02" * len(buf.mem)
        write = IoRequest(Op.WRITE, IMAGE_SIZE - 2 * BLOCK, 2 * BLOCK, token=1)
        write.iov = buf.iov(3000, 2 * BLOCK - 3000)
        old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
        try:
            assert run_one(engine, write) == -errno.EFBIG
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            signal.signal(signal.SIGXFSZ, old_handler)
        with open(image_path, "rb") as f:
            got = f.read()
        assert got[IMAGE_SIZE - 2 * BLOCK : limit] == b"\x02" * (limit - (IMAGE_SIZE - 2 * BLOCK))
        assert got[limit:] == pattern(IMAGE_SIZE, seed=3)[limit:]
