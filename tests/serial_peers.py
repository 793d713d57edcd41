"""Real serial-sharing stacks in front of the emulator's pty: Debian's ser2net and socat.

Why this exists: labs share boards through ser2net (RFC 2217 or raw TCP, labgrid's
``NetworkSerialPort``) or a quick ``socat`` bridge; zflash must work through each exactly as
a user would run them. Each peer is started on 127.0.0.1 on a free port (never 20408/20409),
from a config file written here, and stopped by the context manager. The bench script
imports this module too.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

#: Ports the project's own demo uses; a test must never bind them.
RESERVED_PORTS = frozenset({20408, 20409})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def _listening(port: int) -> bool:
    """True when a socket listens on 127.0.0.1:port, read from /proc/net/tcp (Linux) so
    that no probe connection opens the device behind the peer (that would be a session)."""
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f[1] == wanted and f[3] == "0A" for f in (line.split() for line in lines))


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Block until the peer listens on 127.0.0.1:port, or fail saying why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {out}")
        if _listening(port):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args[0]} did not listen on port {port} in {timeout} s")


def ser2net_yaml(device: str, port: int, rfc2217: bool) -> str:
    """A ser2net v4 config: one connection from 127.0.0.1:port to ``device``.

    ``rfc2217``: the telnet(rfc2217) accepter a labgrid exporter uses; otherwise raw TCP.
    """
    accepter = f"telnet(rfc2217),tcp,127.0.0.1,{port}" if rfc2217 else f"tcp,127.0.0.1,{port}"
    return ("%YAML 1.1\n---\n"
            "connection: &zflash\n"
            f"  accepter: {accepter}\n"
            f"  connector: serialdev,{device},115200n81,local\n"
            "  options:\n"
            "    kickolduser: true\n")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stdout:
        proc.stdout.close()


@contextlib.contextmanager
def ser2net(binary: str, device: str, workdir: Path, *, rfc2217: bool) -> Iterator[int]:
    """Run ser2net in the foreground (-n, no UUCP locks) in front of ``device``; yields
    the port it accepts on."""
    port = free_port()
    config = workdir / f"ser2net-{port}.yaml"
    config.write_text(ser2net_yaml(device, port, rfc2217))
    proc = subprocess.Popen([binary, "-n", "-u", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc)
        yield port
    finally:
        _stop(proc)


@contextlib.contextmanager
def socat(binary: str, device: str) -> Iterator[int]:
    """Run socat as a raw TCP bridge to ``device`` (one client at a time, each connection
    opening the port afresh); yields the port it listens on."""
    port = free_port()
    proc = subprocess.Popen([binary, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                             f"FILE:{device},rawer"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc)
        yield port
    finally:
        _stop(proc)
