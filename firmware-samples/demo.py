#!/usr/bin/env python3
"""`make demo`: build the TEST-ONLY samples, start the emulated device on a pty, flash the
good sample into it, reboot it, and show the device's facts before and after."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZFLASH = [sys.executable, "-m", "zflash"]
PUB = str(HERE / "keys" / "zx-demo-TEST-ONLY-signing.pub.pem")
TRUST = ["--trust", PUB]


def step(title: str, *args: str, expect: int = 0) -> None:
    print(f"\n=== {title}\n$ zflash {' '.join(args)}", flush=True)
    result = subprocess.run([*ZFLASH, *args])
    if result.returncode != expect:
        sys.exit(f"demo failed: expected exit {expect}, got {result.returncode}")


def main() -> None:
    subprocess.run([sys.executable, str(HERE / "build.py")], check=True)
    good = str(HERE / "zx-demo-1.1.0.zpk")
    step("inspect the good package", "inspect", good)
    step("verify it against the TEST-ONLY vendor key", "verify", good, *TRUST)
    state = Path(tempfile.mkdtemp(prefix="zflash-demo-"))
    emulator = subprocess.Popen([*ZFLASH, "emulate", "--state", str(state / "device"), "--pty",
                                 "--profile", str(HERE / "demo-profile.json"), *TRUST],
                                stdout=subprocess.PIPE, text=True)
    try:
        url = emulator.stdout.readline().strip() if emulator.stdout else ""
        if not url:
            sys.exit("demo failed: the emulated device did not start")
        print(f"\nemulated zx-demo device in download mode at {url}")
        step("the device before: running slot a, stored rollback index 1", "info", "-d", url)
        step("flash the good package (writes slot b, verifies, switches)", "flash", good,
             "-d", url, *TRUST, "--no-reboot")
        step("after the flash: slot b active, rollback index not raised yet", "info", "-d", url)
        step("reboot: the bootloader boots slot b and marks it successful", "reboot", "-d", url)
        step("the device after: running slot b, rollback index raised to 2", "info", "-d", url)
        step("a downgrade is now refused (9015)", "flash",
             str(HERE / "zx-demo-1.0.0-rollback.zpk"), "-d", url, *TRUST, expect=15)
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
        shutil.rmtree(state, ignore_errors=True)
    print("\ndemo finished: flashed, switched slots, booted, rollback index raised")


if __name__ == "__main__":
    main()
