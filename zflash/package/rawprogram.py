"""Import a Qualcomm flat build: rawprogram*.xml + patch*.xml + images -> package partitions.

A flat build says, per LUN, which file goes to which sectors. zflash places images by GPT
name on the device (the EDL back-end reads every LUN's GPT), so the import keeps the label
and the image and records the rest (LUN, start sector, sector count) in the manifest's
``edl.flat_build`` object, where ``zflash inspect`` shows it. Rules (protocols/zpk.md 3.1,
docs/DECISIONS.md D140-D144):

* ``<label>_a`` + ``<label>_b`` become one slotted partition ``label``; any other label one
  unslotted partition of that name;
* GPT entries (``PrimaryGPT``/``BackupGPT``, ``gpt_main*.bin``/``gpt_backup*.bin``) and
  entries with ``filename=""`` are recorded, not packed; ``<erase>`` is recorded;
* ``secdata`` (the fuse partition qdl guards) is refused unless named by ``include_fuse``;
* DISK patches must lie inside the partition tables (they are GPT fix-ups for the disk size,
  which the device's own GPT already has); patches of the build's GPT files are counted.

The XML is read bounded (4 MiB), with DOCTYPE and entity declarations refused before and
during parsing, so no entity is ever expanded. Every bad input is a 9043 naming file:line.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from xml.parsers import expat

from zflash.errors import Code, ZflashError
from zflash.package.edlspec import FlatBuild, ImportEntry, ImportPatches
from zflash.package.format import MAX_PARTITIONS, valid_partition_name
from zflash.package.images import open_image
from zflash.package.sparse.format import is_sparse
from zflash.package.writer import PartitionSource

MAX_XML = 4 << 20
MAX_ENTRIES = 512
SECTOR_SIZES = (512, 4096)
MAX_LUN = 7
FUSE_LABELS = frozenset({"secdata"})  # REFERENCE-EDL 4: qdl's --allow-fusing guard
GPT_LABELS = frozenset({"primarygpt", "backupgpt"})
_GPT_FILE = re.compile(r"^gpt_(main|backup|both)[0-9]*\.bin$", re.IGNORECASE)
_FORBIDDEN = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)
_UINT = re.compile(r"^(?:0x[0-9a-fA-F]{1,16}|[0-9]{1,20})$")
_FROM_END = re.compile(r"^NUM_DISK_SECTORS-([0-9]{1,20})\.?$")
_CRC = re.compile(r"^CRC32\(([^,()]{1,40}),([^,()]{1,20})\)$")
NOTE_GPT = "partition table: the device's GPT is kept and images are placed by name"
NOTE_EMPTY = "no image (filename=\"\"): left as it is"
NOTE_ERASE = "erase: not carried (a package writes images; `zflash erase` erases)"
NOTE_PATCHES = ("GPT fix-ups for the disk size: not sent, the device's own GPT (read before "
                "writing) already fits its disk")


def _error(where: str, detail: str, cause: str = "entry") -> ZflashError:
    return ZflashError(Code.FLAT_BUILD, f"{where}: {detail}", cause=cause)


@dataclass(frozen=True)
class XmlEntry:
    line: int
    tag: str
    attrs: dict[str, str]


def read_xml(path: Path, root: str) -> list[XmlEntry]:
    """The children of the ``root`` element, with their line numbers. Refuses big files,
    DOCTYPE/entity declarations, nesting and a different root (9043, cause ``xml``)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_XML + 1)
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None
    if len(data) > MAX_XML:
        raise _error(str(path), f"larger than {MAX_XML} bytes", "xml")
    if _FORBIDDEN.search(data):
        raise _error(str(path), "has a DOCTYPE or entity declaration; refused", "xml")
    entries: list[XmlEntry] = []
    depth = [0]
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse(*_: object) -> None:
        raise _error(f"{path}:{parser.CurrentLineNumber}", "DOCTYPE or entity declaration; "
                     "refused", "xml")

    def start(tag: str, attrs: dict[str, str]) -> None:
        depth[0] += 1
        where = f"{path}:{parser.CurrentLineNumber}"
        if depth[0] == 1 and tag != root:
            raise _error(where, f"root element is <{tag}>, expected <{root}>", "xml")
        if depth[0] > 2:
            raise _error(where, f"<{tag}> nested inside an entry", "xml")
        if depth[0] == 2:
            if len(entries) >= MAX_ENTRIES:
                raise _error(where, f"more than {MAX_ENTRIES} entries", "xml")
            entries.append(XmlEntry(parser.CurrentLineNumber, tag, dict(attrs)))

    def end(_tag: str) -> None:
        depth[0] -= 1

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise _error(f"{path}:{exc.lineno}", f"not well-formed XML ({expat.ErrorString(exc.code)})",
                     "xml") from None
    return entries


# ------------------------------------------------------------------------ rawprogram
@dataclass(frozen=True)
class Program:
    """One checked rawprogram entry."""

    file: Path
    line: int
    tag: str
    label: str
    filename: str
    sector_size: int
    lun: int
    start_sector: str
    sectors: int
    file_sector_offset: int
    sparse: bool

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def start(self) -> int | None:
        """The first sector, or None when it counts from the end of the disk."""
        return None if _FROM_END.match(self.start_sector) else int(self.start_sector, 0)

    @property
    def is_gpt(self) -> bool:
        return self.label.lower() in GPT_LABELS or bool(_GPT_FILE.match(self.filename))

    def image_path(self) -> Path:
        return self.file.parent / self.filename


def _attr(entry: XmlEntry, where: str, name: str, default: str | None = None) -> str:
    for key, value in entry.attrs.items():
        if key.lower() == name.lower():
            return value
    if default is None:
        raise _error(where, f"<{entry.tag}> has no {name} attribute")
    return default


def _uint(entry: XmlEntry, where: str, name: str, default: str | None = None,
          limit: int = 1 << 48) -> int:
    text = _attr(entry, where, name, default).strip()
    if not _UINT.match(text) or int(text, 0) > limit:
        raise _error(where, f"{name}={text[:40]!r} is not a whole number in 0..{limit}")
    return int(text, 0)


def parse_rawprogram(path: Path) -> list[Program]:
    """The ``<program>``/``<erase>`` entries of one rawprogram file, checked."""
    out = []
    for entry in read_xml(path, "data"):
        where = f"{path}:{entry.line}"
        if entry.tag not in ("program", "erase"):
            raise _error(where, f"<{entry.tag}> is not a rawprogram entry (program, erase)")
        sector = _uint(entry, where, "SECTOR_SIZE_IN_BYTES")
        if sector not in SECTOR_SIZES:
            raise _error(where, f"SECTOR_SIZE_IN_BYTES={sector}, expected 512 or 4096")
        start = _attr(entry, where, "start_sector").strip()
        if not _FROM_END.match(start) and not _UINT.match(start):
            raise _error(where, f"start_sector={start[:40]!r} is neither a sector number nor "
                                "NUM_DISK_SECTORS-N.")
        if _UINT.match(start):
            start = str(int(start, 0))
        filename = _attr(entry, where, "filename", "" if entry.tag == "erase" else None)
        sparse = _attr(entry, where, "sparse", "false").strip().lower()
        if sparse not in ("true", "false"):
            raise _error(where, f"sparse={sparse[:20]!r}, expected true or false")
        label = _attr(entry, where, "label", "")
        for name, text in (("label", label), ("filename", filename)):
            if len(text) > 200 or not all(0x20 <= ord(c) < 0x7F for c in text):
                raise _error(where, f"{name}={text[:40]!r} is not printable ASCII of at most "
                                    "200 characters")
        if filename:
            parts = PurePosixPath(filename.replace("\\", "/")).parts
            if filename.startswith(("/", "\\")) or ".." in parts or ":" in filename:
                raise _error(where, f"filename={filename[:80]!r} leaves the build folder")
        out.append(Program(
            path, entry.line, entry.tag, label, filename, sector,
            _uint(entry, where, "physical_partition_number", limit=MAX_LUN), start,
            _uint(entry, where, "num_partition_sectors"),
            _uint(entry, where, "file_sector_offset", "0"), sparse == "true"))
    return out


# ------------------------------------------------------------------------ patch
@dataclass(frozen=True)
class Patch:
    file: Path
    line: int
    filename: str
    lun: int
    start_sector: str
    byte_offset: int
    size: int
    value: str


def _sector_expr(text: str) -> bool:
    return bool(_FROM_END.match(text) or _UINT.match(text))


def parse_patch(path: Path) -> list[Patch]:
    out = []
    for entry in read_xml(path, "patches"):
        where = f"{path}:{entry.line}"
        if entry.tag != "patch":
            raise _error(where, f"<{entry.tag}> is not a <patch>")
        sector = _uint(entry, where, "SECTOR_SIZE_IN_BYTES")
        size = _uint(entry, where, "size_in_bytes")
        offset = _uint(entry, where, "byte_offset")
        if sector not in SECTOR_SIZES or size not in (1, 2, 4, 8) or offset + size > sector:
            raise _error(where, f"patch of {size} bytes at byte {offset} of a {sector}-byte "
                                "sector (sizes 1, 2, 4, 8 inside one 512/4096-byte sector)")
        start = _attr(entry, where, "start_sector").strip()
        value = _attr(entry, where, "value").strip()
        crc = _CRC.match(value)
        good = _sector_expr(value) or (crc and _sector_expr(crc.group(1).strip())
                                       and _UINT.match(crc.group(2).strip()))
        if not _sector_expr(start) or not good:
            raise _error(where, f"start_sector={start[:40]!r} value={value[:60]!r}: expected "
                                "numbers, NUM_DISK_SECTORS-N. or CRC32(sector,bytes)")
        out.append(Patch(path, entry.line, _attr(entry, where, "filename"),
                         _uint(entry, where, "physical_partition_number", limit=MAX_LUN),
                         start, offset, size, value))
    return out


# ------------------------------------------------------------------------ mapping
@dataclass(frozen=True)
class Imported:
    """What `zflash pack --rawprogram` packs: the partition images and the mapping."""

    sources: list[PartitionSource]
    flat_build: FlatBuild


def import_build(rawprograms: list[Path], patches: list[Path], include_fuse: set[str],
                 workdir: Path) -> Imported:
    """Map a flat build to package partitions. Images that need cutting (file_sector_offset)
    are copied into ``workdir``, which must outlive the pack."""
    if not rawprograms:
        raise ZflashError(Code.USAGE, "--patch needs --rawprogram")
    programs = [p for path in rawprograms for p in parse_rawprogram(Path(path))]
    if not programs:
        raise _error(str(rawprograms[0]), "no <program> entries")
    if len(programs) > MAX_ENTRIES:
        raise _error(programs[MAX_ENTRIES].where, f"more than {MAX_ENTRIES} entries in all "
                                                  "the rawprogram files", "xml")
    sector = programs[0].sector_size
    for prog in programs:
        if prog.sector_size != sector:
            raise _error(prog.where, f"SECTOR_SIZE_IN_BYTES={prog.sector_size}, but "
                                     f"{programs[0].where} says {sector}: one storage type")
    _check_overlaps(programs)
    labels = {p.label for p in programs if p.tag == "program"}
    named = {p.label for p in programs} | {p.label[:-2] for p in programs
                                           if p.label.endswith(("_a", "_b"))}
    unknown = set(include_fuse) - named
    if unknown:
        raise ZflashError(Code.USAGE, f"--include-fuse names {sorted(unknown)}, which the "
                                      "build does not have")
    entries: dict[int, ImportEntry] = {}
    groups: dict[str, list[tuple[int, Program, str]]] = {}
    for index, prog in enumerate(programs):
        note = _not_a_partition(prog, include_fuse)
        if note:
            entries[index] = _entry(prog, note=note)
            continue
        base, slot = _slot_name(prog.label, labels)
        groups.setdefault(base, []).append((index, prog, slot))
    sources = []
    for base, members in groups.items():
        source = _partition(base, members, workdir, sector)
        image_index = next((i for i, p, _ in members if p.filename), None)
        for index, prog, slot in members:
            if not prog.filename:
                note = NOTE_EMPTY if source is None else \
                    f"no image of its own: {base} goes to whichever slot is inactive"
            elif index == image_index:
                note = _image_note(prog, base, include_fuse)
            else:
                note = "the same image as its slot twin"
            entries[index] = _entry(prog, base if source else "", slot if source else "",
                                    note)
        if source is not None:
            sources.append(source)
    if len(sources) > MAX_PARTITIONS:
        raise _error(str(rawprograms[-1]), f"the build has {len(sources)} images; a package "
                                           f"holds at most {MAX_PARTITIONS} partitions")
    if not sources:
        raise _error(str(rawprograms[0]), "the build has no image to pack (all entries are "
                                          "GPT, erase or filename=\"\")")
    found = [_patch_summary(Path(p), programs) for p in patches]
    return Imported(sources, FlatBuild(sector, tuple(entries[i] for i in sorted(entries)),
                                       tuple(found)))


def _image_note(prog: Program, base: str, include_fuse: set[str]) -> str:
    """How the entry's file became the image (empty when taken as it is)."""
    notes = []
    if {prog.label, base} & include_fuse:
        notes.append("fuse partition, included by --include-fuse")
    if prog.sparse:
        notes.append("sparse image, expanded")
    if prog.file_sector_offset:
        notes.append(f"file_sector_offset {prog.file_sector_offset}: the image starts "
                     f"{prog.file_sector_offset * prog.sector_size} bytes into the file")
    if not prog.sectors:
        notes.append("num_partition_sectors 0: no cap, the file's size decides")
    return "; ".join(notes)


def _entry(prog: Program, partition: str = "", slot: str = "", note: str = "") -> ImportEntry:
    return ImportEntry(prog.file.name[:200], prog.line, prog.tag, prog.label[:200],
                       prog.filename[:200], prog.lun, prog.start_sector, prog.sectors,
                       partition, slot, note)


def _not_a_partition(prog: Program, include_fuse: set[str]) -> str:
    """Why this entry is no package partition ("" when it is one); refuses fuses."""
    if prog.tag == "erase":
        return NOTE_ERASE
    if prog.is_gpt:
        return NOTE_GPT
    if prog.start is None:
        raise _error(prog.where, f"{prog.label!r} starts at {prog.start_sector}, relative to "
                                 "the end of the disk; only the backup GPT may")
    base = prog.label[:-2] if prog.label.endswith(("_a", "_b")) else prog.label
    if prog.filename and (prog.label.lower() in FUSE_LABELS or base.lower() in FUSE_LABELS) \
            and not {prog.label, base} & include_fuse:
        raise _error(prog.where, f"{prog.label!r} is a fuse/security partition: writing it "
                                 f"can fuse the device for good; pass --include-fuse "
                                 f"{prog.label} if that is intended", "fuse")
    return ""


def _slot_name(label: str, labels: set[str]) -> tuple[str, str]:
    if label.endswith(("_a", "_b")):
        twin = label[:-1] + ("b" if label.endswith("_a") else "a")
        if twin in labels:
            return label[:-2], label[-1]
    return label, ""


def _partition(base: str, members: list[tuple[int, Program, str]], workdir: Path,
               sector: int) -> PartitionSource | None:
    """The package partition of one label (or slot pair), or None when no entry has a file."""
    first = members[0][1]
    if not valid_partition_name(base):
        raise _error(first.where, f"label {first.label!r} gives partition name {base!r}: a "
                                  "package partition is 1..32 of a-z 0-9 _ . -")
    slots: list[str] = []
    for _, prog, slot in members:
        if slot in slots:
            raise _error(prog.where, f"label {prog.label!r} appears twice (split images are "
                                     "not imported)")
        slots.append(slot)
    with_file = [(i, p, s) for i, p, s in members if p.filename]
    if not with_file:
        return None
    images = [_image(p, workdir, sector) for _, p, _ in with_file]
    if len(images) == 2 and _digest(images[0]) != _digest(images[1]):
        raise _error(with_file[1][1].where, f"{with_file[0][1].label} and "
                                            f"{with_file[1][1].label} name different images; "
                                            "a slotted partition has one")
    # The cap is the smallest non-zero num_partition_sectors (0: the file's size decides).
    caps = [p.sectors for _, p, _ in members if p.sectors]
    with open_image(images[0]) as image:
        size = image.size
    if caps and size > min(caps) * sector:
        raise _error(with_file[0][1].where, f"{with_file[0][1].filename} holds {size} bytes, "
                                            f"more than num_partition_sectors {min(caps)} x "
                                            f"{sector}")
    return PartitionSource(base, images[0], bool(slots[0]))


def _image(prog: Program, workdir: Path, sector: int) -> Path:
    """The image as it is written at the partition's first sector: sparse images are
    expanded by the writer; file_sector_offset cuts a copy."""
    path = prog.image_path()
    try:
        with open(path, "rb") as handle:
            head = handle.read(28)
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{prog.where}: {prog.filename}: "
                                                f"{exc.strerror}") from None
    if prog.sparse and not is_sparse(head) and \
            path.stat().st_size != prog.sectors * sector:
        raise _error(prog.where, f"{prog.filename} is marked sparse=\"true\" but has no "
                                 "sparse header (and is not the partition's size)")
    if not prog.sparse and is_sparse(head):
        raise _error(prog.where, f"{prog.filename} is an Android sparse image but not marked "
                                 "sparse=\"true\"")
    if not prog.file_sector_offset:
        return path
    if prog.sparse:
        raise _error(prog.where, "file_sector_offset on a sparse image is not imported")
    skip = prog.file_sector_offset * sector
    if skip >= path.stat().st_size:
        raise _error(prog.where, f"file_sector_offset {prog.file_sector_offset} skips the "
                                 f"whole of {prog.filename}")
    cut = workdir / f"{prog.label}.{prog.file.stem}.{prog.line}.img"
    with open(path, "rb") as src, open(cut, "wb") as dst:
        src.seek(skip)
        shutil.copyfileobj(src, dst, 1 << 20)
    return cut


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open_image(path) as image:
        for block in image.iter_blocks(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def _check_overlaps(programs: list[Program]) -> None:
    spans = sorted(((p.lun, p.start, p.start + p.sectors, i) for i, p in enumerate(programs)
                    if p.tag == "program" and p.start is not None and p.sectors))
    for (lun, _, end, a), (lun2, start2, _, b) in zip(spans, spans[1:]):
        prev, prog = programs[a], programs[b]
        if lun == lun2 and start2 < end:
            raise _error(prog.where, f"{prog.label!r} (sectors {start2}..) overlaps "
                                     f"{prev.label!r} at {prev.where}")


def _patch_summary(path: Path, programs: list[Program]) -> ImportPatches:
    """Counts the patches and refuses DISK patches outside the partition tables."""
    found = parse_patch(path)
    disk = [p for p in found if p.filename.upper() == "DISK"]
    for patch in disk:
        if _FROM_END.match(patch.start_sector):
            continue  # the backup GPT at the end of the disk
        sector = int(patch.start_sector, 0)
        tables = [p for p in programs if p.is_gpt and p.lun == patch.lun and
                  p.start is not None]
        inside = any(p.start is not None and p.start <= sector < p.start + max(p.sectors, 1)
                     for p in tables)
        if not tables:  # no PrimaryGPT entry: the MBR, header and 16 KiB of entries
            inside = sector < 2 + (16384 // programs[0].sector_size)
        if not inside:
            raise _error(f"{path}:{patch.line}", f"DISK patch of sector {sector} on LUN "
                                                 f"{patch.lun} is outside the partition "
                                                 "tables", "patch")
    return ImportPatches(path.name[:200], len(disk), len(found) - len(disk), NOTE_PATCHES)
