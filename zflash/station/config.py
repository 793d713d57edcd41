"""The station file (TOML): every setting the command line has, flags overriding it.

Keys are the long option names (``serial-prefix`` or ``serial_prefix``); repeatable options
take a string or a list of strings; paths are relative to the file's own directory, so a
station directory can be copied to another machine as it is. A wrong key, a wrong type or a
bad value is error 9061 naming the file and line, never a traceback.

    package = "zx-demo-1.1.0.zpk"
    trust = ["keys/vendor.pub.pem"]
    port = ["1-1.*"]
    serial-prefix = "ZX"
    mode = "watch"
    jobs = 8
    retries = 2
    log-dir = "logs"
    report = "run.json"
    junit = "run.xml"
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from zflash.errors import Code, ZflashError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class StationConfig:
    package: Path | None = None
    latest: str | None = None
    trust: tuple[Path, ...] = ()
    trust_dir: Path | None = None
    device: tuple[str, ...] = ()
    port: tuple[str, ...] = ()
    serial_prefix: tuple[str, ...] = ()
    usb_id: tuple[str, ...] = ()
    tty: tuple[str, ...] = ()
    mode: str = "once"
    max_devices: int | None = None
    jobs: int | None = None
    device_timeout: float | None = None
    retries: int = 0
    timeout: float = 5.0
    log_dir: Path | None = None
    report: Path | None = None
    junit: Path | None = None
    json: bool = False
    no_reboot: bool = False
    wipe_userdata: bool = False
    no_delta: bool = False
    accept_unverifiable: bool = False
    skip_host_checks: bool = False
    allow_partial: bool = False
    pin: tuple[str, ...] = ()
    pin_file: Path | None = None
    ca_file: Path | None = None
    cache_dir: Path | None = None

    def merged(self, flags: dict[str, Any]) -> "StationConfig":
        """Flags given on the command line (None / empty: not given) override the file."""
        given = {k: v for k, v in flags.items() if v not in (None, ())}
        unknown = set(given) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"not station settings: {sorted(unknown)}")
        return replace(self, **given)


#: how each setting is checked: (kind, constraint)
_KIND: dict[str, str] = {
    "package": "path", "latest": "str", "trust": "paths", "trust_dir": "path",
    "device": "strs", "port": "strs", "serial_prefix": "strs", "usb_id": "strs", "tty": "strs",
    "mode": "mode", "max_devices": "count", "jobs": "count", "device_timeout": "seconds",
    "retries": "count0", "timeout": "seconds", "log_dir": "path", "report": "path",
    "junit": "path", "json": "bool", "no_reboot": "bool", "wipe_userdata": "bool",
    "no_delta": "bool", "accept_unverifiable": "bool", "skip_host_checks": "bool",
    "allow_partial": "bool", "pin": "strs", "pin_file": "path", "ca_file": "path",
    "cache_dir": "path",
}
_EXPECTED = {"path": "a path (string)", "paths": "a path or a list of paths",
             "str": "a string", "strs": "a string or a list of strings",
             "mode": '"once" or "watch"', "count": "a whole number >= 1",
             "count0": "a whole number >= 0", "seconds": "a number of seconds > 0",
             "bool": "true or false"}


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"""^\s*(\[\s*)?["']?{re.escape(key)}["']?\s*(=|\])""")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None


def _convert(kind: str, value: Any, base: Path) -> Any:
    """The setting's value, or ValueError when it has the wrong type or range."""
    if kind in ("path", "str"):
        if not isinstance(value, str) or not value:
            raise ValueError
        return base / Path(value).expanduser() if kind == "path" else value
    if kind in ("paths", "strs"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise ValueError
        return tuple(base / Path(i).expanduser() for i in items) if kind == "paths" \
            else tuple(items)
    if kind == "mode":
        if value not in ("once", "watch"):
            raise ValueError
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError
        return value
    if kind in ("count", "count0"):
        if isinstance(value, bool) or not isinstance(value, int) or \
                value < (1 if kind == "count" else 0):
            raise ValueError
        return value
    if kind == "seconds":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError
        return float(value)
    raise AssertionError(kind)


def load_station_file(path: Path) -> StationConfig:
    """Read and check a station file; every mistake is error 9061 with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ZflashError(Code.STATION_FILE, f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ZflashError(Code.STATION_FILE, f"{path}: not valid TOML: {exc}") from None
    base = path.resolve().parent
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        line = _line_of(text, raw_key)
        where = f"{path}:{line}" if line else str(path)
        kind = _KIND.get(key)
        if kind is None:
            known = ", ".join(sorted(k.replace("_", "-") for k in _KIND))
            raise ZflashError(Code.STATION_FILE, f"{where}: unknown setting {raw_key!r} "
                                                 f"(known: {known})")
        try:
            values[key] = _convert(kind, value, base)
        except ValueError:
            raise ZflashError(Code.STATION_FILE, f"{where}: {raw_key} must be "
                                                 f"{_EXPECTED[kind]}, not {value!r}") from None
    return StationConfig(**values)

