#!/usr/bin/env python3
"""Send one QMP command to a QEMU monitor socket and print its answer as JSON.

    scripts/qmp.py /tmp/src-qmp.sock migrate '{"uri": "unix:/tmp/migrate.sock"}'
    scripts/qmp.py /tmp/src-qmp.sock query-migrate

QEMU started with ``-qmp unix:PATH,server=on,wait=off``.  Exit status 1 with QEMU's
description of the error, 2 for bad arguments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dataplane.guest.harness.qmp import Qmp, QmpError


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: qmp.py SOCKET COMMAND [JSON-ARGUMENTS]", file=sys.stderr)
        return 2
    try:
        arguments = json.loads(argv[2]) if len(argv) == 3 else {}
    except json.JSONDecodeError as e:
        print(f"qmp.py: the arguments are not JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(arguments, dict):
        print("qmp.py: the arguments must be a JSON object", file=sys.stderr)
        return 2
    try:
        with Qmp(Path(argv[0]), timeout=10) as qmp:
            print(json.dumps(qmp.execute(argv[1], **arguments), indent=2))
    except (QmpError, OSError) as e:
        print(f"qmp.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
