"""ZDL messages (zdl.md section 3): one dataclass per message, with bounded encode/decode.

A message knows its payload only; sequence numbers, tags and chunking belong to the engines.
``decode_message`` is the one entry point for untrusted payloads and raises nothing but
``ZflashError(Code.PROTOCOL)``. Binary data (blocks, read data) stays a memoryview of the frame
so a large block is never copied on its way to the device logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.protocol.zdl.constants import (
    BLOCK_HEADER,
    CODEC_NAMES,
    DATA_HEADER,
    DEFAULT_MAX_DATA,
    DEFAULT_WINDOW,
    HEAD_DIGEST_SIZE,
    MAX_HASH_COUNT,
    MAX_MAX_DATA,
    MAX_MESSAGE,
    MAX_TOKEN,
    MAX_WINDOW,
    MIN_MAX_DATA,
    SUPPORTED_VERSIONS,
    MsgType,
)
from zflash.protocol.zdl.device_codes import host_code
from zflash.protocol.zdl.wirejson import (
    MAX_JSON,
    MAX_JSON_ITEMS,
    MAX_RANGES,
    U32,
    U63,
    Ranges,
    Reader,
    dumps,
    loads,
    ranges_json,
)

Buffer = bytes | bytearray | memoryview

MAX_BAUD = 100_000_000
MIN_BAUD = 1200
MAX_PARTITION_INDEX = 0xFFFF
MAX_NAME = 64
# A range list in JSON: "[4294967295,4294967295]," is 24 bytes and 3 elements per pair.
RANGES_JSON = 24 * MAX_RANGES + 4096
RANGES_ITEMS = 3 * MAX_RANGES + 1024


class Message:
    """Base: ``TYPE`` is the frame type; ``parts()`` is the payload as buffers to join."""

    TYPE: ClassVar[MsgType]
    MAX_PAYLOAD: ClassVar[int] = MAX_MESSAGE  # checked before decoding, and chunks before joining

    def parts(self) -> tuple[Buffer, ...]:
        raise NotImplementedError

    def payload(self) -> bytes:
        return b"".join(self.parts())

    @classmethod
    def decode(cls, payload: memoryview) -> Message:
        raise NotImplementedError


class JsonMessage(Message):
    """A message whose payload is one canonical JSON object."""

    MAX_PAYLOAD: ClassVar[int] = MAX_JSON
    MAX_ITEMS: ClassVar[int] = MAX_JSON_ITEMS

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def parts(self) -> tuple[Buffer, ...]:
        return (dumps(self.to_json()),)

    @classmethod
    def decode(cls, payload: memoryview) -> Message:
        obj = loads(payload, cls.TYPE.name, cls.MAX_PAYLOAD, cls.MAX_ITEMS)
        return cls.from_reader(Reader(obj, cls.TYPE.name))

    @classmethod
    def from_reader(cls, r: Reader) -> Message:
        raise NotImplementedError


def _fail(what: str, why: str) -> ZflashError:
    return ZflashError(Code.PROTOCOL, f"{what}: {why}")


# -- session ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello(JsonMessage):
    """Host's offer: the versions, limits and codecs it can take, and an optional baud rate."""

    TYPE = MsgType.HELLO
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    max_data: int = DEFAULT_MAX_DATA
    window: int = DEFAULT_WINDOW
    codecs: tuple[str, ...] = ("zlib", "none")
    baud: int | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"versions": list(self.versions), "max_data": self.max_data,
                               "window": self.window, "codecs": list(self.codecs)}
        if self.baud is not None:
            obj["baud"] = self.baud
        return obj

    @classmethod
    def from_reader(cls, r: Reader) -> Hello:
        codecs = r.str_list("codecs", 1, 8, 16)
        if "none" not in codecs:
            raise r.fail("codecs", 'must contain "none"')
        return cls(versions=r.int_list("versions", 1, 16, 1, 255),
                   max_data=r.int("max_data", MIN_MAX_DATA, MAX_MAX_DATA),
                   window=r.int("window", 1, MAX_WINDOW), codecs=codecs,
                   baud=r.int("baud", MIN_BAUD, MAX_BAUD, optional=True))


@dataclass(frozen=True)
class Welcome(JsonMessage):
    """Device's choice: the session's version, limits, codecs and accepted baud rate."""

    TYPE = MsgType.WELCOME
    version: int
    max_data: int
    window: int
    codecs: tuple[str, ...]
    baud: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "max_data": self.max_data, "window": self.window,
                "codecs": list(self.codecs), "baud": self.baud}

    @classmethod
    def from_reader(cls, r: Reader) -> Welcome:
        return cls(version=r.int("version", 1, 255),
                   max_data=r.int("max_data", MIN_MAX_DATA, MAX_MAX_DATA),
                   window=r.int("window", 1, MAX_WINDOW), codecs=r.str_list("codecs", 1, 8, 16),
                   baud=r.int("baud", MIN_BAUD, MAX_BAUD, optional=True))


@dataclass(frozen=True)
class Ping(Message):
    """Liveness probe and baud-switch check; answered in any state."""

    TYPE = MsgType.PING
    MAX_PAYLOAD = MAX_TOKEN
    token: bytes = b""

    def parts(self) -> tuple[Buffer, ...]:
        return (self.token,)

    @classmethod
    def decode(cls, payload: memoryview) -> Ping:
        if len(payload) > MAX_TOKEN:
            raise _fail(cls.TYPE.name, "token too long")
        return cls(bytes(payload))


@dataclass(frozen=True)
class Pong(Ping):
    TYPE = MsgType.PONG


# -- requests --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identify(JsonMessage):
    TYPE = MsgType.IDENTIFY

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_reader(cls, r: Reader) -> Identify:
        return cls()


@dataclass(frozen=True)
class BeginUpdate(Message):
    """The package head (zpk header, manifest, signatures, block tables), opaque here; or,
    to a device whose FACTS offer ``begin_by_digest``, only the head's 32-byte package
    digest (a head is never 32 bytes: its fixed header alone is 64)."""

    TYPE = MsgType.BEGIN_UPDATE
    head: Buffer

    def parts(self) -> tuple[Buffer, ...]:
        return (self.head,)

    @property
    def digest(self) -> bytes | None:
        """The package digest when this is the by-digest form, else None."""
        return bytes(self.head) if len(self.head) == HEAD_DIGEST_SIZE else None

    @classmethod
    def decode(cls, payload: memoryview) -> BeginUpdate:
        if not 1 <= len(payload) <= MAX_MESSAGE:
            raise _fail(cls.TYPE.name, "head must be 1..MAX_MESSAGE bytes")
        return cls(payload)


@dataclass(frozen=True)
class WriteBlock(Message):
    """One block of a partition. ``seq`` is set by the receiving engine (not on the wire)."""

    TYPE = MsgType.WRITE_BLOCK
    MAX_PAYLOAD = BLOCK_HEADER.size + MAX_MAX_DATA
    partition: int
    block: int
    codec: int
    data: Buffer
    seq: int = field(default=-1, compare=False, repr=False)

    def parts(self) -> tuple[Buffer, ...]:
        return (BLOCK_HEADER.pack(self.partition, self.block, self.codec), self.data)

    @classmethod
    def decode(cls, payload: memoryview) -> WriteBlock:
        if len(payload) <= BLOCK_HEADER.size:
            raise _fail(cls.TYPE.name, "no block data")
        partition, block, codec = BLOCK_HEADER.unpack_from(payload)
        if codec not in CODEC_NAMES:
            raise _fail(cls.TYPE.name, f"unknown codec {codec}")
        return cls(partition, block, codec, payload[BLOCK_HEADER.size:])


@dataclass(frozen=True)
class BlockHashes(JsonMessage):
    """Ask for the SHA-256 of blocks as they are on flash (verify, or find what to skip)."""

    TYPE = MsgType.BLOCK_HASHES
    partition: str
    slot: str | None
    first: int
    count: int
    block_size: int

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "slot": self.slot, "first": self.first,
                "count": self.count, "block_size": self.block_size}

    @classmethod
    def from_reader(cls, r: Reader) -> BlockHashes:
        block_size = r.int("block_size", 512, 1 << 24)
        if block_size & (block_size - 1):
            raise r.fail("block_size", "must be a power of two")
        return cls(r.str("partition", 1, MAX_NAME), r.slot(), r.int("first", 0, U32),
                   r.int("count", 1, MAX_HASH_COUNT), block_size)


@dataclass(frozen=True)
class KeepBlocks(JsonMessage):
    MAX_PAYLOAD = RANGES_JSON
    MAX_ITEMS = RANGES_ITEMS
    """Blocks the host believes the target already holds; the device verifies them (delta)."""

    TYPE = MsgType.KEEP_BLOCKS
    partition: int
    ranges: Ranges

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "ranges": ranges_json(self.ranges)}

    @classmethod
    def from_reader(cls, r: Reader) -> KeepBlocks:
        return cls(r.int("partition", 0, MAX_PARTITION_INDEX), r.ranges("ranges"))


@dataclass(frozen=True)
class CommitPartition(JsonMessage):
    TYPE = MsgType.COMMIT_PARTITION
    partition: int

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition}

    @classmethod
    def from_reader(cls, r: Reader) -> CommitPartition:
        return cls(r.int("partition", 0, MAX_PARTITION_INDEX))


@dataclass(frozen=True)
class SetActive(JsonMessage):
    TYPE = MsgType.SET_ACTIVE
    slot: str

    def to_json(self) -> dict[str, Any]:
        return {"slot": self.slot}

    @classmethod
    def from_reader(cls, r: Reader) -> SetActive:
        return cls(r.str("slot", 1, 8))


@dataclass(frozen=True)
class Reboot(JsonMessage):
    """Reboot with options such as ``{"force_boot_failure": False, "mode": "normal"}``."""

    TYPE = MsgType.REBOOT
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"options": dict(self.options)}

    @classmethod
    def from_reader(cls, r: Reader) -> Reboot:
        options = r.object("options")
        if len(options) > 16 or any(
                len(k) > 64 or not (isinstance(v, (bool, int)) or
                                    (isinstance(v, str) and len(v) <= 256))
                for k, v in options.items()):
            raise r.fail("options", "must be at most 16 short keys with bool/int/str values")
        return cls(dict(options))


@dataclass(frozen=True)
class Read(JsonMessage):
    """Read back ``length`` bytes at ``offset`` of a partition (verify, backup)."""

    TYPE = MsgType.READ
    partition: str
    slot: str | None
    offset: int
    length: int

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "slot": self.slot, "offset": self.offset,
                "length": self.length}

    @classmethod
    def from_reader(cls, r: Reader) -> Read:
        return cls(r.str("partition", 1, MAX_NAME), r.slot(), r.int("offset", 0, U63),
                   r.int("length", 0, U63))


@dataclass(frozen=True)
class Erase(JsonMessage):
    TYPE = MsgType.ERASE
    partition: str
    slot: str | None

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "slot": self.slot}

    @classmethod
    def from_reader(cls, r: Reader) -> Erase:
        return cls(r.str("partition", 1, MAX_NAME), r.slot())


# -- responses -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ok(JsonMessage):
    TYPE = MsgType.OK
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"info": dict(self.info)}

    @classmethod
    def from_reader(cls, r: Reader) -> Ok:
        return cls(dict(r.object("info")) if "info" in r.obj else {})


@dataclass(frozen=True)
class Error(JsonMessage):
    """A refusal with a zflash error code (90xx); ``block`` set when it rejects one block."""

    TYPE = MsgType.ERROR
    code: int
    message: str = ""
    partition: int | None = None
    block: int | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.block is not None:
            obj["partition"] = self.partition
            obj["block"] = self.block
        return obj

    @classmethod
    def from_reader(cls, r: Reader) -> Error:
        block = r.int("block", 0, U32, optional=True)
        partition = (r.int("partition", 0, MAX_PARTITION_INDEX) if block is not None
                     else r.int("partition", 0, MAX_PARTITION_INDEX, optional=True))
        return cls(r.int("code", 9000, 9999), r.str("message", 0, 1024), partition, block)

    @property
    def host_code(self) -> int:
        """The code the host reports: the device's own, if it is one a device may send."""
        return host_code(self.code)

    @property
    def host_message(self) -> str:
        """The device's message, naming its code when :attr:`host_code` replaced it."""
        if self.host_code == self.code:
            return self.message
        return (f"device sent error code {self.code}, which is not a device error code"
                + (f": {self.message}" if self.message else ""))

    def to_exception(self) -> ZflashError:
        """The device's refusal as the error the flasher raises.

        A code a device has no business sending (9001 "internal error", an unknown or
        host-only code) becomes a protocol error that names the device's code.
        """
        if self.host_code != self.code:
            return ZflashError(self.host_code, self.host_message)
        return ZflashError(self.code, f"device: {self.message}" if self.message else "")


@dataclass(frozen=True)
class Facts(Message):
    TYPE = MsgType.FACTS
    MAX_PAYLOAD = 512 << 10  # 1024 partitions with 256-character names, and the rest
    MAX_ITEMS = 16384
    facts: DeviceFacts

    def parts(self) -> tuple[Buffer, ...]:
        obj = self.facts.to_dict()
        if self.facts.features:  # absent when none: the form of devices that predate it
            obj["features"] = list(self.facts.features)
        return (dumps(obj),)

    @classmethod
    def decode(cls, payload: memoryview) -> Facts:
        obj = loads(payload, cls.TYPE.name, cls.MAX_PAYLOAD, cls.MAX_ITEMS)
        return cls(DeviceFacts.from_dict(obj))


@dataclass(frozen=True)
class UpdateReady(JsonMessage):
    """Update accepted: journal id, target slot, and blocks already held verified (resume)."""

    TYPE = MsgType.UPDATE_READY
    MAX_PAYLOAD = RANGES_JSON  # all partitions' ranges together
    MAX_ITEMS = RANGES_ITEMS
    session: str
    slot: str | None
    have: dict[int, Ranges] = field(default_factory=dict)
    #: the answer to a BEGIN_UPDATE by digest whose head the device does not hold: nothing
    #: was opened, the host sends the full head (never sent otherwise, so older hosts,
    #: which only ever send the full head, never meet it)
    need_head: bool = False

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"session": self.session, "slot": self.slot,
                               "partitions": [{"index": i, "have": ranges_json(r)}
                                              for i, r in sorted(self.have.items())]}
        if self.need_head:
            obj["need_head"] = True
        return obj

    @classmethod
    def from_reader(cls, r: Reader) -> UpdateReady:
        have: dict[int, Ranges] = {}
        for item in r.list("partitions", 64):
            if not isinstance(item, dict):
                raise r.fail("partitions", "must hold objects")
            sub = Reader(item, r.what)
            index = sub.int("index", 0, MAX_PARTITION_INDEX)
            if index in have:
                raise r.fail("partitions", "repeats an index")
            have[index] = sub.ranges("have")
        need_head = r.bool("need_head") if "need_head" in r.obj else False
        return cls(r.hex("session", 1, 128), r.slot(), have, need_head)


@dataclass(frozen=True)
class Hashes(Message):
    TYPE = MsgType.HASHES
    MAX_PAYLOAD = 32 * MAX_HASH_COUNT
    digests: tuple[bytes, ...]

    def parts(self) -> tuple[Buffer, ...]:
        return (b"".join(self.digests),)

    @classmethod
    def decode(cls, payload: memoryview) -> Hashes:
        size = len(payload)
        if size == 0 or size % 32 or size // 32 > MAX_HASH_COUNT:
            raise _fail(cls.TYPE.name, "must be 1..65536 digests of 32 bytes")
        raw = bytes(payload)
        return cls(tuple(raw[i:i + 32] for i in range(0, size, 32)))


@dataclass(frozen=True)
class Kept(KeepBlocks):
    """The subset of a KEEP_BLOCKS request the device verified and keeps."""

    TYPE = MsgType.KEPT


@dataclass(frozen=True)
class Data(Message):
    """A piece of a READ: ``data`` starts at byte ``offset`` of the partition."""

    TYPE = MsgType.DATA
    MAX_PAYLOAD = DATA_HEADER.size + MAX_MAX_DATA
    offset: int
    data: Buffer

    def parts(self) -> tuple[Buffer, ...]:
        return (DATA_HEADER.pack(self.offset), self.data)

    @classmethod
    def decode(cls, payload: memoryview) -> Data:
        if len(payload) <= DATA_HEADER.size:
            raise _fail(cls.TYPE.name, "no data")
        (offset,) = DATA_HEADER.unpack_from(payload)
        if offset > U63:
            raise _fail(cls.TYPE.name, "offset out of range")
        return cls(offset, payload[DATA_HEADER.size:])


@dataclass(frozen=True)
class Done(JsonMessage):
    """End of a READ: how many bytes were sent and their SHA-256 (hex)."""

    TYPE = MsgType.DONE
    length: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"length": self.length, "sha256": self.sha256}

    @classmethod
    def from_reader(cls, r: Reader) -> Done:
        return cls(r.int("length", 0, U63), r.hex("sha256", 64, 64))


MESSAGE_CLASSES: dict[int, type[Message]] = {cls.TYPE: cls for cls in (
    Hello, Welcome, Ping, Pong, Identify, BeginUpdate, WriteBlock, BlockHashes, KeepBlocks,
    CommitPartition, SetActive, Reboot, Read, Erase, Ok, Error, Facts, UpdateReady, Hashes,
    Kept, Data, Done)}

REQUEST_CLASSES = (Identify, BeginUpdate, BlockHashes, KeepBlocks, CommitPartition, SetActive,
                   Reboot, Read, Erase)

# What may answer each request (ERROR answers any of them).
RESPONSES: dict[int, frozenset[int]] = {
    MsgType.IDENTIFY: frozenset({MsgType.FACTS}),
    MsgType.BEGIN_UPDATE: frozenset({MsgType.UPDATE_READY}),
    MsgType.BLOCK_HASHES: frozenset({MsgType.HASHES}),
    MsgType.KEEP_BLOCKS: frozenset({MsgType.KEPT}),
    MsgType.COMMIT_PARTITION: frozenset({MsgType.OK}),
    MsgType.SET_ACTIVE: frozenset({MsgType.OK}),
    MsgType.REBOOT: frozenset({MsgType.OK}),
    MsgType.ERASE: frozenset({MsgType.OK}),
    MsgType.READ: frozenset({MsgType.DATA, MsgType.DONE}),
}


def max_payload(msg_type: int) -> int:
    """The largest payload a message of this type may have (a chunked one included)."""
    cls = MESSAGE_CLASSES.get(msg_type)
    return MAX_MESSAGE if cls is None else cls.MAX_PAYLOAD


def decode_message(msg_type: int, payload: memoryview) -> Message:
    """Decode an untrusted payload of a known type (ACK and NAK have no message object)."""
    cls = MESSAGE_CLASSES.get(msg_type)
    if cls is None:
        raise ZflashError(Code.PROTOCOL, f"no message of type 0x{msg_type:02x}")
    if len(payload) > cls.MAX_PAYLOAD:
        raise ZflashError(Code.PROTOCOL, f"{cls.TYPE.name} of {len(payload)} bytes, more than "
                                         f"the {cls.MAX_PAYLOAD} it may have")
    return cls.decode(payload)
