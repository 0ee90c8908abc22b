"""Write the README's table of device keys from the table in dataplane/serve/device_keys.py.

    .venv/bin/python scripts/readme-keys.py          # rewrite it in README.md
    .venv/bin/python scripts/readme-keys.py --check  # exit 1 if README.md differs

The table sits between the BEGIN and END markers below; nothing else is touched.
tests/test_readme.py runs ``--check``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dataplane.serve.device_keys import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- device-keys: made by scripts/readme-keys.py from dataplane/serve/device_keys.py -->\n"
END = "<!-- /device-keys -->\n"


def rewritten(text: str) -> str:
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"{README}: the markers {BEGIN.strip()} and {END.strip()} are missing")
    return f"{head}{BEGIN}{markdown_table()}{END}{tail}"


def main(argv: list[str]) -> int:
    text = README.read_text()
    new = rewritten(text)
    if argv == ["--check"]:
        if new != text:
            print(f"{README}: the table of device keys is stale: run {sys.argv[0]}")
            return 1
        return 0
    if argv:
        raise SystemExit(__doc__)
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
