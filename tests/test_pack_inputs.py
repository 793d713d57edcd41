"""The package builder's inputs: recipes (protocols/recipe.md), --profile layout checks, trust
keys, and the one rule for existing outputs (issues 11 and 14)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, SAMPLES, SIGNING_KEY, SIGNING_PUB
from zflash.errors import Code, ZflashError
from zflash.package import keys as keymod
from zflash.package.recipe import load_recipe, parse_recipe

IMAGES = SAMPLES / "images" / "1.1.0"
PROFILE = SAMPLES / "demo-profile.json"
GOOD_RECIPE: dict[str, Any] = {
    "product": "zx-demo", "hardware_revisions": ["A01"], "baseband_ids": ["ZXB-100"],
    "version": "1.1.0", "rollback_index": 2, "build_time": 0, "keys": [str(SIGNING_KEY)],
    "partitions": [{"name": "boot", "image": str(IMAGES / "boot.img")},
                   {"name": "logo", "image": str(IMAGES / "logo.img"), "slotted": False}]}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent"})


def assert_coded(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code - 9000, result.stderr
    assert f"error {code}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, result.stderr


def recipe_error(text: str | bytes) -> ZflashError:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(ZflashError) as info:
        parse_recipe(data, Path("."))
    assert info.value.code == Code.USAGE and info.value.cause == "recipe"
    return info.value


def with_field(**changes: Any) -> str:
    return json.dumps({**GOOD_RECIPE, **changes})


# ------------------------------------------------------------------ recipes
def test_the_documented_example_parses_and_packs(tmp_path: Path):
    doc = (REPO / "protocols" / "recipe.md").read_text()
    example = json.loads(re.search(r"```json\n(.*?)```", doc, re.S).group(1))
    (tmp_path / "images").mkdir()
    (tmp_path / "keys").mkdir()
    for part in example["partitions"]:
        shutil.copy(IMAGES / Path(part["image"]).name, tmp_path / part["image"])
    shutil.copy(SIGNING_KEY, tmp_path / "keys" / "signing.pem")
    (tmp_path / "r.json").write_text(json.dumps(example))
    result = run("pack", "--recipe", str(tmp_path / "r.json"), "-o", str(tmp_path / "o.zpk"))
    assert result.returncode == 0, result.stderr
    assert run("verify", str(tmp_path / "o.zpk"), "--trust", str(SIGNING_PUB)).returncode == 0


@pytest.mark.parametrize("text, needle", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (with_field().replace('"rollback_index": 2', '"rollback_index": 1e400'), "1e400"),
    (with_field(build_time=0).replace('"build_time": 0', '"build_time": Infinity'), "Infinity"),
    (with_field(build_time=0).replace('"build_time": 0', '"build_time": NaN'), "NaN"),
    (with_field(rollback_index=1.5), "1.5"),
    (with_field(rollback_index=-1), "rollback_index"),
    (with_field(rollback_index=2**64), "rollback_index"),
    (with_field(rollback_location=32), "rollback_location"),
    (with_field(hardware_revisions="A01"), 'hardware_revisions must be a list of strings, e.g. ["A01"]'),
    (with_field(baseband_ids=[]), "baseband_ids"),
    (with_field(baseband_ids=["ZXB-100", "ZXB-100"]), "duplicates"),
    (with_field(product=7), "product"),
    (with_field(build_tme=0), "unknown field 'build_tme'"),
    (with_field(partitions="boot.img"), "partitions must be a list"),
    (with_field(partitions=[{"name": "boot"}]), "partitions[0]: missing field 'image'"),
    (with_field(partitions=[{"name": "Boot!", "image": "b"}]), "partitions[0].name"),
    (with_field(partitions=[{"name": "boot", "image": "b", "slotted": "no"}]), "slotted"),
    (with_field(partitions=[{"name": "boot", "image": "b"}] * 2), "listed twice"),
    (with_field(keys="k.pem"), "keys must be a list"),
    ('{"product": "a", "product": "b"}', "given twice"),
    ("[1, 2]", "JSON object"),
    ("{", "not valid JSON"),
    (b"\xff\xfe", "UTF-8"),
])
def test_bad_recipes_are_coded_and_name_the_field(text: str | bytes, needle: str):
    assert needle in recipe_error(text).detail


def test_recipe_may_leave_metadata_to_the_options(tmp_path: Path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({k: v for k, v in GOOD_RECIPE.items()
                                  if k not in ("version", "build_time")}))
    out = tmp_path / "o.zpk"
    missing = run("pack", "--recipe", str(recipe), "-o", str(out))
    assert_coded(missing, Code.USAGE, "missing package metadata: version")
    assert not out.exists()
    assert run("pack", "--recipe", str(recipe), "--version", "9", "-o", str(out)).returncode == 0


def test_bad_recipe_through_the_cli_is_coded_not_a_traceback(tmp_path: Path):
    recipe = tmp_path / "r.json"
    recipe.write_text("[" * 50_000)
    assert_coded(run("pack", "--recipe", str(recipe), "-o", str(tmp_path / "o.zpk")),
                 Code.USAGE, "nested too deeply", "protocols/recipe.md")
    recipe.write_text(json.dumps({k: v for k, v in GOOD_RECIPE.items() if k != "product"}))
    assert_coded(run("pack", "--recipe", str(recipe), "-o", str(tmp_path / "o.zpk")),
                 Code.USAGE, "missing package metadata: product")


def test_recipe_paths_are_relative_to_the_recipe(tmp_path: Path):
    recipe = tmp_path / "sub" / "r.json"
    recipe.parent.mkdir()
    recipe.write_text(with_field(keys=["k.pem"],
                                 partitions=[{"name": "boot", "image": "img/boot.img"}]))
    loaded = load_recipe(recipe)
    assert loaded.sources[0].path == tmp_path / "sub" / "img" / "boot.img"
    assert loaded.keys == [tmp_path / "sub" / "k.pem"]
    assert loaded.metadata["hardware_revisions"] == ("A01",)


# ------------------------------------------------------------------ --profile
def _pack(tmp_path: Path, *images: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    args = ["pack", "--product", "zx-demo", "--hw-rev", "A01", "--baseband", "ZXB-100",
            "--version", "1", "--rollback-index", "2", "--key", str(SIGNING_KEY),
            "-o", str(tmp_path / "o.zpk"), *extra]
    for image in images:
        args += ["--image", image]
    return run(*args)


def test_profile_catches_a_misspelt_partition_at_pack_time(tmp_path: Path):
    typo = _pack(tmp_path, f"sytem={IMAGES / 'system.img'}", extra=("--profile", str(PROFILE)))
    assert_coded(typo, Code.NO_SUCH_PARTITION, "no partition 'sytem'", "did you mean 'system'?")
    assert not (tmp_path / "o.zpk").exists()
    fine = _pack(tmp_path, f"system={IMAGES / 'system.img'}", f"logo={IMAGES / 'logo.img'}",
                 extra=("--profile", str(PROFILE), "--unslotted", "logo"))
    assert fine.returncode == 0, fine.stderr


def test_profile_reports_every_layout_problem_once(tmp_path: Path):
    big = tmp_path / "big.img"
    big.write_bytes(bytes(300_000))  # boot holds 262144
    result = _pack(tmp_path, f"boot={big}", f"logo={IMAGES / 'logo.img'}",
                   f"radio={IMAGES / 'logo.img'}", extra=("--profile", str(PROFILE)))
    assert_coded(result, Code.IMAGE_TOO_LARGE, "image boot is 300000 bytes",
                 "logo is without slots (--unslotted) on the device", "no partition 'radio'")
    assert result.stderr.count("error 90") == 3
    assert not (tmp_path / "o.zpk").exists()


def test_bad_profile_is_coded(tmp_path: Path):
    profile = tmp_path / "p.json"
    profile.write_text('{"partitions": [{"name": "boot", "size": "big", "slotted": true}]}')
    assert_coded(_pack(tmp_path, f"boot={IMAGES / 'boot.img'}",
                       extra=("--profile", str(profile))), Code.USAGE, "partitions[0].size")


# ------------------------------------------------------------------ trust keys
def test_private_key_as_trust_key_is_refused(tmp_path: Path):
    result = run("verify", str(SAMPLES / "zx-demo-1.1.0.zpk"), "--trust", str(SIGNING_KEY))
    assert_coded(result, Code.BAD_KEY_FILE, "is a private key")
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    shutil.copy(SIGNING_KEY, trust_dir / "vendor.pem")
    with pytest.raises(ZflashError) as info:
        keymod.TrustStore.load((), trust_dir)
    assert info.value.code == Code.BAD_KEY_FILE
    from zflash.emulator.runner import load_profile
    with pytest.raises(ZflashError) as info:
        load_profile(None, [SIGNING_KEY])
    assert info.value.code == Code.BAD_KEY_FILE


def test_trust_help_says_what_happens():
    help_text = " ".join(run("verify", "--help").stdout.split())
    assert "Added to the trust directory" not in help_text
    assert "nothing is written there" in help_text


# ------------------------------------------------------------------ existing outputs
def test_pack_refuses_to_overwrite_unless_forced(tmp_path: Path):
    out = tmp_path / "o.zpk"
    out.write_bytes(b"precious")
    assert_coded(_pack(tmp_path, f"boot={IMAGES / 'boot.img'}"), Code.FILE_EXISTS, "--force")
    assert out.read_bytes() == b"precious"
    forced = _pack(tmp_path, f"boot={IMAGES / 'boot.img'}", extra=("--force",))
    assert forced.returncode == 0, forced.stderr
    assert out.read_bytes() != b"precious"
