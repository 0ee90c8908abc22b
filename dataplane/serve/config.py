"""Device specs in their three forms: ``--device KEY=VALUE,...``, ``--config FILE.toml`` and
the management socket's ``add-device`` object; and what a whole ``serve`` is asked to run.

The keys and how their values are read are in device_keys.py, the checks of a device in
device_checks.py.  A config file
holds ``[[device]]`` tables and, optionally, a top-level ``mgmt = "PATH"`` (the management
socket), ``metrics = "ADDR:PORT"`` (``--metrics``), ``user = "USER[:GROUP]"`` (``--user``)
and ``sandbox = "on|off|log"`` (``--sandbox``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from dataplane.errors import UsageError
from dataplane.serve import activation
from dataplane.serve.device_checks import check_options
from dataplane.serve.device_keys import KEYS, by_name, check_given, key_name
from dataplane.serve.device_options import DeviceOptions

__all__ = [
    "ServeConfig",
    "load_config",
    "options_from_mapping",
    "options_of",
    "parse_device",
    "parse_listen",
    "spec_items",
    "take_activated_sockets",
]


def options_of(
    values: Mapping[str, object], where: str = "", *, flags: bool = False, given: Iterable[str] = ()
) -> DeviceOptions:
    """A device from its parsed ``{field: value}`` (the keys' fields), checked by
    check_options; the limit keys' values (``iops_limit`` ...) become its ``limits``."""
    limit_keys = {k.field: k.name for k in KEYS if k.live}
    opts = DeviceOptions(**{f: v for f, v in values.items() if f not in limit_keys})  # type: ignore[arg-type]
    limits = {key: values[f] for f, key in limit_keys.items() if f in values}
    check_given(opts, given, where, flags=flags)
    check_options(opts, where, flags=flags, limits=limits)
    return opts


# The fields that name a file: relative ones resolve from a config file's folder, and
# add-device takes only absolute ones (the server's working directory is not the client's).
PATH_FIELDS = ("socket", "image", "ceph_conf", "ceph_keyring")


def options_from_mapping(
    spec: Mapping[str, object], where: str, *, base: Path | None = Path()
) -> DeviceOptions:
    """A device from ``{key: value}`` (TOML table, JSON object); checked by ``check_options``.

    ``base``: the folder relative paths resolve from (a config file's); None: relative paths
    are refused (``add-device``); by default they stay as given (``--device``: the cwd's)."""
    if not isinstance(spec, Mapping):
        raise UsageError(f"{where}: a device is a table of KEY = VALUE, not {spec!r}")
    values: dict[str, object] = {}
    for raw, value in spec.items():
        key = key_name(str(raw), where)
        if key.field in values:
            raise UsageError(f"{where}: {key.name} is given twice")
        try:
            values[key.field] = key.parse(key.name, value)
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
    if "image" not in values:
        raise UsageError(f"{where}: image= is required")
    for fname in PATH_FIELDS:
        path = values.get(fname)
        if not isinstance(path, Path) or path.is_absolute():
            continue
        if base is None:
            raise UsageError(
                f"{where}: {fname.replace('_', '-')}={path} is a relative path: give an absolute "
                "one (the server does not run in your directory)"
            )
        values[fname] = Path(base, path)
    if "socket" not in values and not activation.listen_fds():
        raise UsageError(f"{where}: socket= is required")
    return options_of(values, where, given=values)


def parse_device(text: str, where: str = "--device") -> DeviceOptions:
    """``socket=PATH,image=FILE[,key=value...]`` (``--device``) -> DeviceOptions."""
    return options_from_mapping(spec_items(text, where), where)


def spec_items(text: str, where: str, spec: dict[str, object] | None = None) -> dict[str, object]:
    """``key=value[,key=value...]`` -> ``{key: "value"}`` (keys checked, a bare ``read-only``
    is on), added to ``spec``; UsageError for a key given twice."""
    spec = {} if spec is None else spec
    for token in text.split(","):
        if not token.strip():
            raise UsageError(f"{where}: empty item in {text!r}")
        raw, eq, value = token.partition("=")
        if not eq:
            bare = by_name().get(raw.strip().replace("_", "-"))
            if bare is None or not bare.is_bool:
                raise UsageError(
                    f"{where}: {token!r} is not KEY=VALUE (separate the CPUs of cpus= "
                    "with ':', e.g. cpus=0:2-3)"
                )
            value = "on"
        key = key_name(raw, where)
        if key.name in spec:
            raise UsageError(f"{where}: {key.name} is given twice")
        spec[key.name] = value.strip()
    return spec


def take_activated_sockets(devices: list[DeviceOptions]) -> list[DeviceOptions]:
    """Under systemd socket activation, give each device without ``socket=`` its named fd."""
    out = []
    for d in devices:
        if d.socket is None:
            inherited = activation.socket_named(d.name)
            if inherited is None:
                names = ", ".join(s.name for s in activation.listen_fds() if s.name) or "none"
                raise UsageError(
                    f"device {d.name!r} has no socket=, and no socket systemd passed is named "
                    f"{d.name!r} (FileDescriptorName= of the .socket unit; passed: {names})"
                )
            d = replace(d, socket=inherited)
        out.append(d)
    return out


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[::1]:9100``; ``:9100`` is every address; port 0: any free one)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDR:PORT (e.g. 127.0.0.1:9100)")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port)


@dataclass(slots=True)
class ServeConfig:
    """Everything ``dataplane serve`` was asked to run."""

    devices: list[DeviceOptions]
    mgmt: Path | None = None
    metrics: tuple[str, int] | None = None  # --metrics ADDR:PORT
    user: str | None = None  # --user USER[:GROUP]: switched to after start-up
    sandbox: str | None = None  # --sandbox on|off|log (None: the default)


def load_config(path: Path) -> ServeConfig:
    """Read ``--config FILE.toml``: ``[[device]]`` tables and an optional ``mgmt``."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--config {path}: not valid TOML: {e}") from None
    for key in doc:
        if key not in ("device", "mgmt", "metrics", "user", "sandbox"):
            raise UsageError(
                f"--config {path}: unknown top-level key {key!r} "
                "(use [[device]] tables, mgmt, metrics, user and sandbox)"
            )
    tables = doc.get("device", [])
    if not isinstance(tables, list):
        raise UsageError(f"--config {path}: write devices as [[device]] tables")
    base = path.parent  # relative paths in the file are the file's, not the cwd's
    devices = [
        options_from_mapping(t, f"--config {path}: [[device]] #{i + 1}", base=base)
        for i, t in enumerate(tables)
    ]
    mgmt = doc.get("mgmt")
    if mgmt is not None and (not isinstance(mgmt, str) or not mgmt):
        raise UsageError(f"--config {path}: mgmt must be a socket path string")
    metrics = doc.get("metrics")
    if metrics is not None:
        try:
            metrics = parse_listen(metrics if isinstance(metrics, str) else repr(metrics))
        except ValueError as e:
            raise UsageError(f"--config {path}: metrics = {e}") from None
    user = doc.get("user")
    if user is not None and (not isinstance(user, str) or not user):
        raise UsageError(f'--config {path}: user must be a string, "USER" or "USER:GROUP"')
    sandbox = doc.get("sandbox")
    if sandbox is not None and sandbox not in ("on", "off", "log"):
        raise UsageError(f'--config {path}: sandbox must be "on", "off" or "log"')
    return ServeConfig(devices, base / mgmt if mgmt else None, metrics, user, sandbox)
