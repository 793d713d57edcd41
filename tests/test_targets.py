"""The target interface: every download mode behind one set of methods, the device commands
through it, and the layout rules of DESIGN.md (import directions, no cycles)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulator_helpers import demo_profile
from zflash.emulator.runner import EmulatorRunner
from zflash.errors import Code, ZflashError
from zflash.targets.base import Capabilities, Target
from zflash.targets.registry import BACKENDS, backend, capabilities, open_target

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "zflash"


def zflash(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent"})


@pytest.fixture
def device(tmp_path: Path):
    """One emulated device served over ZDL (TCP) and fastboot (TCP); yields both URLs."""
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        zdl = runner.start_tcp(0)
        fastboot = runner.start_fastboot_tcp(0)
        yield runner, {"zdl": zdl, "fastboot": fastboot}


# ------------------------------------------------------------------ the interface itself
def test_backends_declare_their_capabilities() -> None:
    """The snippet of the issue: list the back-ends and what each can do."""
    declared = capabilities()
    assert set(declared) == {"zdl", "fastboot", "edl"}
    zdl, fastboot, edl = declared["zdl"], declared["fastboot"], declared["edl"]
    assert edl.block_hashes and edl.verifies_on_device and edl.set_active and edl.read
    for lacking in ("resume", "enforces_checks", "staging_cache", "reports_boot"):
        assert getattr(edl, lacking) is False, lacking
    assert all(zdl.to_dict().values()), "ZDL is zflash's own mode: it can do everything"
    assert fastboot.set_active and fastboot.reboot and fastboot.erase
    for lacking in ("block_hashes", "resume", "verifies_on_device", "enforces_checks", "read",
                    "reports_boot", "staging_cache"):
        assert getattr(fastboot, lacking) is False, lacking
    for name in BACKENDS:
        cls = backend(name)
        assert issubclass(cls, Target) and cls.protocol == name
        assert isinstance(cls.capabilities, Capabilities)


def test_a_lacking_capability_is_a_coded_refusal_naming_the_mode(device) -> None:
    _, urls = device
    with open_target(urls["fastboot"]) as target:
        assert target.protocol == "fastboot"
        with pytest.raises(ZflashError) as refused:
            target.read("boot", "a", 0, 4096, lambda data: None)
        assert refused.value.code == Code.NOT_SUPPORTED
        assert "fastboot" in refused.value.detail
        with pytest.raises(ZflashError) as refused:
            target.finish_block_hashes()
        assert refused.value.code == Code.NOT_SUPPORTED


def test_fastboot_identity_lists_what_it_cannot_report(device) -> None:
    _, urls = device
    with open_target(urls["fastboot"]) as target:
        identity = target.identify()
    assert identity.facts.product == "zx-demo"
    assert {p.name for p in identity.facts.partitions} >= {"boot", "system", "vendor"}
    # the zflash emulator reports the vendor rollback variable for location 0 only
    assert identity.facts.rollback_indexes[0] == 2
    assert identity.unreported.pop("slot_priority").startswith("fastboot")
    assert identity.unreported.pop("slot_builds").startswith("fastboot")
    assert all(v.startswith("getvar ") for v in identity.unreported.values())


# ------------------------------------------------------------------ the commands, both modes
def _json(*args: str) -> dict:
    result = zflash(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_info_gives_the_same_fields_over_zdl_and_fastboot(device) -> None:
    _, urls = device
    zdl, fastboot = (_json("info", "-d", urls[m]) for m in ("zdl", "fastboot"))
    assert zdl.keys() == fastboot.keys()
    assert (zdl["protocol"], fastboot["protocol"]) == ("zdl", "fastboot")
    for field in ("product", "hardware_revision", "baseband", "serial", "current_slot"):
        assert zdl[field] == fastboot[field], field
    assert sorted(zdl["partitions"], key=str) == sorted(fastboot["partitions"], key=str)
    # a fastboot bootloader has no variable for the slot priority: said, not faked
    assert without_priority(zdl["slots"]) == without_priority(fastboot["slots"])
    assert "slot_priority" in fastboot["unreported"]
    assert zdl["unreported"] == {}
    assert fastboot["capabilities"]["read"] is False and zdl["capabilities"]["read"] is True


def test_info_text_over_fastboot_says_which_mode(device) -> None:
    _, urls = device
    result = zflash("info", "-d", urls["fastboot"])
    assert result.returncode == 0, result.stderr
    assert "download mode:      fastboot" in result.stdout
    assert "product:            zx-demo" in result.stdout


def without_priority(slots: list[dict]) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "priority"} for s in slots]


def test_slot_show_and_set_active_on_both_modes(device) -> None:
    runner, urls = device
    zdl, fastboot = (_json("slot", "-d", urls[m]) for m in ("zdl", "fastboot"))
    assert zdl["current_slot"] == fastboot["current_slot"] == "a"
    assert without_priority(zdl["slots"]) == without_priority(fastboot["slots"])
    # -d goes where a person types it: after the subcommand too
    result = zflash("slot", "set-active", "b", "-d", urls["fastboot"])
    assert result.returncode == 0, result.stderr
    assert runner.device.meta["slots"]["b"]["priority"] > runner.device.meta["slots"]["a"][
        "priority"]
    result = zflash("slot", "-d", urls["zdl"], "set-active", "a")
    assert result.returncode == 0, result.stderr
    assert runner.device.meta["slots"]["a"]["priority"] > runner.device.meta["slots"]["b"][
        "priority"]
    result = zflash("slot", "set-active", "c", "-d", urls["zdl"])
    assert result.returncode == Code.SLOT - 9000 and "no slot 'c'" in result.stderr


def test_reboot_on_both_modes_says_what_it_knows(device) -> None:
    _, urls = device
    zdl = _json("reboot", "-d", urls["zdl"])
    assert zdl["reported"] is True and zdl["booted_slot"] == "a"
    result = zflash("reboot", "-d", urls["fastboot"])
    assert result.returncode == 0, result.stderr
    assert "does not report which slot booted" in result.stdout


def test_backup_over_fastboot_is_a_coded_not_supported(device, tmp_path: Path) -> None:
    _, urls = device
    out = tmp_path / "boot.img"
    result = zflash("backup", "boot", "-d", urls["fastboot"], "-o", str(out))
    assert result.returncode == Code.NOT_SUPPORTED - 9000
    assert "not supported by this download mode (fastboot)" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    result = zflash("backup", "boot", "-d", urls["zdl"], "-o", str(out))
    assert result.returncode == 0, result.stderr and out.stat().st_size > 0


def test_baud_on_a_link_without_one_is_refused(device) -> None:
    _, urls = device
    for url in urls.values():
        result = zflash("info", "-d", url, "--baud", "921600")
        assert result.returncode == Code.USAGE - 9000, result.stderr
        assert "--baud" in result.stderr


# ------------------------------------------------------------------ layout rules
def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports() -> dict[str, set[str]]:
    """module -> the zflash modules it imports (at any depth of the file); ``from P import
    m`` of a submodule ``m`` counts as importing ``P.m``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        found: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                found.update(subs or {node.module})
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[module] = {m for m in found if m.startswith("zflash")}
    return graph


def test_layout_rules_of_the_design() -> None:
    graph = _imports()
    for module, imported in graph.items():
        if not module.startswith(("zflash.cli", "zflash.__main__")):
            assert not any(m.startswith("zflash.cli") for m in imported), module
        if module.startswith("zflash.protocol"):
            assert not any(m.startswith(("zflash.transport", "zflash.targets")) for m in
                           imported), module
        if module.startswith("zflash.transport"):
            assert not any(m.startswith(("zflash.protocol", "zflash.targets")) for m in
                           imported), module
        for other in imported:
            assert module not in graph.get(other, set()) or other == module, \
                f"{module} and {other} import each other"


def test_top_level_keeps_only_the_shared_modules() -> None:
    top = {p.stem for p in PACKAGE_ROOT.glob("*.py")}
    # zstd: the one bounded codec both package and protocol use (they may not import each
    # other); events: the stamping every job's events go through (flash and station)
    assert top <= {"__init__", "__main__", "errors", "facts", "checks", "fields", "flash", "zstd",
                   "events"}


def test_backup_refuses_to_overwrite_unless_forced(device, tmp_path: Path) -> None:
    _, urls = device
    out = tmp_path / "boot.img"
    out.write_bytes(b"keep me")
    result = zflash("backup", "boot", "-d", urls["zdl"], "-o", str(out))
    assert result.returncode == Code.FILE_EXISTS - 9000 and out.read_bytes() == b"keep me"
    result = zflash("backup", "boot", "-d", urls["zdl"], "-o", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > len(b"keep me")


def test_fastboot_set_active_prints_no_warnings(device) -> None:
    runner, urls = device
    result = zflash("fastboot", "-s", urls["fastboot"], "set-active", "b")
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "UserWarning" not in result.stderr
    assert runner.device.meta["slots"]["b"]["priority"] == 15
