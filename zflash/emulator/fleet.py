"""A line of emulated devices in one process, each plugged in and pulled out at run time.

Why this exists: a station has to be shown (and tested) against devices that come and go.
`Fleet` runs N emulated devices, each with its own state directory (``STATE/devNN``), its own
serial number (ZXEMU0001, ...) and its own links. Unplugging a device closes its links and its
port disappears (the pty's stable symlink ``STATE/devNN.tty`` is removed, its TCP port closes);
plugging it back starts a fresh download-mode session on the same names, from the state the
device kept on disk (so an interrupted update resumes, as on a real device).

What drives it: a schedule (``T plug|unplug INDEX`` and ``T stop`` lines, T in seconds from
the start) and/or a control socket (`ControlServer`: a unix socket taking ``plug N``,
``unplug N``, ``status`` and ``stop`` lines).
"""

from __future__ import annotations

import copy
import os
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from zflash.emulator.runner import EmulatorRunner, LinkFaults, serve_until_stopped
from zflash.emulator.storage import Profile
from zflash.errors import Code, ZflashError

SERIAL_FORMAT = "ZXEMU{:04d}"
MAX_DEVICES = 64

#: per-device options (``--device-option N:KEY=VALUE``): key -> Profile field, or a flag
PROFILE_KEYS = {"product": "product", "hw-rev": "hardware_revision", "baseband": "baseband",
                "serial-number": "serial"}
FLAG_KEYS = ("fail-next-boot",)
FLOAT_KEYS = ("rate",)


@dataclass
class Links:
    """Which links every device serves; TCP ports are consecutive from ``tcp_base`` (0:
    each device picks a free port once, then keeps it across unplug/plug)."""

    pty: bool = False
    tcp_base: int | None = None
    fastboot_base: int | None = None


@dataclass
class DeviceSpec:
    """One device of the fleet: identity, faults and the flags of its first plug."""

    index: int
    profile: Profile
    faults: LinkFaults
    fail_next_boot: bool = False


@dataclass(frozen=True)
class ScheduleEvent:
    at: float
    action: str  # plug | unplug | stop
    index: int = 0


def parse_schedule(text: str, count: int, source: str = "schedule") -> list[ScheduleEvent]:
    """``T plug|unplug INDEX`` / ``T stop`` lines (``#`` comments); a bad line is a coded
    error naming it. Sorted by time, stable for equal times."""
    events = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        where = f"{source} line {number}: {raw.strip()!r}"
        try:
            at = float(words[0])
        except ValueError:
            at = -1.0
        if not (at >= 0 and at != float("inf")):
            raise ZflashError(Code.USAGE, f"{where}: the time must be seconds >= 0")
        if len(words) == 2 and words[1] == "stop":
            events.append(ScheduleEvent(at, "stop"))
            continue
        if len(words) != 3 or words[1] not in ("plug", "unplug"):
            raise ZflashError(Code.USAGE, f"{where}: expected 'T plug|unplug INDEX' or 'T stop'")
        events.append(ScheduleEvent(at, words[1], _index(words[2], count, where)))
    return sorted(events, key=lambda e: e.at)


def _index(text: str, count: int, where: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= count:
        raise ZflashError(Code.USAGE, f"{where}: the device index must be 1..{count}")
    return int(text)


def device_specs(count: int, base: Profile, faults: LinkFaults, fail_next_boot: bool,
                 options: list[str]) -> list[DeviceSpec]:
    """N specs from the shared settings plus ``N:KEY=VALUE`` options (coded errors)."""
    if not 1 <= count <= MAX_DEVICES:
        raise ZflashError(Code.USAGE, f"--devices must be 1..{MAX_DEVICES}, got {count}")
    specs = []
    for index in range(1, count + 1):
        profile = copy.deepcopy(base)
        profile.serial = SERIAL_FORMAT.format(index)
        specs.append(DeviceSpec(index, profile, replace(faults), fail_next_boot))
    for option in options:
        where = f"--device-option {option!r}"
        head, _, assignment = option.partition(":")
        key, eq, value = assignment.partition("=")
        if not eq and key in FLAG_KEYS:
            value, eq = "1", "="
        if not eq:
            raise ZflashError(Code.USAGE, f"{where}: expected INDEX:KEY=VALUE")
        spec = specs[_index(head, count, where) - 1]
        if key in PROFILE_KEYS and value:
            setattr(spec.profile, PROFILE_KEYS[key], value)
        elif key in FLAG_KEYS and value in ("1", "0", "true", "false", "yes", "no"):
            spec.fail_next_boot = value in ("1", "true", "yes")
        elif key in FLOAT_KEYS:
            try:
                spec.faults.bytes_per_second = float(value) if float(value) > 0 else None
            except ValueError:
                raise ZflashError(Code.USAGE, f"{where}: rate must be a number") from None
        else:
            known = ", ".join([*PROFILE_KEYS, *FLAG_KEYS, *FLOAT_KEYS])
            raise ZflashError(Code.USAGE, f"{where}: unknown key or empty value "
                                          f"(keys: {known})")
    serials = [s.profile.serial for s in specs]
    if len(set(serials)) != len(serials):
        raise ZflashError(Code.USAGE, "two devices of the fleet have the same serial number")
    return specs


class FleetDevice:
    """One device of the line: its state directory, stable link names, plugged or not."""

    def __init__(self, spec: DeviceSpec, root: Path, links: Links,
                 log: Callable[[str], None]) -> None:
        self.spec = spec
        self.name = f"dev{spec.index:02d}"
        self.state_dir = root / self.name
        self.pty_path = str(root / f"{self.name}.tty") if links.pty else None
        self.tcp_port = _port(links.tcp_base, spec.index)
        self.fastboot_port = _port(links.fastboot_base, spec.index)
        self._log = log
        self._lock = threading.Lock()
        self._runner: EmulatorRunner | None = None
        self._plugs = 0

    @property
    def serial(self) -> str:
        return self.spec.profile.serial

    @property
    def plugged(self) -> bool:
        return self._runner is not None

    @property
    def urls(self) -> list[str]:
        """The stable names a host opens, plugged or not."""
        urls = [f"serial://{self.pty_path}"] if self.pty_path else []
        if self.tcp_port is not None:
            urls.append(f"tcp://127.0.0.1:{self.tcp_port}")
        if self.fastboot_port is not None:
            urls.append(f"fastboot+tcp://127.0.0.1:{self.fastboot_port}")
        return urls

    def plug(self) -> bool:
        """Start serving (False when already plugged). TCP ports chosen on the first plug are
        kept, so a device comes back on the same URL."""
        with self._lock:
            if self._runner is not None:
                return False
            runner = EmulatorRunner(self.state_dir, self.spec.profile, self.spec.faults,
                                    fail_next_boot=self.spec.fail_next_boot and not self._plugs,
                                    log=lambda m: self._log(f"{self.serial}: {m}"))
            try:
                if self.pty_path:
                    runner.start_pty(self.pty_path)
                if self.tcp_port is not None:
                    self.tcp_port = _port_of(runner.start_tcp(self.tcp_port))
                if self.fastboot_port is not None:
                    self.fastboot_port = _port_of(runner.start_fastboot_tcp(self.fastboot_port))
            except OSError as exc:
                runner.stop()
                raise ZflashError(Code.USAGE, f"{self.serial}: cannot open its link: "
                                              f"{exc.strerror or exc}") from None
            self._runner = runner
            self._plugs += 1
        self._log(f"{self.serial} plugged in: {' '.join(self.urls)}")
        return True

    def unplug(self) -> bool:
        """Pull the cable: the host's session fails, the port goes away (False when it was
        not plugged). The device's state stays on disk for the next plug."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is None:
            return False
        runner.stop()
        self._log(f"{self.serial} unplugged")
        return True


def _port(base: int | None, index: int) -> int | None:
    """The device's fixed port: base + index - 1, or (base 0) a free one picked now, so
    that a device that starts unplugged already has its URL."""
    if base is None:
        return None
    if base:
        return base + index - 1
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@dataclass
class Fleet:
    """N devices under one state root; ``run`` plays a schedule until stopped."""

    root: Path
    specs: list[DeviceSpec]
    links: Links
    log: Callable[[str], None] = lambda message: None
    devices: list[FleetDevice] = field(init=False)
    stop_event: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.links.tcp_base and self.links.tcp_base + len(self.specs) - 1 > 65535:
            raise ZflashError(Code.USAGE, "--tcp: not enough ports above the base port")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ZflashError(Code.FILE_UNWRITABLE,
                              f"cannot create {self.root}: {exc.strerror}") from None
        self.devices = [FleetDevice(spec, self.root, self.links, self.log)
                        for spec in self.specs]

    def device(self, index: int) -> FleetDevice:
        if not 1 <= index <= len(self.devices):
            raise ZflashError(Code.USAGE, f"no device {index} (1..{len(self.devices)})")
        return self.devices[index - 1]

    def start(self, schedule: list[ScheduleEvent] | None = None) -> None:
        """Plug every device in, except those whose first scheduled event is a plug."""
        first: dict[int, str] = {}
        for event in schedule or []:
            if event.index:
                first.setdefault(event.index, event.action)
        for device in self.devices:
            if first.get(device.spec.index) != "plug":
                device.plug()

    def play(self, schedule: list[ScheduleEvent]) -> threading.Thread:
        """Run the schedule in a thread (times count from this call)."""
        started = time.monotonic()

        def run() -> None:
            for event in schedule:
                if self.stop_event.wait(max(0.0, started + event.at - time.monotonic())):
                    return
                self.apply(event.action, event.index)

        thread = threading.Thread(target=run, name="fleet-schedule", daemon=True)
        thread.start()
        return thread

    def apply(self, action: str, index: int = 0) -> str:
        """One command (plug, unplug, stop); the answer line for the control socket."""
        if action == "stop":
            self.stop_event.set()
            return "ok"
        device = self.device(index)
        try:
            changed = device.plug() if action == "plug" else device.unplug()
        except ZflashError as exc:
            self.log(str(exc.detail))
            return f"error: {exc.detail}"
        return "ok" if changed else f"ok (already {'plugged' if action == 'plug' else 'unplugged'})"

    def status_lines(self) -> list[str]:
        return [f"{d.spec.index} {d.serial} {'plugged' if d.plugged else 'unplugged'} "
                f"{' '.join(d.urls)}" for d in self.devices]

    def urls(self) -> list[str]:
        return [url for device in self.devices for url in device.urls]

    def stop(self) -> None:
        self.stop_event.set()
        for device in self.devices:
            device.unplug()


class ControlServer:
    """A unix socket taking one command a line: ``plug N``, ``unplug N``, ``status``,
    ``stop``. Each gets an answer line (``ok``, ``error: ...``; ``status`` one line per
    device, then ``ok``). Only the owner can connect (mode 0600)."""

    def __init__(self, fleet: Fleet, path: Path) -> None:
        self.fleet, self.path = fleet, Path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.path.is_socket():
                self.path.unlink()
            self._sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self._sock.listen(4)
        except OSError as exc:
            self._sock.close()
            raise ZflashError(Code.FILE_UNWRITABLE, f"control socket {path}: "
                                                    f"{exc.strerror or exc}") from None
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, name="fleet-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self.fleet.stop_event.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb", buffering=0) as stream:
            for raw in stream:
                try:
                    reply = self.answer(raw.decode("utf-8", "replace").strip())
                except ZflashError as exc:
                    reply = f"error: {exc.detail}"
                try:
                    stream.write(reply.encode() + b"\n")
                except OSError:
                    return

    def answer(self, line: str) -> str:
        words = line.split()
        if words == ["status"]:
            return "\n".join([*self.fleet.status_lines(), "ok"])
        if words == ["stop"]:
            return self.fleet.apply("stop")
        if len(words) == 2 and words[0] in ("plug", "unplug"):
            where = f"control command {line!r}"
            return self.fleet.apply(words[0], _index(words[1], len(self.fleet.devices), where))
        return "error: expected 'plug N', 'unplug N', 'status' or 'stop'"

    def close(self) -> None:
        self._sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass
        self._thread.join(timeout=2)


def send_control(path: Path, line: str, timeout: float = 10.0) -> str:
    """Send one command to a fleet's control socket; its answer (without the newline)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(line.encode() + b"\n")
        answer = b""
        while not _final(answer):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.decode().rstrip("\n")


def _final(answer: bytes) -> bool:
    """True once the last complete line is an ``ok`` or ``error`` line."""
    if not answer.endswith(b"\n"):
        return False
    last = answer.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return last.startswith((b"ok", b"error"))


def run_fleet(root: Path, count: int, profile: Profile, faults: LinkFaults,
              fail_next_boot: bool, options: list[str], pty: bool, tcp_base: int | None,
              fastboot_base: int | None, schedule_file: Path | None, control: Path | None,
              url_file: Path | None, log: Callable[[str], None],
              out: Callable[[str], None]) -> None:
    """`zflash emulate --devices N`: print the URLs (one a line, device order), play the
    schedule, answer the control socket, until a ``stop`` event, SIGTERM or Ctrl-C."""
    schedule: list[ScheduleEvent] = []
    if schedule_file is not None:
        try:
            text = Path(schedule_file).read_text()
        except OSError as exc:
            raise ZflashError(Code.FILE_UNREADABLE, f"{schedule_file}: {exc.strerror}") from None
        schedule = parse_schedule(text, count, str(schedule_file))
    if not profile.trusted_keys:
        log("warning: the devices trust no key and will refuse every package (use --trust)")
    fleet = Fleet(Path(root), device_specs(count, profile, faults, fail_next_boot, options),
                  Links(pty, tcp_base, fastboot_base), log)
    server = None
    try:
        fleet.start(schedule)
        if control is not None:
            server = ControlServer(fleet, control)
        urls = fleet.urls()
        if url_file is not None:  # first: a script that read the URLs may read the file
            try:
                Path(url_file).write_text("".join(f"{u}\n" for u in urls))
            except OSError as exc:
                raise ZflashError(Code.FILE_UNWRITABLE,
                                  f"{url_file}: {exc.strerror}") from None
        for url in urls:
            out(url)
        fleet.play(schedule)
        serve_until_stopped(fleet.stop_event)
    finally:
        if server is not None:
            server.close()
        fleet.stop()
