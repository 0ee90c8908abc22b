"""The test-hooks switch: ``DATAPLANE_TEST_HOOKS=1`` in the environment of ``dataplane serve``.

A normal install has no hook for tests.  With the switch on (tests set it in the
server's environment; never in production) the process has these as well:

- the device key ``test-delay=EVERY:US`` (serve/device_keys.py, docs/test-delay.md):
  every EVERY-th completion of each dataplane thread's engine arrives US µs late, so
  that requests complete out of order by force (csrc's dp_delay stage; C datapath only);
- the management command ``{"cmd": "test-kill-thread", "name": NAME}`` (serve/mgmt.py):
  the device's first dataplane thread dies as of a bug;
- the management command ``{"cmd": "test-forbidden-call", "name": NAME}``: that thread
  makes a system call outside its seccomp allow-list (getppid), which kills the
  process under ``--sandbox on``.

Without it, ``test-delay=...`` is an unknown key and the commands are unknown commands.
The switch is read when it is used, so a test may set it in its own process too.
"""

from __future__ import annotations

import os

ENV = "DATAPLANE_TEST_HOOKS"
ON = {ENV: "1"}  # the environment to add for a server with the hooks


def enabled() -> bool:
    """Whether the test hooks exist in this process."""
    return os.environ.get(ENV) == "1"
