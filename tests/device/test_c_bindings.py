"""The checked bindings of the device side (dataplane/device/c/): one place that checks.

The device wing and the serving floor reach the C extension only through
them (read from their imports with ast), and the bindings turn errno, NULL
and arguments C would trust into exceptions.
"""

from __future__ import annotations

import ast
import errno
import os
from pathlib import Path

import pytest

import dataplane
from dataplane.device.c import Owned, check, ffi, lib, no_fd
from dataplane.device.c.engine import EngineHandle, open_local
from dataplane.device.c.io import IoBatch
from dataplane.device.c.limiter import CLimiter, cost_ns
from dataplane.device.c.rec import TraceBudget
from dataplane.device.c.thread import GUEST_ERRORS, CThread, broken_error
from dataplane.errors import BadHeader, EngineUnavailable

PACKAGE = Path(dataplane.__file__).parent
BOUND = ("device", "serve")  # the wings that must go through device/c/


def _imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_only_the_bindings_import_the_extension():
    offenders = []
    for wing in BOUND:
        for path in sorted((PACKAGE / wing).rglob("*.py")):
            if (PACKAGE / "device" / "c") in path.parents:
                continue
            extension = ("dataplane.device._c",)
            found = {n for n in _imports_of(path) if n.startswith(extension)}
            if found:
                offenders.append(f"{path.relative_to(PACKAGE)}: {sorted(found)}")
    assert not offenders, "import ffi/lib only in dataplane/device/c/: " + "; ".join(offenders)


def test_check_turns_a_negative_errno_into_oserror():
    assert check(5, "x") == 5
    with pytest.raises(OSError) as e:
        check(-errno.EBADF, "doing a thing")
    assert e.value.errno == errno.EBADF and "doing a thing" in str(e.value)
    assert no_fd(None) == -1 and no_fd(7) == 7


def test_a_null_pointer_is_memoryerror_and_close_is_once():
    class Budgetless(Owned):
        free_fn = staticmethod(lambda ptr: freed.append(ptr))

    freed: list[object] = []
    with pytest.raises(MemoryError, match="nothing"):
        Budgetless(ffi.NULL, "nothing")
    budget = TraceBudget(3)
    owned = Budgetless(budget.handle, "budget")
    owned.close()
    owned.close()
    assert freed == [budget.handle] and owned.closed


def test_arguments_c_would_trust_are_refused():
    with pytest.raises(ValueError):
        IoBatch(0)
    with pytest.raises(ValueError):
        TraceBudget(0)
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    engine = EngineHandle("null", open_local("null", -1, 4), 4)
    try:
        t = CThread(efd, engine.handle, 1, 4)
        try:
            with pytest.raises(ValueError, match="serial"):
                t.set_disk(8, 1, False, True, b"short", 254, 1 << 20)
            with pytest.raises(OSError):
                t.set_kick_fd(0, 10_000)  # not an open fd: epoll_ctl refuses it
        finally:
            t.close()
            t.close()
    finally:
        engine.close()
        os.close(efd)


def test_an_engine_that_cannot_open_says_why():
    with pytest.raises(EngineUnavailable, match="native|AIO|io_setup|engine"):
        open_local("native", -1, 1 << 30)  # io_setup refuses a depth this large


def test_the_limiter_binding_refuses_what_c_would_wrap():
    lim = CLimiter()
    with pytest.raises(ValueError, match="kind"):
        lim.set(6, 1, 0)
    with pytest.raises(ValueError, match="rate"):
        lim.set(0, -1, 0)
    with pytest.raises(ValueError, match="nbytes"):
        lim.admit(False, 1 << 64, 0)
    with pytest.raises(ValueError, match="rate"):
        cost_ns(1, 0)
    lim.set(0, 1000, 0)
    assert lim.admit(False, 512, 10**9) == 0 and lim.admit(True, 512, 10**9) == 10**6
    assert lim.counts() == (1, 10**6)


def test_a_ring_broken_by_the_hosts_lack_of_memory_is_no_guest_error():
    codes = {getattr(lib, n) for n in dir(lib) if n.startswith("DP_GERR_")} - {lib.DP_GERR_NONE}
    assert codes - set(GUEST_ERRORS) == {lib.DP_GERR_NO_MEMORY}
    with pytest.raises(MemoryError, match="out of memory for a chain of 9 pieces"):
        broken_error(lib.DP_GERR_NO_MEMORY, "out of memory for a chain of 9 pieces")
    err = broken_error(lib.DP_GERR_BAD_HEADER, "head 3: a header of 2 bytes")
    assert type(err) is BadHeader and str(err) == "head 3: a header of 2 bytes"
