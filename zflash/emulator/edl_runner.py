"""Serving the emulated EDL device on a pty (the QDLoader COM variant) until stopped.

``EdlPtyServer`` accepts one host session at a time and wraps it in the shaping and faults
of ``LinkFaults`` (the same wrappers every emulated mode uses); a ``FaultyLink`` is kept
across sessions so a drop fires once and the host's next attempt resumes. A power loss
(the device's ``PowerCut``) ends the session with a hang-up; the next connection meets the
boot ROM again, over the same LUN files. ``run_edl`` is
``zflash emulate --edl``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Callable

from zflash.emulator.edl_power import PowerCut, PowerLoss
from zflash.emulator.edl_server import EdlDevice, EdlOptions
from zflash.emulator.link import PtyLink
from zflash.emulator.runner import LinkFaults, LinkWrapper, serve_until_stopped

ACCEPT_POLL = 0.1


class EdlPtyServer:
    def __init__(self, device: EdlDevice, link_path: str | None = None,
                 faults: LinkFaults | None = None) -> None:
        self.device = device
        self.faults = faults or LinkFaults()
        self.pty = PtyLink(link_path)
        self.url = f"edl+serial://{link_path or self.pty.slave_path}"
        self.stop_event = threading.Event()
        self._links = LinkWrapper(self.faults)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="edl-pty")

    def start(self) -> "EdlPtyServer":
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self.stop_event.is_set():
            conn = self.pty.accept(ACCEPT_POLL)
            if conn is None:
                continue
            try:
                self.device.serve(self._links.wrap(conn))
            except PowerLoss:
                pass  # the hang-up below is the host's news; the next connection is a new boot
            except Exception as exc:  # noqa: BLE001 - a session's end is logged, not fatal
                self.device.log(f"session ended: {exc}")
            finally:
                conn.close()

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=5)
        self.pty.close()


def run_edl(state_dir: Path, link_path: str | None, url_file: Path | None,
            faults: LinkFaults, quirks: tuple[str, ...], fail_next_boot: bool,
            log: Callable[[str], None], power_loss: str | None = None) -> int:
    """``zflash emulate --edl``: serve until SIGTERM or Ctrl-C; the exit status. With
    ``power_loss`` (STEP[:N], see edl_power) the process dies at that step, status 137."""
    options = EdlOptions(com_variant=True, logs_after_response="logs-after-response" in quirks,
                         pending_done="pending-done" in quirks, fail_next_boot=fail_next_boot)
    power = PowerCut(power_loss) if power_loss else None
    device = EdlDevice(state_dir, options=options, log=log, power=power)
    server = EdlPtyServer(device, link_path, faults).start()
    print(server.url)
    sys.stdout.flush()
    if url_file:
        url_file.write_text(server.url + "\n")
    try:
        serve_until_stopped(server.stop_event)
    finally:
        server.stop()
    return 0
