"""protocols/events.md and the code agree; every event carries elapsed and device; the
stamping layer paces progress."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from conftest import REPO, SIGNING_PUB
from emulator_helpers import GOOD, demo_profile
from zflash.emulator.runner import EmulatorRunner
from zflash.events import Stamper
from zflash.flash import FlashOptions, backup, flash
from zflash.package import keys as keymod

SCHEMA = REPO / "protocols" / "events.md"
LITERAL = re.compile(r"""["']event["']\s*:\s*["']([a-z_]+)["']""")


def schema() -> dict[str, tuple[set[str], set[str]]]:
    """event -> (always-present fields, maybe-present fields), parsed from events.md."""
    out: dict[str, tuple[set[str], set[str]]] = {}
    name = None
    for line in SCHEMA.read_text().splitlines():
        heading = re.match(r"^### `([a-z_]+)`$", line)
        if heading:
            name = heading.group(1)
            assert name not in out, f"{name} listed twice"
            out[name] = (set(), set())
        elif name and line.startswith(("- always:", "- maybe:")):
            kind, _, rest = line[2:].partition(":")
            words = {w.strip() for w in re.sub(r"\([^)]*\)", "", rest).split(",") if w.strip()}
            out[name][0 if kind == "always" else 1].update(words)
    return out


def emitted_in_source() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "zflash").rglob("*.py"):
        names |= set(LITERAL.findall(path.read_text()))
    return names


def test_every_event_in_the_code_is_in_the_schema_and_back():
    documented, in_code = set(schema()), emitted_in_source()
    assert in_code - documented == set(), "emitted but not in protocols/events.md"
    source = "".join(p.read_text() for p in (REPO / "zflash").rglob("*.py"))
    # "info"/"text" are emitted by a variable (fastboot INFO/TEXT); every name is in the code
    assert {n for n in documented - in_code if f'"{n}"' not in source} == set()


def _trust() -> keymod.TrustStore:
    store = keymod.TrustStore()
    store.add(keymod.load_public_key(SIGNING_PUB))
    return store


def _check_recorded(events: list[dict]) -> None:
    table = schema()
    for event in events:
        assert event["event"] in table, event
        always, _ = table[event["event"]]
        missing = always - set(event)
        assert not missing, f"{event['event']} lacks {missing}"
        assert isinstance(event["elapsed"], float) and event["device"]["url"]


def test_a_real_flash_and_backup_emit_only_schema_events_with_identity(tmp_path):
    runner = EmulatorRunner(tmp_path / "dev", demo_profile(serial="ZXSCHEMA"))
    url = runner.start_tcp(0)
    try:
        events: list[dict] = []
        flash(url, GOOD, _trust(), FlashOptions(), events.append)
        backup(url, "boot", None, tmp_path / "boot.img", events.append)
    finally:
        runner.stop()
    _check_recorded(events)
    kinds = [e["event"] for e in events]
    assert {"connected", "device", "plan", "bytes_sent", "verified", "rebooted", "done",
            "backup_started", "bytes_received"} <= set(kinds)
    after_device = events[kinds.index("device"):kinds.index("done") + 1]
    assert all(e["device"]["serial"] == "ZXSCHEMA" for e in after_device)
    # Exact totals after pacing: the last bytes_sent has every image byte done.
    last = [e for e in events if e["event"] == "bytes_sent"][-1]
    assert last["done_bytes"] == last["total_bytes"] == events[kinds.index("plan")]["image_bytes"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_summed_and_paced_to_four_per_second():
    clock, out = FakeClock(), []
    stamp = Stamper(out.append, "tcp://x:1", clock=clock, tick=0)
    stamp({"event": "plan", "image_bytes": 10_000})
    stamp({"event": "partition_started", "partition": "boot", "skipped_bytes": 0})
    for _ in range(100):  # 100 confirmations in one second
        clock.now += 0.01
        stamp({"event": "bytes_sent", "partition": "boot", "bytes": 100, "wire_bytes": 90})
    stamp({"event": "transferred", "partition": "boot"})
    progress = [e for e in out if e["event"] == "bytes_sent"]
    assert 4 <= len(progress) <= 5
    assert sum(e["bytes"] for e in progress) == 10_000
    assert sum(e["wire_bytes"] for e in progress) == 9_000
    assert progress[-1]["done_bytes"] == 10_000 and progress[-1]["total_bytes"] == 10_000
    assert out[-1]["event"] == "transferred"  # the pending sum went out before it
    assert all(e["device"] == {"url": "tcp://x:1"} for e in out)


def test_a_tick_at_least_every_second_while_a_partition_is_written():
    out: list[dict] = []
    got = threading.Event()

    def sink(event: dict) -> None:
        out.append(event)
        if event["event"] == "bytes_sent":
            got.set()

    stamp = Stamper(sink, "tcp://x:1", tick=0.2)
    stamp({"event": "partition_started", "partition": "system", "skipped_bytes": 0})
    assert got.wait(5), "no tick while the device confirmed nothing"
    stamp.close()
    tick = next(e for e in out if e["event"] == "bytes_sent")
    assert tick["bytes"] == 0 and tick["partition"] == "system"


def test_serial_learnt_from_the_device_event_is_on_every_later_event():
    out: list[dict] = []
    stamp = Stamper(out.append, "serial:///dev/ttyUSB0", port="/dev/ttyUSB0", tick=0)
    stamp({"event": "connected"})
    stamp({"event": "device", "facts": {"serial": "SN1"}})
    stamp({"event": "plan", "image_bytes": 1})
    assert "serial" not in out[0]["device"]
    assert out[1]["device"] == out[2]["device"] == {"url": "serial:///dev/ttyUSB0",
                                                   "port": "/dev/ttyUSB0", "serial": "SN1"}
