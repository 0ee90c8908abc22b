"""The README's runnable shell blocks, run as written.

A block is runnable when the line before its fence is ``<!-- runnable -->``, or
``<!-- runnable: guest -->`` for one that boots the test guest under QEMU.  The README says
which of its other blocks are illustrations and why.  Each block runs under bash from a fresh
folder holding links to this checkout's ``.venv``, ``scripts`` and ``examples`` (the repository's
root as the block sees it), so that the images it makes land there.  Two changes, and no
other, are made to its text: ``/tmp/`` becomes a private folder, so that runs (and other work
on the machine) never meet, and ``~/.cache/dataplane/guest`` the guest actually built.

The runner plays the user at the keyboard: after a command put in the background (``&``) it
waits, as a person would before typing on, until every socket that command names accepts a
connection; a QEMU guest gets ``cat /sys/block/vda/size; poweroff -f`` typed into its shell.
The block must exit 0 without a traceback; what it left in the background gets SIGTERM and
must end within 30 s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from guest_support import guest_image_fixture  # noqa: F401  (the guest_image fixture)

from dataplane import test_hooks
from dataplane.guest.harness.processes import short_socket_dir
from dataplane.serve.device_keys import markdown_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = re.compile(r"<!-- runnable(?:: (?P<kind>[a-z ]+))? -->\n```sh\n(?P<body>.*?)\n```", re.S)
SOCKET = re.compile(r"(?<![?=\w])(/tmp/[\w./-]+\.sock)|socket=(/tmp/[\w./-]+\.sock)")
GUEST_INPUT = b"cat /sys/block/vda/size; poweroff -f\n"
TIMEOUT_S = 300

# Sourced before the block: wait until each socket accepts a connection (up to 60 s).
PRELUDE = """
__dp_wait() {
  "$__DP_PYTHON" - "$@" <<'EOF'
import socket, sys, time
for path in sys.argv[1:]:
    deadline = time.monotonic() + 60
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{path}: nothing listens there after 60 s")
            time.sleep(0.1)
        finally:
            s.close()
EOF
}
"""


def blocks() -> list[tuple[str, str]]:
    """(kind, body) of each runnable block: kind "" or "guest"."""
    return [(m["kind"] or "", m["body"]) for m in MARK.finditer(README.read_text())]


def _commands(body: str) -> list[str]:
    """The block's commands, continuation lines joined."""
    out: list[str] = []
    for line in body.replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line)
    return out


def script_of(body: str, private: Path, guest_dir: Path | None) -> str:
    """The block as bash runs it: /tmp/ moved, and a wait after each background command."""

    def moved(text: str) -> str:
        text = text.replace("/tmp/", f"{private}/")
        if guest_dir is not None:
            text = text.replace("~/.cache/dataplane/guest", str(guest_dir))
        return text

    lines = ["set -e", PRELUDE]
    for cmd in _commands(body):
        lines.append(moved(cmd))
        if cmd.rstrip().endswith("&"):
            socks = [a or b for a, b in SOCKET.findall(cmd)]
            if socks:
                lines.append(moved("__dp_wait " + " ".join(socks)))
    return "\n".join(lines) + "\n"


def _ids() -> list:
    out = []
    for i, (kind, body) in enumerate(blocks()):
        marks = [pytest.mark.guest] if "guest" in kind else []
        if "qemu-nbd" in body:
            marks.append(pytest.mark.remote)
        first = _commands(body)[0].split()[0] if _commands(body) else "empty"
        out.append(pytest.param(kind, body, id=f"{i}-{Path(first).name}", marks=marks))
    return out


def test_the_readme_has_runnable_blocks():
    kinds = [k for k, _ in blocks()]
    assert "" in kinds and "guest" in kinds, kinds


def _missing(body: str) -> str | None:
    for tool in ("qemu-system-x86_64", "qemu-nbd"):
        if tool in body and shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install qemu-system-x86 qemu-utils)"
    return None


@pytest.mark.parametrize(("kind", "body"), _ids())
def test_runnable_block(kind, body, tmp_path, request):
    why = _missing(body)
    if why:
        pytest.skip(why)
    guest_dir = None
    if "guest" in kind:
        guest = request.getfixturevalue("guest_image")
        guest_dir = guest.vmlinuz.parent
    work = tmp_path / "clone"
    work.mkdir()
    for name in (".venv", "scripts", "examples"):
        (work / name).symlink_to(ROOT / name)
    private = short_socket_dir()
    try:
        _run(script_of(body, private, guest_dir), work, "guest" in kind)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _run(script: str, cwd: Path, guest: bool) -> None:
    env = {**os.environ, "__DP_PYTHON": str(ROOT / ".venv" / "bin" / "python")}
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the block's background jobs share its process group
    )
    out = bytearray()
    reader = threading.Thread(target=lambda: _read(proc, out), daemon=True)
    reader.start()
    deadline = time.monotonic() + TIMEOUT_S
    typed_at = 0.0
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            # The guest's shell is up once its banner is out; type until QEMU ends.
            if guest and b"starting a shell" in out and time.monotonic() - typed_at > 2:
                typed_at = time.monotonic()
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(GUEST_INPUT)
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass
            time.sleep(0.2)
        rc = proc.poll()
    finally:
        left = _stop_group(proc)
        reader.join(10)
    text = out.decode(errors="replace")
    assert rc == 0, f"the block exited {rc} (None: still running after {TIMEOUT_S} s):\n{text}"
    assert left == 0, f"a background command did not end on SIGTERM:\n{text}"
    assert "Traceback" not in text, text
    if guest:
        assert re.search(r"^2097152\r?$", text, re.M), (
            f"the guest did not see a 1 GiB disk:\n{text}"
        )


def _read(proc: subprocess.Popen[bytes], out: bytearray) -> None:
    assert proc.stdout is not None
    while chunk := proc.stdout.read1(4096):
        out.extend(chunk)


def _stop_group(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM what the block left in the background; -9 if one had to be killed."""
    pgid = proc.pid
    pids = _group_members(pgid)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    if proc.poll() is None:
        proc.wait(30)
    worst = 0
    deadline = time.monotonic() + 30
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            worst = worst or -9
    return worst


def _group_members(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and int(entry.name) != pgid:
                pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_images_the_readme_makes_are_ignored_by_git():
    """What `truncate -s SIZE FILE...` makes in the repository's root stays out of `git status`."""
    made = set()
    for line in README.read_text().splitlines():
        m = re.match(r"\s*truncate -s \S+ ((?:[\w.-]+\.img ?)+)", line)
        if m:
            made.update(m[1].split())
    assert {"disk.img", "a.img", "b.img"} <= made
    proc = subprocess.run(["git", "check-ignore", *sorted(made), "out.json"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode == 128:
        pytest.skip(f"not a git checkout: {proc.stderr.strip()}")
    assert set(proc.stdout.split()) == {*made, "out.json"}, proc.stdout


def test_docs_commands_need_no_activated_venv():
    for doc in (README, ROOT / "docs" / "lifecycle.md"):
        for line in doc.read_text().splitlines():
            assert not re.match(r"\s*(?:\$ )?python3? -m dataplane", line), (doc.name, line)


def test_the_readme_says_what_a_sigkill_makes_qemu_print():
    text = " ".join(README.read_text().split())
    assert "vhost VQ 0 ring restore failed: -22" in text and "nothing is lost" in text
    assert ").;" not in text  # the old typo near docs/fuzzing.md


def test_the_readme_key_table_is_the_one_the_code_makes():
    """Between its markers the README holds exactly what device_keys.markdown_table() makes
    (scripts/readme-keys.py rewrites it); and no test-only key."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme-keys.py"), "--check"],
                          capture_output=True, text=True, env=_without_test_hooks())  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert markdown_table() in README.read_text()
    assert "`test-delay`" not in markdown_table()


def _without_test_hooks() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != test_hooks.ENV}
