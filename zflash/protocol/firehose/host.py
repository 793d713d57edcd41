"""The host side of Firehose: XML commands out, logs / responses / read data in.

h11 style and no clock. The driver writes what the command methods return, feeds every read
into ``receive_data`` and pulls ``next_event()`` until NEED_DATA. A final ``Response`` is
provisional: the programmer may still send ``<log>`` lines (MSM8916 sends them after the
response), so the driver keeps reading until QUIET_PERIOD (100 ms) passes without data, then
calls ``settle()`` for the ``Result`` (response + all its logs). A ``Response`` with
``rawmode`` True opens a data phase instead: ``program_data`` chunks out, or ``ReadData``
events in, then the final response.
"""

from __future__ import annotations

import json
from collections import deque
from enum import Enum

from zflash.errors import Code, ZflashError
from zflash.protocol.latch import breaks_for_good
from zflash.protocol.firehose.constants import (
    DEFAULT_PAYLOAD,
    DEVICE_MAX_XML,
    MAX_DOCUMENT,
    MAX_HOST_PAYLOAD,
    MAX_LOGS,
    ZLP_SPELLINGS,
)
from zflash.protocol.firehose.events import (
    NEED_DATA,
    HostEvent,
    Log,
    NeedData,
    ReadData,
    Response,
    Result,
)
from zflash.protocol.firehose.xmlwire import Buffer, XmlSplitter, encode_document, parse_document

_RAW_COMMANDS = ("program", "read")


class HostState(Enum):
    IDLE = "idle"  # no command outstanding (start-up and late logs are fine)
    WAITING = "waiting"  # a command was sent; its response is due
    SENDING = "sending"  # program: the host sends the data phase
    RECEIVING = "receiving"  # read: the device sends the data phase
    SETTLING = "settling"  # final response seen; late logs possible; settle() is due
    BROKEN = "broken"


def _misuse(why: str) -> ZflashError:
    return ZflashError(Code.INTERNAL, f"Firehose host engine misuse: {why}")


def _positive(attrs: dict[str, str], name: str) -> int | None:
    value = attrs.get(name)
    if value is None:
        return None
    try:
        number = int(value.strip(), 0)
    except ValueError:
        number = 0
    if number <= 0:
        raise ZflashError(Code.PROTOCOL, f"Firehose: configure answered {name}={value!r}")
    return number


class HostEngine:
    """One host-side Firehose session. Not thread-safe; one per device.

    After configure: ``payload_to_target`` is the largest program chunk, ``payload_from_target``
    the device's read chunk, ``max_xml`` its document limit, and ``reconfigure`` the payload to
    send configure again with (None when the negotiation is done).
    """

    def __init__(self, max_payload: int = DEFAULT_PAYLOAD, max_document: int = MAX_DOCUMENT,
                 zlp_spelling: str = ZLP_SPELLINGS[0]) -> None:
        if not 0 < max_payload <= MAX_HOST_PAYLOAD or zlp_spelling not in ZLP_SPELLINGS:
            raise _misuse("max_payload or ZLP spelling out of range")
        self.max_payload = max_payload
        self.zlp_spelling = zlp_spelling
        self.state = HostState.IDLE
        self.tag: str | None = None  # the outstanding command
        self.payload_to_target = max_payload
        self.payload_from_target = max_payload
        self.max_xml = DEVICE_MAX_XML
        self.configured = False
        self.reconfigure: int | None = None
        self.memory_name: str | None = None
        self._sent_payload = 0
        self._splitter = XmlSplitter(max_document, "device")
        self._events: deque[HostEvent] = deque()
        self._logs: list[str] = []
        self._final: Response | None = None
        self._left = 0  # data-phase bytes still due
        self._raw_seen = False

    # -- receiving --------------------------------------------------------------------------
    def receive_data(self, data: Buffer) -> None:
        """Feed bytes read from the transport; an empty read (ZLP) is ignored."""
        self._splitter.feed(data)

    @breaks_for_good("Firehose", HostState.BROKEN)
    def next_event(self) -> HostEvent | NeedData:
        """The next event or NEED_DATA; ZflashError(PROTOCOL) on a violation."""
        while not self._events:
            if self.state is HostState.RECEIVING:
                data = self._splitter.raw(self._left)
                if not data:
                    return NEED_DATA
                self._left -= len(data)
                if not self._left:
                    self.state = HostState.WAITING
                return ReadData(data)
            doc = self._splitter.document()
            if doc is None:
                return NEED_DATA
            for element in parse_document(doc):
                self._on_element(element.tag, element.attrs)
        return self._events.popleft()

    def _on_element(self, tag: str, attrs: dict[str, str]) -> None:
        if tag == "log":
            text = attrs.get("value", "")
            if self.state is not HostState.IDLE:
                if len(self._logs) >= MAX_LOGS:
                    raise ZflashError(Code.PROTOCOL, f"Firehose: more than {MAX_LOGS} <log> "
                                                     f"lines for <{self.tag}>")
                self._logs.append(text)
            self._events.append(Log(text))
            return
        if tag != "response":
            return  # unknown elements are ignored, as qdl and edl do
        value = attrs.get("value", "").upper()
        if value not in ("ACK", "NAK", "TRUE", "FALSE"):
            raise ZflashError(Code.PROTOCOL, f"Firehose: response value {value!r}")
        ack = value in ("ACK", "TRUE")
        rawmode = attrs.get("rawmode", "false").lower() == "true"
        response = Response(ack, rawmode, dict(attrs))
        if self.state not in (HostState.WAITING, HostState.SENDING):
            raise ZflashError(Code.PROTOCOL, f"Firehose: a response while {self.state.value}")
        if rawmode:
            self._open_data_phase(response)
        else:
            if self.state is HostState.SENDING and ack:
                raise ZflashError(Code.PROTOCOL, f"Firehose: program ACK with {self._left} "
                                                 "bytes of data still unsent")
            if ack and self.tag in _RAW_COMMANDS and not self._raw_seen:
                raise ZflashError(Code.PROTOCOL, f"Firehose: {self.tag} ACK without a data "
                                                 "phase")
            self._final = response
            self.state = HostState.SETTLING
        self._events.append(response)

    def _open_data_phase(self, response: Response) -> None:
        if self.tag not in _RAW_COMMANDS or self._raw_seen or not response.ack \
                or self.state is not HostState.WAITING:
            raise ZflashError(Code.PROTOCOL, f"Firehose: rawmode response to {self.tag}")
        self._raw_seen = True
        self.state = HostState.SENDING if self.tag == "program" else HostState.RECEIVING
        self._splitter.drop_separator()

    def provisional(self) -> Result | None:
        """The Result as it stands while settling (late logs may still add to it), so a
        driver can settle at once when the answer it needs is already there."""
        if self.state is not HostState.SETTLING or self._final is None:
            return None
        return Result(self.tag or "", self._final.ack, dict(self._final.attrs),
                      tuple(self._logs))

    def settle(self) -> Result:
        """The command's Result, once QUIET_PERIOD passed after its final response."""
        if self.state is not HostState.SETTLING or self._final is None:
            raise _misuse(f"settle while {self.state.value}")
        final = self._final
        result = Result(self.tag or "", final.ack, final.attrs, tuple(self._logs))
        if self.tag == "configure":
            self._on_configure(result)
        self.state, self.tag, self._final, self._logs = HostState.IDLE, None, None, []
        return result

    def _on_configure(self, result: Result) -> None:
        """qdl's negotiation: NAK carries the payload to use, ACK the supported one."""
        attrs = result.attrs
        to_target = _positive(attrs, "MaxPayloadSizeToTargetInBytes")
        supported = _positive(attrs, "MaxPayloadSizeToTargetInBytesSupported")
        again = self.reconfigure is not None
        self.reconfigure = None
        if not result.ack:
            if to_target is None or to_target >= self._sent_payload or again:
                return  # not a payload NAK (or no progress): result.check() reports it
            chosen = to_target
        else:
            if to_target is None or supported is None:
                raise ZflashError(Code.PROTOCOL, "Firehose: configure ACK without "
                                                 "MaxPayloadSizeToTargetInBytes[Supported]")
            chosen = min(supported, self.max_payload)
            self.configured = True
        chosen = min(chosen, self.max_payload)
        if chosen != self._sent_payload:
            if again:
                raise ZflashError(Code.PROTOCOL, "Firehose: payload negotiation did not "
                                                 f"settle ({self._sent_payload} -> {chosen})")
            self.configured = False
            self.reconfigure = chosen
        self.payload_to_target = chosen
        from_target = _positive(attrs, "MaxPayloadSizeFromTargetInBytes")
        self.payload_from_target = min(from_target or chosen, MAX_HOST_PAYLOAD)
        max_xml = _positive(attrs, "MaxXMLSizeInBytes")
        self.max_xml = max(256, min(max_xml or DEVICE_MAX_XML, MAX_DOCUMENT))
        self.memory_name = attrs.get("MemoryName", self.memory_name)

    # -- sending ----------------------------------------------------------------------------
    def command(self, tag: str, attrs: dict[str, object] | None = None, *,
                data_bytes: int = 0) -> bytes:
        """Any command; ``data_bytes`` is the size of a program/read data phase."""
        if self.state is not HostState.IDLE:
            raise _misuse(f"a command while {self.state.value}")
        doc = encode_document(tag, attrs)
        if len(doc) > self.max_xml:
            raise _misuse(f"<{tag}> is {len(doc)} bytes, over MaxXMLSizeInBytes {self.max_xml}")
        self.tag, self.state, self._logs = tag, HostState.WAITING, []
        self._left = data_bytes
        self._raw_seen = False
        return doc

    def configure(self, memory_name: str = "ufs", payload: int | None = None, *,
                  skip_storage_init: bool = False, zlp_aware: bool = True,
                  **extra: object) -> bytes:
        """``<configure>`` asking for ``payload`` (default: the pending reconfigure value, else
        max_payload); the ZLP flag is spelled as chosen in the constructor."""
        size = payload or self.reconfigure or self.max_payload
        if not 0 < size <= self.max_payload:
            raise _misuse(f"configure payload {size}")
        self._sent_payload = size
        attrs: dict[str, object] = {"MemoryName": memory_name, "Verbose": 0,
                                    "AlwaysValidate": 0, "MaxDigestTableSizeInBytes": 2048,
                                    "MaxPayloadSizeToTargetInBytes": size,
                                    self.zlp_spelling: int(zlp_aware),
                                    "SkipStorageInit": int(skip_storage_init)}
        attrs.update(extra)
        return self.command("configure", attrs)

    def program(self, lun: int, start_sector: int | str, num_sectors: int, sector_size: int,
                **extra: object) -> bytes:
        """``<program>``; after its rawmode ACK, send exactly num_sectors x sector_size bytes
        through program_data (pad the last sector with zeros: ``pad_to_sector``)."""
        if num_sectors <= 0:
            raise _misuse("program of no sectors")
        return self.command("program", _range(lun, start_sector, num_sectors, sector_size,
                                              extra), data_bytes=num_sectors * sector_size)

    def program_data(self, chunk: Buffer) -> Buffer:
        """Account for one data-phase chunk (at most payload_to_target) and return it."""
        if self.state is not HostState.SENDING:
            raise _misuse(f"program data while {self.state.value}")
        if not 0 < len(chunk) <= min(self._left, self.payload_to_target):
            raise _misuse(f"chunk of {len(chunk)} bytes ({self._left} due, payload "
                          f"{self.payload_to_target})")
        self._left -= len(chunk)
        if not self._left:
            self.state = HostState.WAITING
        return chunk

    @property
    def data_left(self) -> int:
        """Bytes of the current data phase still due (either direction)."""
        return self._left

    def read(self, lun: int, start_sector: int | str, num_sectors: int, sector_size: int,
             **extra: object) -> bytes:
        """``<read>``; ReadData events bring num_sectors x sector_size bytes."""
        if num_sectors <= 0:
            raise _misuse("read of no sectors")
        return self.command("read", _range(lun, start_sector, num_sectors, sector_size, extra),
                            data_bytes=num_sectors * sector_size)

    def erase(self, lun: int, sector_size: int, start_sector: int | str | None = None,
              num_sectors: int | None = None, **extra: object) -> bytes:
        """``<erase>``; without a range the whole physical partition (LUN) is erased."""
        attrs: dict[str, object] = {"SECTOR_SIZE_IN_BYTES": sector_size,
                                    "physical_partition_number": lun}
        if (start_sector is None) != (num_sectors is None):
            raise _misuse("erase needs both start_sector and num_sectors, or neither")
        if num_sectors is not None:
            attrs.update(num_partition_sectors=num_sectors, start_sector=start_sector)
        attrs.update(extra)
        return self.command("erase", attrs)

    def patch(self, lun: int, sector_size: int, start_sector: int | str, byte_offset: int,
              size_in_bytes: int, value: int | str) -> bytes:
        """``<patch filename="DISK">``; ``value`` and ``start_sector`` may be expressions such
        as ``NUM_DISK_SECTORS-1.`` or ``CRC32(2,16384)``: the device evaluates them."""
        return self.command("patch", {
            "SECTOR_SIZE_IN_BYTES": sector_size, "byte_offset": byte_offset,
            "filename": "DISK", "physical_partition_number": lun,
            "size_in_bytes": size_in_bytes, "start_sector": start_sector, "value": value})

    def getsha256digest(self, lun: int, start_sector: int | str, num_sectors: int,
                        sector_size: int) -> bytes:
        """``<getsha256digest>``; ``Result.digest()`` extracts the SHA-256."""
        return self.command("getsha256digest",
                            _range(lun, start_sector, num_sectors, sector_size, {}))

    def getstorageinfo(self, lun: int = 0) -> bytes:
        """``<getstorageinfo>``; ``storage_info(result)`` parses the answer."""
        return self.command("getstorageinfo", {"physical_partition_number": lun})

    def nop(self) -> bytes:
        return self.command("nop")

    def power(self, value: str = "reset", delay: int | None = None) -> bytes:
        """``<power value="reset|off|edl">``."""
        if value not in ("reset", "off", "edl"):
            raise _misuse(f"power {value!r}")
        attrs: dict[str, object] = {"value": value}
        if delay is not None:
            attrs["DelayInSeconds"] = delay
        return self.command("power", attrs)

    def setbootablestoragedrive(self, value: int) -> bytes:
        """Tell the programmer which LUN / physical partition boots (the one with xbl)."""
        return self.command("setbootablestoragedrive", {"value": value})


def _range(lun: int, start: int | str, count: int, sector_size: int,
           extra: dict[str, object]) -> dict[str, object]:
    attrs: dict[str, object] = {"SECTOR_SIZE_IN_BYTES": sector_size,
                                "num_partition_sectors": count,
                                "physical_partition_number": lun, "start_sector": start}
    attrs.update(extra)
    return attrs


def storage_info(result: Result) -> dict[str, object]:
    """getstorageinfo's answer: the ``storage_info`` JSON object from a log line, plus any
    ``KEY=VALUE`` log lines; {} when the programmer said neither."""
    info: dict[str, object] = {}
    for log in result.logs:
        text = log.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text[:MAX_DOCUMENT])
            except ValueError:
                continue
            if isinstance(parsed, dict) and isinstance(parsed.get("storage_info"), dict):
                info.update(parsed["storage_info"])
        elif "=" in text and " " not in text.partition("=")[0]:
            key, _, value = text.partition("=")
            info.setdefault(key, value)
    return info


def pad_to_sector(data: Buffer, sector_size: int) -> bytes:
    """``data`` with zeros up to a whole number of sectors."""
    short = -len(data) % sector_size
    return bytes(data) + bytes(short) if short else bytes(data)
