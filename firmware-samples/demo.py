#!/usr/bin/env python3
"""`make demo`: build the TEST-ONLY samples, then inspect and verify them with the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZFLASH = [sys.executable, "-m", "zflash"]
TRUST = ["--trust", str(HERE / "keys" / "zx-demo-TEST-ONLY-signing.pub.pem")]


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
    step("a package with one corrupted block is refused (9012)", "verify",
         str(HERE / "zx-demo-1.1.0-corrupt-block.zpk"), *TRUST, expect=12)
    step("a package signed by an untrusted key is refused (9012)", "verify",
         str(HERE / "zx-demo-1.1.0-untrusted-key.zpk"), *TRUST, expect=12)
    print("\ndemo finished: samples built, inspected and verified")


if __name__ == "__main__":
    main()
