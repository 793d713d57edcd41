"""Rendering events (flash, download): tqdm bars on a terminal, nothing on a pipe, JSON lines
with --json (progress included, at the stamping layer's cadence).

The library emits plain dict events; this is the only place that decides how they look.
Progress goes to stderr, results to stdout. ``-q`` keeps only results and errors (no bars,
no notes); ``-v`` adds a line for every event that has no text form. A failed check is not
rendered here: the refusal that follows it prints each failure once, with its fix
(cli/common.fail).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from zflash.cli.common import use_color, verbosity

if TYPE_CHECKING:
    from tqdm import tqdm


#: Events never shown as text, even with -v: the progress bars already show them.
_SILENT = frozenset({"bytes_sent", "bytes_received", "progress"})
#: How a message names each download mode.
MODE_NAMES = {"fastboot": "fastboot", "edl": "EDL", "zdl": "download mode"}


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar on stderr; coloured only where colour is allowed (NO_COLOR, a terminal).

    tqdm is imported here, on a terminal only: it costs ~25 ms of start-up (importlib.metadata
    for its version), which a piped or --json flash need not pay (D181).
    """
    from tqdm import tqdm
    return tqdm(file=sys.stderr, colour="green" if use_color() else None, **kwargs)


class EventRenderer:
    """Callable event sink for the flasher."""

    def __init__(self, as_json: bool, progress: bool | None = None) -> None:
        self.as_json = as_json
        self.verbosity = verbosity()
        self.progress = (sys.stderr.isatty() and self.verbosity >= 0 if progress is None
                         else progress)
        self._overall: tqdm | None = None
        self._part: tqdm | None = None
        self.events: list[dict[str, Any]] = []
        self._started = time.monotonic()

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self.as_json:  # progress too: the stamping layer (zflash.events) paces it
            stamped = {"elapsed": round(time.monotonic() - self._started, 3), **event}
            click.echo(json.dumps(stamped, sort_keys=True, default=str))
            return
        handler = getattr(self, f"_on_{event['event']}", None)
        if handler:
            handler(event)
        elif self.verbosity > 0 and event["event"] not in _SILENT:
            self._note(f"event: {json.dumps(event, sort_keys=True, default=str)}")

    # Text rendering ------------------------------------------------------------------
    def _note(self, text: str) -> None:
        if self.verbosity < 0:
            return
        if self._overall is not None:
            self._overall.write(text, file=sys.stderr)
        else:
            click.echo(text, err=True)

    def _on_connected(self, e: dict[str, Any]) -> None:
        if e.get("protocol") == "fastboot":
            limit = e.get("max_data")
            self._note(f"connected to {e['url']} (fastboot, max-download-size "
                       f"{limit if limit else 'not reported'})")
            return
        if e.get("protocol") == "edl":
            self._note(f"connected to {e['url']} (Qualcomm EDL: Sahara, then Firehose)")
            return
        baud = f", {e['baud']} baud" if e.get("baud") else ""
        self._note(f"connected to {e['url']} (ZDL, frames up to {e['max_data'] >> 10} KiB, "
                   f"window {e['window']}{baud})")

    def _on_device(self, e: dict[str, Any]) -> None:
        f, unreported = e["facts"], e.get("unreported") or {}

        def fact(key: str, slot_key: str | None = None) -> str:
            if key in unreported or (slot_key and slot_key in unreported):
                return "not reported"
            value = f.get(key)
            return "none" if value in (None, "") else str(value)
        self._note(f"device: {fact('product')} rev {fact('hardware_revision')}, baseband "
                   f"{fact('baseband')}, serial {fact('serial')}, running slot "
                   f"{fact('current_slot', 'slots')}")

    def _on_check_failed(self, e: dict[str, Any]) -> None:
        """Printed once, by the refusal that follows (with its fix), not here too."""

    def _on_check_unverified(self, e: dict[str, Any]) -> None:
        self._note(f"not verified, accepted (--accept-unverifiable): {e['message']}")

    def _on_check_overridden(self, e: dict[str, Any]) -> None:
        self._note(f"refusal waived ({e['option']}): {e['message']}")

    def _on_check_passed(self, e: dict[str, Any]) -> None:
        self._note(f"check passed: {e['check']}")

    def _on_checks_skipped(self, e: dict[str, Any]) -> None:
        self._note("host checks skipped (--skip-host-checks); the device still checks")

    def _on_update_ready(self, e: dict[str, Any]) -> None:
        self._note(f"device accepted the package; writing slot {e['slot'] or '(none)'}")

    def _on_plan(self, e: dict[str, Any]) -> None:
        """The overall bar: image bytes, counting skipped ones as done (they are)."""
        if self.progress and self._overall is None:
            self._overall = progress_bar(total=e["image_bytes"], unit="B", unit_scale=True,
                                unit_divisor=1024, desc="overall", position=0)

    def _on_partition_started(self, e: dict[str, Any]) -> None:
        if self._part is not None:
            self._part.close()
        where = f"{e['partition']}_{e['slot']}" if e.get("slot") else e["partition"]
        if self.progress:
            self._part = progress_bar(total=max(0, e["size"] - e["skipped_bytes"]), unit="B",
                             unit_scale=True, unit_divisor=1024, desc=where, leave=False,
                             position=1)
        if self._overall is not None:
            self._overall.update(e["skipped_bytes"])
        kept = e.get("kept_bytes", e["skipped_bytes"])
        if kept:
            self._note(f"{where}: {kept} bytes already on the device (hash-checked), not sent")
        if e.get("zero_bytes"):
            self._note(f"{where}: {e['zero_bytes']} bytes of zero blocks, not sent: the device "
                       "fills them itself")

    def _on_bytes_sent(self, e: dict[str, Any]) -> None:
        for bar in (self._part, self._overall):
            if bar is not None:
                bar.update(e["bytes"])

    def _on_backup_started(self, e: dict[str, Any]) -> None:
        where = f"{e['partition']}_{e['slot']}" if e.get("slot") else e["partition"]
        if self.progress:
            self._part = progress_bar(total=e["size"], unit="B", unit_scale=True,
                                      unit_divisor=1024, desc=f"reading {where}", leave=False)
        else:
            self._note(f"reading {where}: {e['size']} bytes")

    def _on_bytes_received(self, e: dict[str, Any]) -> None:
        if self._part is not None:
            self._part.update(e["bytes"])

    def _on_done(self, e: dict[str, Any]) -> None:
        self.close()

    def _on_verified(self, e: dict[str, Any]) -> None:
        if self._part is not None:
            self._part.close()
            self._part = None
        if e.get("by") == "device":
            self._note(f"{e['partition']}: written; the device read it back and verified it "
                       f"(sha256 {str(e['sha256'])[:16]}...)")
        else:
            self._note(f"{e['partition']}: written; each block was checked against the signed "
                       "table as it was sent (this download mode verifies nothing itself)")

    def _on_retry(self, e: dict[str, Any]) -> None:
        self._note(f"link: {e['frames']} frames sent again ({e['reason']})")

    def _on_partition_copied(self, e: dict[str, Any]) -> None:
        self._note(f"{e['partition']}_{e['to_slot']}: not in the package; copied from slot "
                   f"{e['from_slot']} ({e['bytes']} bytes) so the new slot is complete")

    def _on_slot_switched(self, e: dict[str, Any]) -> None:
        self._note(f"active slot switched to {e['slot']}")

    def _on_rebooted(self, e: dict[str, Any]) -> None:
        if not e.get("reported", True):  # e.g. a fastboot bootloader does not report the boot
            mode = MODE_NAMES.get(str(e.get("protocol")), "download mode")
            self._note(f"reboot: the device left {mode} to boot slot {e.get('slot')} "
                       "(it does not report the boot)")
        elif e.get("fell_back"):
            self._note(f"reboot: the new slot failed to boot; device fell back to slot "
                       f"{e.get('booted_slot')}")
        else:
            self._note(f"reboot: device booted slot {e.get('booted_slot')}")

    def _on_baud(self, e: dict[str, Any]) -> None:
        if e["switched"]:
            self._note(f"line rate raised to {e['baud']} baud")
        else:
            self._note(f"device did not confirm {e['baud']} baud; staying at {e.get('kept')}")

    def close(self) -> None:
        for bar in (self._part, self._overall):
            if bar is not None:
                bar.close()
        self._part = self._overall = None


class DownloadRenderer:
    """Download events: JSON lines with --json; a tqdm bar on a terminal; nothing on a pipe."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.bar: Any = None
        self.terminal = not as_json and sys.stderr.isatty() and verbosity() >= 0
        self._started = time.monotonic()

    def __call__(self, event: dict[str, Any]) -> None:
        if self.as_json:
            stamped = {"elapsed": round(time.monotonic() - self._started, 3), **event}
            click.echo(json.dumps(stamped, sort_keys=True, default=str))
            return
        if not self.terminal:
            return
        kind = event["event"]
        if kind == "download":
            self.close()
            self.bar = progress_bar(total=event["total"], initial=event["offset"], unit="B",
                           unit_scale=True, unit_divisor=1024, desc=event["name"], leave=False)
        elif kind == "progress" and self.bar is not None:
            self.bar.update(event["bytes"] - self.bar.n)
        elif kind in ("retry", "restart"):
            self.close()
            click.echo(f"{kind}: {event['reason']}", err=True)
        elif kind in ("verified", "done", "cached"):
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
