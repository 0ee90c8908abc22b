"""The package's layers, read from its own imports (ast; every import, in functions too).

The folders are the layers; a module's layer is the first folder of
its path under dataplane/:

- the package root (``errors``, ``argtypes``, ``json_keys``): the base, importing nothing
  of the project;
- ``spec``: the virtio wire both sides agree on; imports nothing of the project;
- ``vhost``: the vhost-user wire (messages) and the backend's sans-IO protocol;
- ``device`` and ``guest``: the two wings, the device (ring core, datapaths, engines, the
  C extension's loader, the sandbox) and the guest (driver ring and blk driver, the
  vhost-user frontend, the bench, the QEMU harness);
- ``serve``: the serving floor on the device wing (sessions, server, management, metrics);
- ``cli`` (and ``__main__``): the top, the one place that may import both wings.

A layer may import its own modules and the layers listed for it in ALLOWED, never the other
wing or a layer above.  There is no cycle between modules, and the core (memory, virtqueue,
blk, the vhost-user messages) reaches neither asyncio, nor the server, nor the CLI,
directly or through what it imports.  The serving floor imports of the device wing only
its public API (``dataplane.device.blkdev``, the device, and ``settings``: PUBLIC), never its
internals.
And the longest chain of imports, module to module, is at most MAX_CHAIN long: a reader who
follows the imports down from the CLI reaches the C extension's loader in few steps.

The C side keeps the same split, in csrc/'s folders: a module's side is its folder
(csrc/spec, csrc/device, csrc/guest); a device module includes no guest header and the
reverse, and the spec headers include only spec headers.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import dataplane

PACKAGE = Path(dataplane.__file__).resolve().parent

# What each layer (a folder of dataplane/, or "base" for the root) may import besides itself.
ALLOWED = {
    "base": set(),
    "spec": set(),
    "vhost": {"base", "spec"},
    "device": {"base", "spec", "vhost"},
    "guest": {"base", "spec", "vhost"},
    "serve": {"base", "spec", "vhost", "device"},
    "cli": {"base", "spec", "vhost", "device", "guest", "serve"},
}
# Outside the folders: the entry point.
PLACED = {"dataplane.__main__": "cli"}
CORE = ["dataplane.device.memory", "dataplane.device.virtqueue", "dataplane.device.blk"]
CORE += ["dataplane.vhost.messages"]
NOT_FOR_CORE = ("asyncio", "uvloop", "dataplane.serve", "dataplane.cli")
# What a layer may import of a layer below it, where it may not import all of it.
PUBLIC = {("serve", "device"): {"dataplane.device.blkdev", "dataplane.device.settings"}}
MAX_CHAIN = 12
# Below the device wing's API (blkdev.py; settings.py names the keys' words): the
# datapath factory, a datapath, the ring walker, guest memory, a C binding, the extension.
DEVICE_TOP = {"dataplane.device.blkdev", "dataplane.device.settings"}
MAX_DEVICE_CHAIN = 6

Graph = Mapping[str, set[str]]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = ("dataplane", *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> Iterator[str]:
    for node in ast.walk(tree):  # every node: function bodies and TYPE_CHECKING blocks too
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            for a in node.names:
                sub = f"{src}.{a.name}"  # from package import submodule
                yield sub if sub in modules else src


def package_imports(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module of the package and what it imports (project modules and others)."""
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(paths) | {"dataplane.device._c", "dataplane.guest._c"}  # the extensions
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = set(_imported(tree, name, path.name == "__init__.py", modules)) - {name}
    return graph


def wing_of(module: str) -> str | None:
    """The layer of a module: its folder under dataplane/, "base" at the root (None outside
    the project)."""
    if module in PLACED:
        return PLACED[module]
    parts = module.split(".")
    if parts[0] != "dataplane":
        return None
    if len(parts) == 1 or (len(parts) == 2 and parts[1] not in ALLOWED):
        return "base"  # a module at the root (a folder's __init__ is its folder's)
    return parts[1]


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def reachable(graph: Graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def violations(graph: Graph) -> list[str]:
    """Every way ``graph`` breaks the layers, one line each (empty: none)."""
    out = [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    for mod in sorted(graph):
        wing = wing_of(mod)
        if wing not in ALLOWED:
            out.append(f"{mod} is in {wing!r}, a folder that is no layer (add it to ALLOWED)")
            continue
        for dep in sorted(graph[mod]):
            dep_wing = wing_of(dep)
            if dep_wing is None or dep_wing == wing:
                continue
            if dep_wing not in ALLOWED[wing]:
                out.append(f"{mod} ({wing}) imports {dep} ({dep_wing})")
            elif dep not in PUBLIC.get((wing, dep_wing), {dep}):
                public = ", ".join(sorted(PUBLIC[wing, dep_wing]))
                out.append(f"{mod} ({wing}) imports {dep}, outside the {dep_wing} API ({public})")
    for core in CORE:
        if core not in graph:
            out.append(f"core module {core} is missing")
            continue
        for m in sorted(reachable(graph, core)):
            if any(m == x or m.startswith(x + ".") for x in NOT_FOR_CORE):
                out.append(f"core module {core} reaches {m}")
    return out


def longest_chain(graph: Graph) -> list[str]:
    """The longest path of imports between the graph's modules (first found on a tie);
    an edge that closes a cycle is not followed (``cycles`` reports those)."""
    best: dict[str, list[str]] = {}

    def visit(v: str, path: set[str]) -> list[str]:
        if v in best:
            return best[v]
        chain = [v]
        for w in sorted(graph.get(v, ())):
            if w in graph and w not in path:
                sub = visit(w, path | {w})
                if len(sub) + 1 > len(chain):
                    chain = [v, *sub]
        best[v] = chain
        return chain

    return max((visit(v, {v}) for v in sorted(graph)), key=len, default=[])


def test_the_package_keeps_its_layers():
    graph = package_imports()
    assert "dataplane.spec.ring" in graph and "dataplane.guest.ring" in graph
    assert violations(graph) == []


def test_the_longest_import_chain_is_short():
    """Read from the imports (ast, TYPE_CHECKING and function bodies included)."""
    chain = longest_chain(package_imports())
    assert len(chain) <= MAX_CHAIN, f"{len(chain)} modules: {' -> '.join(chain)}"


def test_the_device_wing_below_its_api_is_shallow():
    graph = package_imports()
    deep = []
    for module in sorted(graph):
        if module.startswith("dataplane.device.") and module not in DEVICE_TOP:
            below = reachable(graph, module) | {module}
            chain = longest_chain({m: graph[m] & below for m in below if m in graph})
            if len(chain) > MAX_DEVICE_CHAIN:
                deep.append(" -> ".join(chain))
    assert not deep, f"deeper than {MAX_DEVICE_CHAIN} modules: " + "; ".join(deep)


def test_the_chain_finder_follows_the_longest_path():
    graph = {"a": {"b", "x"}, "b": {"c"}, "c": {"d", "os"}, "d": set(), "x": {"d"}}
    assert longest_chain(graph) == ["a", "b", "c", "d"]
    assert longest_chain({**graph, "d": {"a"}}) == ["a", "b", "c", "d"]  # a cycle: not followed
    assert longest_chain({}) == []


def test_every_import_is_read_even_inside_functions_and_type_checking(tmp_path):
    pkg = tmp_path / "dataplane"
    (pkg / "device").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "device" / "__init__.py").write_text("")
    (pkg / "device" / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from dataplane.device import b\n"
        "def f():\n    from . import c\n    import asyncio\n"
    )
    (pkg / "device" / "b.py").write_text("from .c import x\n")
    (pkg / "device" / "c.py").write_text("x = 1\n")
    graph = package_imports(pkg)
    assert graph["dataplane.device.a"] == {"dataplane.device.b", "dataplane.device.c", "asyncio",
                                           "typing"}  # fmt: skip
    assert graph["dataplane.device.b"] == {"dataplane.device.c"}


GOOD = {
    "dataplane.spec.ring": set(),
    "dataplane.errors": set(),
    "dataplane.vhost.messages": {"dataplane.errors", "dataplane.spec.ring"},
    "dataplane.device.memory": {"dataplane.vhost.messages", "dataplane.device.c"},
    "dataplane.device.virtqueue": {"dataplane.device.memory", "dataplane.spec.ring"},
    "dataplane.device.blk": {"dataplane.device.virtqueue"},
    "dataplane.device.c": {"dataplane.device._c"},
    "dataplane.device.blkdev": {"dataplane.device.blk", "dataplane.device.memory"},
    "dataplane.serve.server": {"asyncio", "dataplane.device.blkdev"},
    "dataplane.guest.ring": {"dataplane.spec.ring", "dataplane.vhost.messages"},
    "dataplane.cli": {"dataplane.serve.server", "dataplane.guest.ring"},
}
D, G = "dataplane.device", "dataplane.guest"
# One bad edge added to GOOD, and all that the checker must say about it.
BAD_EDGES = [
    (f"{D}.memory", f"{D}.blk", [f"import cycle: {D}.blk -> {D}.memory -> {D}.virtqueue"]),
    (f"{D}.blk", f"{G}.ring", [f"{D}.blk (device) imports {G}.ring (guest)"]),
    (f"{G}.ring", f"{D}.memory", [f"{G}.ring (guest) imports {D}.memory (device)"]),
    ("dataplane.spec.ring", "dataplane.errors",
     ["dataplane.spec.ring (spec) imports dataplane.errors (base)"]),
    ("dataplane.errors", "dataplane.spec.ring",
     ["dataplane.errors (base) imports dataplane.spec.ring (spec)"]),
    ("dataplane.serve.server", "dataplane.cli.live_stats",
     ["dataplane.serve.server (serve) imports dataplane.cli.live_stats (cli)"]),
    (f"{D}.virtqueue", "asyncio",
     [f"core module {D}.virtqueue reaches asyncio", f"core module {D}.blk reaches asyncio"]),
    (f"{D}.blk", "dataplane.serve.mgmt",
     [f"{D}.blk (device) imports dataplane.serve.mgmt (serve)",
      f"core module {D}.blk reaches dataplane.serve.mgmt"]),
    ("dataplane.serve.server", f"{D}.memory",
     [f"dataplane.serve.server (serve) imports {D}.memory, outside the device API "
      f"({D}.blkdev, {D}.settings)"]),
    ("dataplane.tests.x", "dataplane.errors",
     ["dataplane.tests.x is in 'tests', a folder that is no layer (add it to ALLOWED)"]),
]  # fmt: skip


def test_the_checker_passes_a_good_graph():
    assert violations(GOOD) == []


@pytest.mark.parametrize(("module", "dep", "expected"), BAD_EDGES)
def test_the_checker_finds_each_kind_of_violation(module, dep, expected):
    graph = {k: set(v) for k, v in GOOD.items()}
    graph.setdefault(module, set()).add(dep)
    assert violations(graph) == expected


# -- the C side: csrc/spec, csrc/device and csrc/guest (csrc/build.py) -------------------

CSRC = PACKAGE.parent / "csrc"
# Each folder of csrc/ and the folders its modules may include besides their own.
C_ALLOWED = {"spec": set(), "device": {"spec"}, "guest": {"spec"}}


def c_sides(csrc: Path) -> tuple[dict[str, str], list[str]]:
    """Module (dp_x, from dp_x.h, dp_x.c, dp_x.cdef) -> its folder under csrc/; and a line
    for each C file outside the folders of C_ALLOWED or module in two of them."""
    sides: dict[str, str] = {}
    out = []
    for path in sorted(csrc.rglob("*")):
        if path.suffix not in (".c", ".h", ".cdef"):
            continue
        rel = path.relative_to(csrc)
        side = rel.parts[0] if len(rel.parts) == 2 else None
        if side not in C_ALLOWED:
            out.append(f"csrc/{rel} is outside csrc/{{{','.join(C_ALLOWED)}}}/")
        elif sides.setdefault(path.stem, side) != side:
            out.append(f"{path.stem} is in csrc/{sides[path.stem]}/ and csrc/{side}/")
    return sides, out


def c_includes(csrc: Path) -> dict[str, set[str]]:
    """Module (dp_x, from dp_x.h and dp_x.c) -> the project headers it includes."""
    out: dict[str, set[str]] = {}
    for path in sorted(csrc.glob("*/dp_*.[ch]")):
        found = re.findall(r'^#include "(dp_\w+)\.h"', path.read_text(), re.M)
        out.setdefault(path.stem, set()).update(set(found) - {path.stem})
    return out


def c_violations(sides: Mapping[str, str], includes: Mapping[str, set[str]]) -> list[str]:
    """Every include that leaves what its folder may include, one line each."""
    out = []
    for mod, deps in sorted(includes.items()):
        side = sides[mod]
        for dep in sorted(deps):
            dep_side = sides.get(dep)
            if dep_side is None:
                out.append(f"{mod} ({side}) includes {dep}.h, which is in no folder")
            elif dep_side != side and dep_side not in C_ALLOWED[side]:
                out.append(f"{mod} ({side}) includes {dep}.h ({dep_side})")
    return out


def test_the_c_folders_keep_their_layers():
    sides, misplaced = c_sides(CSRC)
    assert misplaced == []
    assert sides["dp_virtio"] == "spec" and sides["dp_vq"] == "device"
    assert sides["dp_drv_ring"] == "guest"
    assert c_violations(sides, c_includes(CSRC)) == []


def test_the_c_checker_reads_the_folders(tmp_path):
    for rel in ("spec/dp_virtio.h", "device/dp_vq.h", "device/dp_vq.c", "device/dp_vq.cdef",
                "guest/dp_drv.h", "build.py"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text('#include "dp_virtio.h"\n#include <stdint.h>\n')
    assert c_sides(tmp_path) == ({"dp_virtio": "spec", "dp_vq": "device", "dp_drv": "guest"}, [])
    assert c_includes(tmp_path) == {"dp_virtio": set(), "dp_vq": {"dp_virtio"},
                                    "dp_drv": {"dp_virtio"}}  # fmt: skip
    for rel in ("dp_loose.c", "misc/dp_x.h", "guest/dp_vq.c"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("")
    assert c_sides(tmp_path)[1] == [
        "csrc/dp_loose.c is outside csrc/{spec,device,guest}/",
        "dp_vq is in csrc/device/ and csrc/guest/",
        "csrc/misc/dp_x.h is outside csrc/{spec,device,guest}/",
    ]


def test_the_c_checker_finds_each_kind_of_crossing():
    sides = {"dp_virtio": "spec", "dp_cpu": "spec", "dp_vq": "device", "dp_loop": "device",
             "dp_drv": "guest"}  # fmt: skip
    good = {"dp_loop": {"dp_vq", "dp_virtio", "dp_cpu"}, "dp_drv": {"dp_virtio", "dp_cpu"},
            "dp_virtio": {"dp_cpu"}}  # fmt: skip
    assert c_violations(sides, good) == []
    assert c_violations(sides, {**good, "dp_drv": {"dp_vq"}}) == [
        "dp_drv (guest) includes dp_vq.h (device)"
    ]
    assert c_violations(sides, {**good, "dp_vq": {"dp_drv"}}) == [
        "dp_vq (device) includes dp_drv.h (guest)"
    ]
    assert c_violations(sides, {**good, "dp_virtio": {"dp_vq"}}) == [
        "dp_virtio (spec) includes dp_vq.h (device)"
    ]
    assert c_violations(sides, {**good, "dp_vq": {"dp_rand"}}) == [
        "dp_vq (device) includes dp_rand.h, which is in no folder"
    ]
