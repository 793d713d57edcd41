"""What the command line says: the right fix per cause, each failure once, quiet/verbose,
NO_COLOR, a closed pipe, the README's instructions (issue 11)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from conftest import REPO, SAMPLES, SIGNING_PUB
from emulator_helpers import demo_profile
from zflash.cli.common import VERBOSITY_KEY, refuse_existing, use_color
from zflash.cli.render import EventRenderer
from zflash.emulator.runner import EmulatorRunner
from zflash.errors import Code, ZflashError, lookup

TRUST = ["--trust", str(SIGNING_PUB)]


def zflash(*args: str, env: dict[str, str] | None = None,
           **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                          text=True, timeout=120, **kwargs,  # type: ignore[call-overload]
                          env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent", **(env or {})})


@pytest.fixture
def device_url(tmp_path: Path):
    runner = EmulatorRunner(tmp_path / "dev", demo_profile())
    runner.start_tcp(0)
    yield runner.urls[0]
    runner.stop()


# ------------------------------------------------------------------ fixes per cause
def test_untrusted_signer_is_told_to_trust_the_key_not_to_redownload():
    result = zflash("verify", str(SAMPLES / "zx-demo-1.1.0-untrusted-key.zpk"), *TRUST)
    assert result.returncode == 12, result.stderr
    assert "error 9012: Signature verification failed" in result.stderr
    assert "no key this host trusts" in result.stderr and "--trust" in result.stderr
    assert "file corrupted" not in result.stderr
    corrupt = zflash("verify", str(SAMPLES / "zx-demo-1.1.0-corrupt-block.zpk"), *TRUST)
    assert corrupt.returncode == 12
    assert "fix: Redownload firmware; file corrupted." in corrupt.stderr


def test_error_carries_its_cause_in_json():
    error = ZflashError(Code.SIGNATURE, "no signature by a trusted key", cause="untrusted_signer")
    as_dict = error.to_dict()
    assert as_dict["meaning"] == "Signature verification failed"
    assert as_dict["cause"] == "untrusted_signer" and "--trust" in str(as_dict["fix"])
    assert error.exit_status == 12
    assert lookup(Code.SIGNATURE, "no-such-cause") == lookup(Code.SIGNATURE)


def test_image_too_large_is_not_a_full_cache(device_url: str):
    result = zflash("flash", str(SAMPLES / "zx-demo-1.1.0-too-large.zpk"), "-d", device_url,
                    *TRUST)
    assert result.returncode == Code.IMAGE_TOO_LARGE - 9000, result.stderr
    assert "error 9041: An image is too large for its partition" in result.stderr
    assert "Perform factory reset" not in result.stderr


# ------------------------------------------------------------------ each failure once
def test_each_failed_check_is_printed_once(device_url: str):
    result = zflash("flash", str(SAMPLES / "zx-demo-1.1.0-other-baseband.zpk"), "-d",
                    device_url, *TRUST)
    assert result.returncode == 40, result.stderr
    assert result.stderr.count("device baseband 'ZXB-100' is not among") == 1, result.stderr
    assert result.stderr.count("error 9040") == 1
    assert result.stderr.count("fix:") == 1
    assert "The package does not list the device's baseband" in result.stderr
    assert "refused: 1 check failed; nothing was written" in result.stderr


# ------------------------------------------------------------------ quiet / verbose / colour
def test_quiet_keeps_only_the_error(device_url: str):
    loud = zflash("flash", str(SAMPLES / "zx-demo-1.1.0-other-baseband.zpk"), "-d",
                  device_url, *TRUST)
    quiet = zflash("-q", "flash", str(SAMPLES / "zx-demo-1.1.0-other-baseband.zpk"), "-d",
                   device_url, *TRUST)
    assert "connected to" in loud.stderr and "device: zx-demo" in loud.stderr
    assert quiet.returncode == 40
    assert "connected to" not in quiet.stderr and "device: zx-demo" not in quiet.stderr
    assert "error 9040" in quiet.stderr and "fix:" in quiet.stderr


def test_quiet_and_verbose_exclude_each_other():
    result = zflash("-q", "-v", "errors")
    assert result.returncode == 2 and "error 9002" in result.stderr


def _render(verbosity: int, event: dict[str, object]) -> str:
    err = io.StringIO()
    ctx = click.Context(click.Command("t"))
    ctx.meta[VERBOSITY_KEY] = verbosity
    with ctx, pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stderr", err)
        renderer = EventRenderer(as_json=False, progress=False)
        renderer(event)
        renderer({"event": "bytes_sent", "bytes": 10})
    return err.getvalue()


def test_verbose_shows_events_without_a_text_form():
    event = {"event": "hashes", "partition": "boot", "blocks": 3}
    assert _render(0, event) == ""
    shown = _render(1, event)
    assert "event: " in shown and '"partition": "boot"' in shown
    assert "bytes_sent" not in shown  # progress stays in the bars
    assert _render(-1, {"event": "slot_switched", "slot": "b"}) == ""
    assert "switched to b" in _render(0, {"event": "slot_switched", "slot": "b"})


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_color_is_respected(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(_Tty()) is True
    assert use_color(io.StringIO()) is False  # a pipe: never
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_color(_Tty()) is False
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert use_color(_Tty()) is False


# ------------------------------------------------------------------ errors command, pipes
def test_errors_accepts_the_exit_status():
    by_status = zflash("errors", "23")
    by_code = zflash("errors", "9023")
    assert by_status.returncode == 0, by_status.stderr
    assert by_status.stdout == by_code.stdout
    assert by_status.stdout.startswith("9023  exit 23  Insufficient flash storage")
    causes = json.loads(zflash("errors", "40", "--json").stdout)["causes"]
    assert [c["cause"] for c in causes] == ["product", "hardware_revision", "baseband", "layout"]
    assert zflash("errors", "77").returncode == 2


def test_closed_stdout_pipe_exits_quietly():
    """`zflash errors | head -1`: stdout's reader is gone; no traceback, no error text."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, deterministically
    try:
        result = subprocess.run([sys.executable, "-m", "zflash", "errors"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141


# ------------------------------------------------------------------ one rule for outputs
def test_refuse_existing(tmp_path: Path):
    target = tmp_path / "out.zpk"
    refuse_existing(target, force=False)  # absent: fine
    target.write_bytes(b"x")
    with pytest.raises(ZflashError) as info:
        refuse_existing(target, force=False)
    assert info.value.code == Code.FILE_EXISTS and "--force" in info.value.detail
    refuse_existing(target, force=True)


# ------------------------------------------------------------------ README
def test_readme_says_how_to_get_zflash_on_path_and_completion():
    readme = (REPO / "README.md").read_text()
    after_demo = readme[readme.index("make demo"):]
    for way in (".venv/bin/zflash", "source .venv/bin/activate", "pipx install ."):
        assert way in after_demo
    assert "_ZFLASH_COMPLETE=bash_source zflash" in readme
    assert "NO_COLOR" in readme and "--quiet" in readme
