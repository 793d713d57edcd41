"""The package commands through the real console script: pack, inspect, verify, keygen, errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLES, SIGNING_KEY, SIGNING_PUB, UNTRUSTED_KEY
from emulator_helpers import demo_profile
from zflash.emulator.runner import EmulatorRunner
from zflash.errors import CAUSES, TABLE, Code, markdown_table

ZFLASH = [sys.executable, "-m", "zflash"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent-zflash-trust", **(env or {})}
    return subprocess.run([*ZFLASH, *args], capture_output=True, text=True, env=full_env,
                          timeout=120)


def assert_coded(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code - 9000, result.stderr
    assert f"error {code}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_errors_table_lists_the_four_given_codes_exactly():
    result = run("errors", "--json")
    rows = {r["code"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows[9012]["meaning"] == "Signature verification failed"
    assert rows[9012]["fix"] == "Redownload firmware; file corrupted."
    assert rows[9015]["fix"] == "Do not downgrade; stay on current build."
    assert rows[9023]["meaning"] == "Insufficient flash storage"
    assert rows[9023]["fix"] == "Perform factory reset to clear logs."
    assert rows[9040]["meaning"] == "Baseband mismatch"
    assert rows[9040]["fix"] == "Firmware is for wrong hardware revision."
    assert len(rows) == len(TABLE)
    assert all(r["exit_status"] == c - 9000 for c, r in rows.items())
    one = run("errors", "9015")
    assert one.returncode == 0 and "Anti-rollback check failed" in one.stdout
    assert_coded(run("errors", "1234"), Code.USAGE)


def test_keygen_writes_private_key_0600(tmp_path: Path):
    for algorithm in ("ed25519", "ecdsa-p256", "rsa-pss"):
        key = tmp_path / f"{algorithm}.pem"
        result = run("keygen", "-a", algorithm, "-o", str(key), "--json")
        assert result.returncode == 0, result.stderr
        info = json.loads(result.stdout)
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert Path(info["public"]).read_text().startswith("-----BEGIN PUBLIC KEY-----")
        assert len(info["key_id"]) == 64
    assert_coded(run("keygen", "-o", str(tmp_path / "ed25519.pem")), Code.FILE_EXISTS)


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256", "rsa-pss"])
def test_pack_verify_inspect_round_trip(tmp_path: Path, algorithm: str):
    key = tmp_path / "k.pem"
    assert run("keygen", "-a", algorithm, "-o", str(key)).returncode == 0
    images = SAMPLES / "images" / "1.1.0"
    out = tmp_path / "p.zpk"
    result = run("pack", "--product", "zx-demo", "--hw-rev", "A01", "--baseband", "ZXB-100",
                 "--version", "3.0", "--rollback-index", "4", "--build-time", "0",
                 "--image", f"boot={images / 'boot.img'}", "--image", f"logo={images / 'logo.img'}",
                 "--unslotted", "logo", "--key", str(key), "-o", str(out))
    assert result.returncode == 0, result.stderr
    verified = run("verify", str(out), "--trust", str(tmp_path / "k.pub.pem"), "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["ok"] is True
    inspected = json.loads(run("inspect", str(out), "--json").stdout)
    manifest = inspected["manifest"]
    assert manifest["rollback_index"] == 4 and manifest["version"] == "3.0"
    assert [(p["name"], p["slotted"]) for p in manifest["partitions"]] == \
        [("boot", True), ("logo", False)]
    assert inspected["signatures"][0]["algorithm"] == algorithm
    text = run("inspect", str(out))
    assert "zx-demo" in text.stdout and "boot" in text.stdout


def test_pack_from_recipe(tmp_path: Path):
    images = SAMPLES / "images" / "1.1.0"
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({
        "product": "zx-demo", "hardware_revisions": ["A01"], "baseband_ids": ["ZXB-100"],
        "version": "1.1.0", "rollback_index": 2, "build_time": 0,
        "keys": [str(SIGNING_KEY)],
        "partitions": [{"name": "vendor", "image": str(images / "vendor.img")}]}))
    out = tmp_path / "r.zpk"
    assert run("pack", "--recipe", str(recipe), "-o", str(out)).returncode == 0
    assert run("verify", str(out), "--trust", str(SIGNING_PUB)).returncode == 0


def test_verify_samples_give_their_codes():
    trust = ("--trust", str(SIGNING_PUB))
    assert run("verify", str(SAMPLES / "zx-demo-1.1.0.zpk"), *trust).returncode == 0
    assert_coded(run("verify", str(SAMPLES / "zx-demo-1.1.0-corrupt-block.zpk"), *trust),
                 Code.SIGNATURE)
    assert_coded(run("verify", str(SAMPLES / "zx-demo-1.1.0-untrusted-key.zpk"), *trust),
                 Code.SIGNATURE)
    assert_coded(run("verify", str(SAMPLES / "zx-demo-1.1.0.zpk")), Code.NO_TRUSTED_KEY)


def test_trust_directory_is_used(tmp_path: Path):
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    (trust_dir / "vendor.pem").write_bytes(SIGNING_PUB.read_bytes())
    result = run("verify", str(SAMPLES / "zx-demo-1.1.0.zpk"),
                 env={"ZFLASH_TRUST_DIR": str(trust_dir)})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, code", [
    (["verify", "/nonexistent.zpk", "--trust", str(SIGNING_PUB)], Code.FILE_UNREADABLE),
    (["inspect", str(SIGNING_PUB)], Code.MALFORMED_PACKAGE),
    (["verify", str(SAMPLES / "zx-demo-1.1.0.zpk"), "--trust", str(SAMPLES / "README.md")],
     Code.BAD_KEY_FILE),
    (["pack", "--product", "x", "-o", "/tmp/x.zpk"], Code.USAGE),
    (["pack", "--recipe", str(SIGNING_PUB), "-o", "/tmp/x.zpk"], Code.USAGE),
    (["keygen", "-o", "/nonexistent-dir/k.pem"], Code.FILE_UNWRITABLE),
    (["pack", "--product", "p", "--hw-rev", "a", "--baseband", "b", "--version", "1",
      "--rollback-index", "1", "--image", f"boot={SIGNING_PUB}", "--key", str(SIGNING_KEY),
      "-o", "/nonexistent-dir/x.zpk"], Code.FILE_UNWRITABLE),
    (["emulate", "--state", "/proc/zflash-state", "--tcp", "0"], Code.FILE_UNWRITABLE),
    (["errors", "abc"], Code.USAGE),
    (["flash"], Code.USAGE),
])
def test_bad_input_gives_coded_error_never_traceback(args, code):
    assert_coded(run(*args), code)


def test_json_error_on_stdout_for_scripts():
    result = run("inspect", "/nonexistent.zpk", "--json")
    error = json.loads(result.stdout.splitlines()[-1])
    assert error["event"] == "error" and error["code"] == Code.FILE_UNREADABLE
    assert result.returncode == Code.FILE_UNREADABLE - 9000


def test_samples_rebuild_byte_for_byte(tmp_path: Path):
    build = subprocess.run([sys.executable, str(SAMPLES / "build.py"), "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    committed = sorted(p.name for p in SAMPLES.glob("*.zpk"))
    assert committed == sorted(p.name for p in tmp_path.glob("*.zpk")) and len(committed) == 7
    for name in committed:
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), name
        assert (SAMPLES / name).stat().st_size < 1 << 20
    for image in tmp_path.glob("images/*/*.img"):
        assert image.read_bytes() == (SAMPLES / image.relative_to(tmp_path)).read_bytes()


def test_zpk_vectors_rebuild_byte_for_byte(tmp_path: Path):
    folder = Path(__file__).resolve().parent.parent / "protocols" / "zpk-vectors"
    result = subprocess.run([sys.executable, str(folder / "generate.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rebuilt = sorted(tmp_path.iterdir())
    assert len(rebuilt) == 6  # two images, tiny.zpk and tiny-auto.zpk with their parses
    for path in rebuilt:
        assert path.read_bytes() == (folder / path.name).read_bytes(), path.name


def test_untrusted_key_file_is_not_a_trust_anchor_by_proximity():
    """The untrusted key's PEM sits next to the samples; it is trusted only if named."""
    assert UNTRUSTED_KEY.exists()
    result = run("verify", str(SAMPLES / "zx-demo-1.1.0-untrusted-key.zpk"),
                 "--trust", str(SIGNING_PUB))
    assert_coded(result, Code.SIGNATURE)


def test_lazy_command_map_matches_the_registered_commands():
    """Every command a module registers is in COMMAND_MODULES under that module."""
    import importlib

    from zflash.cli import COMMAND_MODULES, main
    for module in set(COMMAND_MODULES.values()):
        importlib.import_module(f"zflash.cli.{module}")
    assert set(main.commands) == set(COMMAND_MODULES)
    for name, command in main.commands.items():
        assert command.callback.__module__ == f"zflash.cli.{COMMAND_MODULES[name]}", name


def test_short_help_map_matches_each_command():
    """--help lists commands from SHORT_HELP without importing them: it must say the same."""
    import importlib

    from zflash.cli import COMMAND_MODULES, SHORT_HELP, main
    for module in set(COMMAND_MODULES.values()):
        importlib.import_module(f"zflash.cli.{module}")
    assert set(SHORT_HELP) == set(COMMAND_MODULES)
    for name, command in main.commands.items():
        assert SHORT_HELP[name] == command.get_short_help_str(limit=200), name


_HEAVY = ("cryptography", "tqdm", "zstandard", "serial", "usb", "zflash.flash",
          "zflash.package.writer", "zflash.emulator", "zflash.transport", "zflash.fetch")


@pytest.mark.parametrize("args, also_absent", [
    (["--help"], ("zflash.cli.package_cmds", "zflash.cli.device_cmds", "zflash.cli.fetch_cmds",
                  "zflash.cli.usb_cmds", "zflash.cli.fastboot_cmds", "zflash.package.reader")),
    (["errors", "9012"], ("zflash.package.reader", "zflash.package.keys")),
    (["inspect", str(SAMPLES / "zx-demo-1.1.0.zpk")], ("zflash.package.keys",)),
])
def test_commands_without_a_device_import_only_what_they_use(args, also_absent):
    probe = ("import sys\nfrom zflash.cli import main\ntry:\n    main(sys.argv[1:])\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\nsys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stderr.split())
    assert result.stdout
    for name in _HEAVY + also_absent:
        assert not any(m == name or m.startswith(name + ".") for m in loaded), (args, name)


def test_a_flash_imports_the_host_side_only(tmp_path: Path) -> None:
    """`zflash flash PKG` pays for what a host uses: not the device engine, the fetch
    commands or settings (no TLS for a local file), not cryptography's key parser or its
    ECDSA and RSA modules (an Ed25519 trust key and signature need none of them, D189,
    D205), not the idna codec for an ASCII host. The device is an emulator in this
    process, so the whole flash runs: signature check, transfer, verify, reboot."""
    runner = EmulatorRunner(tmp_path / "dev", demo_profile())
    url = runner.start_tcp(0)
    probe = ("import sys\nfrom zflash.cli import main\ntry:\n    main(sys.argv[1:])\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\nsys.exit(code)\n")
    package = SAMPLES / "zx-demo-1.1.0.zpk"
    try:
        result = subprocess.run([sys.executable, "-c", probe, "flash", str(package),
                                 "-d", url, "--trust", str(SIGNING_PUB), "--json"],
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ,
                                     "ZFLASH_TRUST_DIR": "/nonexistent-zflash-trust"})
    finally:
        runner.stop()
    assert result.returncode == 0, result.stderr
    assert '"event": "done"' in result.stdout
    loaded = set(result.stderr.split())
    assert "cryptography.hazmat.primitives.asymmetric.ed25519" in loaded
    for name in ("zflash.protocol.zdl.device", "zflash.cli.fetch_cmds", "zflash.emulator",
                 "zflash.fetch.config", "zflash.fetch.watchdog",
                 "cryptography.hazmat.primitives.serialization",
                 "cryptography.hazmat.primitives.asymmetric.ec",
                 "cryptography.hazmat.primitives.asymmetric.rsa",
                 "cryptography.hazmat.primitives.asymmetric.padding",
                 "zflash.package.key_types", "encodings.idna", "tqdm", "ssl"):
        assert not any(m == name or m.startswith(name + ".") for m in loaded), name


def test_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for name in ("flash", "emulate", "fastboot", "fetch", "devices", "doctor", "pack"):
        assert name in result.stdout


def test_readme_error_table_matches_the_code():
    """The README embeds the table generated from zflash/errors.py (`zflash errors
    --markdown`), causes included, verbatim; and the four given codes read as specified."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    begin, end = readme.index("<!-- errors:begin"), readme.index("<!-- errors:end -->")
    embedded = readme[readme.index("\n", begin) + 1:end]
    assert embedded == markdown_table()
    assert run("errors", "--markdown").stdout == markdown_table()
    for code in TABLE:
        assert f"\n| {code} | {code - 9000} | {TABLE[code].meaning} | " in embedded
    for code, causes in CAUSES.items():
        for cause in causes:
            assert f"\n| {code} | `{cause}` | " in embedded


