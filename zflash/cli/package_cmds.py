"""Package commands: errors, keygen, pack, inspect, verify.

Each command imports what it needs when it runs: `zflash errors` loads no package code, and
`inspect` no cryptography (docs/DECISIONS.md D72). Option lists come from
``zflash.package.names``, which imports nothing heavy.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import click

from zflash.cli import main
from zflash.cli.common import emit_json, load_trust, refuse_existing, trust_options
from zflash.errors import (CAUSES, TABLE, Code, ZflashError, describe, markdown_table,
                           resolve_code)
from zflash.package.names import (ALGORITHMS, CODECS, DEFAULT_BLOCK_SIZE, DEFAULT_CODEC,
                                  MIN_RSA_BITS)

if TYPE_CHECKING:
    from zflash.package.format import Manifest
    from zflash.package.edlspec import EdlSpec
    from zflash.package.writer import PartitionSource


# ---------------------------------------------------------------------------------- errors
@main.command("errors")
@click.argument("code", required=False, type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
@click.option("--markdown", is_flag=True, help="The README's error table (generated here).")
def errors_cmd(code: int | None, as_json: bool, markdown: bool) -> None:
    """Print the error table, or the entry for CODE (the code, 9040, or the exit status, 40),
    with the fix for each of its causes."""
    if markdown:
        click.echo(markdown_table(), nl=False)
        return
    found = resolve_code(code) if code is not None else None
    if code is not None and found is None:
        raise ZflashError(Code.USAGE, f"no error {code} (neither a code nor an exit status); "
                                      "`zflash errors` lists them all")
    rows = [TABLE[found]] if found is not None else list(TABLE.values())
    for info in rows:
        if not as_json:
            click.echo(describe(info.code), nl=False)
            continue
        causes = list(CAUSES.get(info.code, {}).values())
        emit_json({"code": info.code, "exit_status": info.exit_status,
                   "meaning": info.meaning, "fix": info.fix,
                   "causes": [{"cause": c.cause, "what": c.what, "fix": c.fix}
                              for c in causes]})


# ---------------------------------------------------------------------------------- keygen
@main.command()
@click.option("--algorithm", "-a", type=click.Choice(ALGORITHMS), default="ed25519",
              show_default=True)
@click.option("--rsa-bits", type=int, default=MIN_RSA_BITS, show_default=True)
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), required=True,
              help="Private key path; the public key goes to OUT.pub.pem.")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
@click.option("--json", "as_json", is_flag=True)
def keygen(algorithm: str, rsa_bits: int, out: Path, force: bool, as_json: bool) -> None:
    """Make a signing key pair (private key written with mode 0600)."""
    from zflash.package import keys as keymod
    key = keymod.generate(algorithm, rsa_bits)
    public = out.with_name(out.name.removesuffix(".pem") + ".pub.pem")
    keymod.write_keypair(key, out, public, force)
    kid = keymod.key_id(key).hex()
    if as_json:
        emit_json({"private": str(out), "public": str(public), "algorithm": algorithm,
                   "key_id": kid})
    else:
        click.echo(f"private key: {out} (mode 0600, keep it secret)")
        click.echo(f"public key:  {public}")
        click.echo(f"key id:      {kid}")


# ---------------------------------------------------------------------------------- pack
def _parse_images(images: tuple[str, ...], unslotted: tuple[str, ...]) -> list[PartitionSource]:
    from zflash.package.writer import PartitionSource
    sources = []
    for item in images:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ZflashError(Code.USAGE, f"--image expects NAME=PATH, got {item!r}")
        sources.append(PartitionSource(name, Path(path), name not in unslotted))
    unknown = set(unslotted) - {s.name for s in sources}
    if unknown:
        raise ZflashError(Code.USAGE, f"--unslotted names unknown partitions {sorted(unknown)}")
    return sources


def _flat_build(rawprograms: tuple[Path, ...], patches: tuple[Path, ...],
                include_fuse: tuple[str, ...], hw_ids: tuple[str, ...],
                key_hashes: tuple[str, ...], programmer: Path | None,
                workdir: Path) -> tuple[list[PartitionSource], EdlSpec]:
    """Partitions and the manifest's ``edl`` object from a Qualcomm flat build."""
    from zflash.package.edlspec import MAX_PROGRAMMER, EdlSpec, Programmer, edl_from_json
    from zflash.package.rawprogram import import_build
    if not hw_ids or not key_hashes:
        raise ZflashError(Code.USAGE, "--rawprogram needs --msm-hw-id and --oem-key-hash: an "
                                      "EDL package names the parts it is for")
    imported = import_build(list(rawprograms), list(patches), set(include_fuse), workdir)
    prog = None
    if programmer is not None:
        try:
            with open(programmer, "rb") as handle:  # bounded: edl_from_json refuses a big one
                prog = Programmer(programmer.name, handle.read(MAX_PROGRAMMER + 1))
        except OSError as exc:
            raise ZflashError(Code.FILE_UNREADABLE, f"{programmer}: {exc.strerror}") from None
    spec = EdlSpec(tuple(h.lower() for h in hw_ids), tuple(k.lower() for k in key_hashes),
                   prog, None, imported.flat_build)
    try:
        edl_from_json(spec.to_json())
    except ZflashError as exc:
        raise ZflashError(Code.USAGE, exc.detail) from None
    return imported.sources, spec


@contextmanager
def _workdir(output: Path) -> Iterator[Path]:
    """A scratch folder beside the output, for images a flat build needs cut."""
    import shutil
    import tempfile
    try:
        work = tempfile.mkdtemp(dir=output.parent if str(output.parent) else ".",
                                prefix=".zflash-import-")
    except OSError as exc:
        raise ZflashError(Code.FILE_UNWRITABLE, f"{output.parent}: {exc.strerror}") from None
    try:
        yield Path(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@main.command()
@click.option("--recipe", type=click.Path(path_type=Path),
              help="JSON recipe file (format: protocols/recipe.md).")
@click.option("--profile", type=click.Path(path_type=Path),
              help="Device profile JSON (the emulator's format): refuse images that do not "
                   "fit its partitions (names, A/B slots, sizes) before packing.")
@click.option("--product")
@click.option("--hw-rev", "hw_revs", multiple=True, help="Accepted hardware revision (repeat).")
@click.option("--baseband", "basebands", multiple=True, help="Accepted baseband id (repeat).")
@click.option("--version", "fw_version")
@click.option("--rollback-index", type=click.IntRange(0, 2**63 - 1))
@click.option("--rollback-location", type=click.IntRange(0, 31))
@click.option("--build-time", type=click.IntRange(0, 2**63 - 1),
              help="Unix time; default the recipe's, else $SOURCE_DATE_EPOCH or now.")
@click.option("--image", "images", multiple=True, help="NAME=PATH, raw or sparse (repeat).")
@click.option("--unslotted", multiple=True, help="Partition without A/B slots (repeat).")
@click.option("--rawprogram", "rawprograms", multiple=True, type=click.Path(path_type=Path),
              help="Qualcomm flat build: rawprogramN.xml, one per LUN (repeat).")
@click.option("--patch", "patches", multiple=True, type=click.Path(path_type=Path),
              help="The build's patchN.xml (repeat).")
@click.option("--include-fuse", multiple=True, help="Pack this fuse partition (secdata) "
              "anyway (repeat).")
@click.option("--msm-hw-id", "hw_ids", multiple=True, help="EDL: accepted MSM HW id (repeat).")
@click.option("--oem-key-hash", "key_hashes", multiple=True,
              help="EDL: accepted OEM key hash (repeat).")
@click.option("--programmer", type=click.Path(path_type=Path),
              help="EDL: the Firehose programmer to carry in the package.")
@click.option("--key", "key_paths", multiple=True, type=click.Path(path_type=Path),
              help="Signing private key (repeat for several signatures).")
@click.option("--codec", type=click.Choice(CODECS), default=DEFAULT_CODEC, show_default=True,
              help="auto: per block the smallest of raw, zlib and zstd.")
@click.option("--level", type=click.IntRange(1, 9), default=6, show_default=True,
              help="zlib level.")
@click.option("--zstd-level", type=click.IntRange(1, 22), default=19, show_default=True)
@click.option("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True)
def pack(recipe: Path | None, profile: Path | None, product: str | None,
         hw_revs: tuple[str, ...], basebands: tuple[str, ...], fw_version: str | None,
         rollback_index: int | None, rollback_location: int | None, build_time: int | None,
         images: tuple[str, ...], unslotted: tuple[str, ...], rawprograms: tuple[Path, ...],
         patches: tuple[Path, ...], include_fuse: tuple[str, ...], hw_ids: tuple[str, ...],
         key_hashes: tuple[str, ...], programmer: Path | None, key_paths: tuple[Path, ...],
         codec: str, level: int, zstd_level: int, block_size: int, output: Path, force: bool,
         as_json: bool) -> None:
    """Build a signed .zpk package from partition images (options override the recipe).

    With --rawprogram (and --patch) the images come from a Qualcomm flat build."""
    import contextlib
    import dataclasses

    from zflash.package import keys as keymod
    from zflash.package.layout import DeviceLayout, check_images
    from zflash.package.recipe import load_recipe, package_info
    from zflash.package.writer import build_package
    if not rawprograms and (patches or include_fuse or hw_ids or key_hashes or programmer):
        raise ZflashError(Code.USAGE, "--patch, --include-fuse, --msm-hw-id, --oem-key-hash "
                                      "and --programmer go with --rawprogram")
    base = load_recipe(recipe) if recipe else None
    sources = _parse_images(images, unslotted) if images else (base.sources if base else [])
    given = {"product": product, "hardware_revisions": list(hw_revs) or None,
             "baseband_ids": list(basebands) or None, "version": fw_version,
             "rollback_index": rollback_index, "rollback_location": rollback_location,
             "build_time": build_time}
    merged = {**(base.metadata if base else {}),
              **{k: v for k, v in given.items() if v is not None}}
    info = package_info(merged)
    refuse_existing(output, force)
    if profile is not None:
        check_images(DeviceLayout.load(profile), sources)
    all_keys = list(key_paths) or (base.keys if base else [])
    signing = [keymod.load_private_key(p) for p in all_keys]
    with contextlib.ExitStack() as stack:
        if rawprograms:
            if images:
                raise ZflashError(Code.USAGE, "give --image or --rawprogram, not both")
            work = stack.enter_context(_workdir(output))
            sources, spec = _flat_build(rawprograms, patches, include_fuse, hw_ids,
                                        key_hashes, programmer, work)
            info = dataclasses.replace(info, edl=spec)
        manifest = build_package(info, sources, signing, output, codec, level, block_size,
                                 zstd_level)
    if as_json:
        emit_json({"output": str(output), "manifest": manifest.to_json(),
                   "size": output.stat().st_size})
    else:
        click.echo(f"wrote {output}: {len(manifest.partitions)} partitions, "
                   f"{manifest.image_size} image bytes in {output.stat().st_size} bytes")


# ---------------------------------------------------------------------------------- inspect
def _manifest_summary(manifest: Manifest) -> list[str]:
    lines = [f"product:            {manifest.product}",
             f"version:            {manifest.version}",
             f"hardware revisions: {', '.join(manifest.hardware_revisions)}",
             f"baseband ids:       {', '.join(manifest.baseband_ids)}",
             f"rollback index:     {manifest.rollback_index} "
             f"(location {manifest.rollback_location})",
             f"build time:         {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(manifest.build_time))}",
             "partitions:",
             f"  {'name':<12} {'A/B':<4} {'size':>12} {'stored':>12} {'blocks':>7}  sha256"]
    for p in manifest.partitions:
        lines.append(f"  {p.name:<12} {'yes' if p.slotted else 'no':<4} {p.size:>12} "
                     f"{p.stored_size:>12} {p.block_count:>7}  {p.sha256[:16]}...")
    return lines


def _flat_build_lines(manifest: Manifest) -> list[str]:
    """The rawprogram entries and what became of them (package partition, or why not)."""
    flat = manifest.edl.flat_build if manifest.edl else None
    if flat is None:
        return []
    lines = [f"flat build:         {flat.sector_size}-byte sectors",
             f"  {'entry':<22} {'label':<14} {'LUN':>3} {'start':>20} {'sectors':>9}  "
             "partition / note"]
    for e in flat.entries:
        target = f"{e.partition}{' (slot ' + e.slot + ')' if e.slot else ''}"
        what = "; ".join(x for x in (target, e.note) if x)
        lines.append(f"  {e.file + ':' + str(e.line):<22} {e.label:<14} {e.lun:>3} "
                     f"{e.start_sector:>20} {e.sectors:>9}  {what}")
    for p in flat.patches:
        lines.append(f"  {p.file}: {p.disk} DISK patches, {p.host} patches of the build's "
                     f"GPT files; {p.note}")
    return lines


@main.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def inspect(package: Path, as_json: bool) -> None:
    """Summarise a package (structure is checked; the signature is not: use verify)."""
    from zflash.package.format import KIND_NAMES
    from zflash.package.reader import Package
    with Package(package) as pkg:
        head = pkg.head
        kinds: dict[str, dict[str, int]] = {}
        for part in head.manifest.partitions:
            counts = {name: 0 for name in KIND_NAMES.values()}
            for entry in head.tables[part.name]:
                counts[KIND_NAMES[entry.kind]] += 1
            kinds[part.name] = counts
        sigs = [{"algorithm": s.algorithm, "key_id": s.key_id.hex()} for s in head.signatures]
        if as_json:
            emit_json({"path": str(package), "digest": head.digest, "size": head.header.total_size,
                       "manifest": head.manifest.to_json(), "signatures": sigs,
                       "blocks": kinds})
            return
        click.echo(f"package:            {package} ({head.header.total_size} bytes)")
        click.echo(f"manifest digest:    {head.digest}")
        for line in _manifest_summary(head.manifest):
            click.echo(line)
        for name, counts in kinds.items():
            click.echo(f"  {name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        for line in _flat_build_lines(head.manifest):
            click.echo(line)
        for sig in sigs:
            click.echo(f"signed by:          {sig['algorithm']} key {sig['key_id']}")


# ---------------------------------------------------------------------------------- verify
@main.command()
@click.argument("package", type=click.Path(path_type=Path))
@trust_options
@click.option("--json", "as_json", is_flag=True)
def verify(package: Path, trust_files: tuple[Path, ...], trust_dir: Path | None,
           as_json: bool) -> None:
    """Check the signature against trusted keys and every block against its hash."""
    from zflash.package.reader import Package
    trust = load_trust(trust_files, trust_dir)
    started = time.perf_counter()
    with Package(package) as pkg:
        signers = pkg.verify(trust)
        size = pkg.manifest.image_size
    elapsed = time.perf_counter() - started
    if as_json:
        emit_json({"ok": True, "path": str(package), "signers": [s.hex() for s in signers],
                   "image_bytes": size, "seconds": round(elapsed, 3)})
    else:
        click.echo(f"{package}: OK, signed by {', '.join(s.hex()[:16] for s in signers)}; "
                   f"{size} image bytes verified in {elapsed:.2f} s")

