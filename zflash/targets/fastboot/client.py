"""A fastboot host: drives the sans-IO engine over a Transport, with timeouts and streaming.

The engine (``zflash.protocol.fastboot``) decides what is valid; this module only moves
bytes and keeps time: 30 s for each answer, restarted by every INFO/TEXT line, as AOSP's
client does, but never past ``INFO_EXTENSIONS`` times that for one command (a device that
only ever says INFO has not answered). On top of single commands it does what the stock client does for a flash:
slot suffixes from ``has-slot``/``current-slot``, the download limit from
``max-download-size`` (or ``-S``), and splitting of large images into complete sparse
pieces (:func:`zflash.package.sparse.mapped.split_mapped` for a regular file: headers
planned in memory, data sent from a map of the file; ``split_sparse`` for anything else).
Memory stays bounded whatever the image size: data is streamed in fixed-size pieces.

Device URLs: ``fastboot+tcp://HOST[:PORT]`` (also the stock client's ``tcp:HOST[:PORT]``
and ``tcp://HOST:PORT``), and packet transports such as USB once ``open_transport`` offers
them (one read = one packet, the fastboot USB rule).
"""

from __future__ import annotations

import mmap
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from zflash.errors import Code, ZflashError
from zflash.package.pages import release_pages
from zflash.protocol.fastboot.constants import (DEFAULT_TCP_PORT, RESPONSE_TIMEOUT,
                                                TCP_HANDSHAKE_TIMEOUT)
from zflash.protocol.fastboot.events import (DataRequest, Fail, HostEvent, Info, Okay, Text,
                                             UploadData)
from zflash.protocol.fastboot.host import HostEngine, HostState
from zflash.protocol.fastboot.tcp import TcpFraming, encode_message, handshake, message_header
from zflash.protocol.fastboot.values import parse_bool, parse_size, parse_slot, parse_var_line
from zflash.transport import Transport, open_transport

EventSink = Callable[[dict[str, Any]], None]

DATA_PIECE = 4 << 20  # bytes read from the image and written per call
GATHER_BELOW = 64 << 10  # smaller views of a stream are gathered into one write
READ_SIZE = 1 << 20
FAIL_GRACE = 1.0  # after a failed write, how long to wait for the device's FAIL reason
BUSY_PREFIX = "device busy"  # the FAIL text of a device in another host's session
INFO_EXTENSIONS = 10  # INFO/TEXT restart the answer clock, up to this many timeouts in all


# ------------------------------------------------------------------------------ links
class PacketLink:
    """Fastboot packets over a packet transport (USB bulk: one read is one packet)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def send_packet(self, packet: bytes) -> None:
        self.transport.write(packet)

    def begin_data(self, size: int) -> None:
        """Nothing to announce on USB: the data phase is just bulk transfers."""

    def send_data(self, data: bytes | memoryview) -> None:
        self.transport.write(data)

    def receive(self, timeout: float, max_packet: int | None = None
                ) -> list[tuple[bytes | memoryview, bool]]:
        """Packets received within ``timeout``; a TCP message longer than ``max_packet``
        is refused on its length header (USB reads are bounded by READ_SIZE already)."""
        return [(self.transport.read(READ_SIZE, timeout), True)]


class TcpLink(PacketLink):
    """Fastboot over TCP: FB01 handshake, then every packet is a length-prefixed message."""

    def __init__(self, transport: Transport, handshake_timeout: float = TCP_HANDSHAKE_TIMEOUT
                 ) -> None:
        super().__init__(transport)
        self.framing = TcpFraming()
        self._early: list[tuple[bytes | memoryview, bool]] = []
        transport.write(handshake())
        deadline = time.monotonic() + handshake_timeout
        while not self.framing.handshake_done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ZflashError(Code.TIMEOUT, "no fastboot-TCP handshake (FB01) from the "
                                                f"device within {handshake_timeout:g} s")
            try:
                data = transport.read(4, left)
            except ZflashError as exc:
                if exc.code == Code.TIMEOUT:
                    continue
                raise
            self._early += self.framing.receive(data)

    def send_packet(self, packet: bytes) -> None:
        self.transport.write(encode_message(packet))

    def begin_data(self, size: int) -> None:
        """The whole download is one message, as the stock client sends it."""
        self.transport.write(message_header(size))

    def receive(self, timeout: float, max_packet: int | None = None
                ) -> list[tuple[bytes | memoryview, bool]]:
        if self._early:
            early, self._early = self._early, []
            return early
        self.framing.max_message = max_packet
        return self.framing.receive(self.transport.read(READ_SIZE, timeout))


def open_link(url: str, timeout: float = 5.0,
              handshake_timeout: float = TCP_HANDSHAKE_TIMEOUT) -> PacketLink:
    """Open the device named by ``url`` and wrap it in the fastboot link it needs."""
    url = normalize_url(url)
    if not url.startswith(("fastboot+tcp://", "usb://")):
        raise ZflashError(Code.BAD_DEVICE_URL, f"{url!r}: fastboot runs over TCP "
                                               "(fastboot+tcp://HOST[:PORT]) or USB (usb://)")
    transport = open_transport(url, timeout)
    try:
        if transport.is_stream:
            return TcpLink(transport, handshake_timeout)
        return PacketLink(transport)
    except BaseException:
        transport.close()
        raise


def normalize_url(url: str) -> str:
    """Accept the stock client's ``tcp:HOST[:PORT]`` and plain ``tcp://``; fastboot over TCP
    always uses the FB01 framing, so both mean ``fastboot+tcp://``."""
    text = url.strip()
    if text.startswith("tcp:") and not text.startswith("tcp://"):
        text = "fastboot+tcp://" + text[4:]
    elif text.startswith("tcp://"):
        text = "fastboot+" + text
    elif text.startswith("udp:"):
        raise ZflashError(Code.BAD_DEVICE_URL, f"{url!r}: fastboot over UDP is not supported; "
                                               f"use fastboot+tcp://HOST:{DEFAULT_TCP_PORT}")
    return text


# ------------------------------------------------------------------------------ client
class FastbootClient:
    """One fastboot device. Methods raise only ZflashError; a FAIL is DEVICE_REFUSED.

    ``timeout`` bounds the wait for each answer (restarted by INFO/TEXT). ``on_event``
    receives dicts such as ``{"event": "info", "message": ...}`` and ``{"event":
    "progress", "sent": n, "total": m}``; the CLI renders them.
    """

    def __init__(self, link: PacketLink, timeout: float = RESPONSE_TIMEOUT,
                 on_event: EventSink | None = None) -> None:
        self.link = link
        self.timeout = timeout
        self.engine = HostEngine()
        self.on_event: EventSink = on_event or (lambda event: None)
        self._events: deque[HostEvent] = deque()
        self._vars: dict[str, str | None] = {}

    @classmethod
    def connect(cls, url: str, timeout: float = RESPONSE_TIMEOUT,
                on_event: EventSink | None = None, open_timeout: float = 5.0
                ) -> "FastbootClient":
        link = open_link(url, open_timeout, min(TCP_HANDSHAKE_TIMEOUT, timeout))
        return cls(link, timeout, on_event)

    def close(self) -> None:
        self.link.transport.close()

    def __enter__(self) -> "FastbootClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- one command
    def command(self, text: str) -> str:
        """Send one command; the OKAY message, or DEVICE_REFUSED carrying the FAIL text."""
        return self._expect_okay(text, self._run(text))

    def _run(self, text: str) -> HostEvent:
        self.link.send_packet(self.engine.send_command(text))
        return self._final(text)

    def _expect_okay(self, text: str, event: HostEvent) -> str:
        if isinstance(event, Fail):
            raise ZflashError(Code.DEVICE_REFUSED, f"{text[:64]}: {event.message or 'FAIL'}")
        if not isinstance(event, Okay):
            raise ZflashError(Code.PROTOCOL, f"{text[:64]}: unexpected {event!r}")
        return event.message

    def _final(self, what: str) -> HostEvent:
        """Wait for OKAY/FAIL/DATA; INFO and TEXT are reported and restart the clock, within
        an overall bound of ``INFO_EXTENSIONS`` timeouts for the command."""
        start = time.monotonic()
        limit = start + self.timeout * INFO_EXTENSIONS
        deadline = start + self.timeout
        while True:
            event = self._next_event(what, deadline, limit)
            if isinstance(event, (Info, Text)):
                kind = "info" if isinstance(event, Info) else "text"
                self.on_event({"event": kind, "message": event.message})
                deadline = min(time.monotonic() + self.timeout, limit)
                continue
            return event

    def _next_event(self, what: str, deadline: float, limit: float | None = None) -> HostEvent:
        while not self._events:
            left = deadline - time.monotonic()
            if left <= 0:
                self.engine.state = HostState.BROKEN
                if limit is not None and deadline >= limit:
                    raise ZflashError(Code.TIMEOUT, f"no answer to {what[:64]!r} within "
                                      f"{self.timeout * INFO_EXTENSIONS:g} s "
                                      "(the device only sent INFO/TEXT lines)")
                raise ZflashError(Code.TIMEOUT, f"no answer to {what[:64]!r} within "
                                                f"{self.timeout:g} s")
            try:
                fragments = self.link.receive(left, self.engine.max_packet)
            except ZflashError as exc:
                if exc.code == Code.TIMEOUT:
                    continue
                raise ZflashError(exc.code, f"waiting for {what[:64]!r}: {exc.detail}") from None
            for data, end in fragments:
                self._events.extend(self.engine.receive(data, end))
        return self._events.popleft()

    # --------------------------------------------------------------- variables
    def getvar(self, name: str, cached: bool = False) -> str | None:
        """A variable's value; None when the device does not know it (FAIL or empty OKAY)."""
        if cached and name in self._vars:
            return self._vars[name]
        event = self._run(f"getvar:{name}")
        value = event.message.strip() if isinstance(event, Okay) else None
        if isinstance(event, Fail) and event.message.startswith(BUSY_PREFIX):
            # not "unknown variable": the device is talking to another host (zflash's
            # emulator says so; a fact read as unknown would turn into a wrong check)
            raise ZflashError(Code.DEVICE_REFUSED, f"getvar:{name}: {event.message}")
        if not isinstance(event, (Okay, Fail)):
            raise ZflashError(Code.PROTOCOL, f"getvar:{name}: unexpected {event!r}")
        self._vars[name] = value or None
        return value or None

    def getvar_all(self) -> dict[str, str]:
        """``getvar all``: every INFO line that reads as ``name: value``."""
        lines: list[str] = []
        previous = self.on_event

        def collect(event: dict[str, Any]) -> None:
            if event.get("event") == "info":
                lines.append(str(event["message"]))
            previous(event)

        self.on_event = collect
        try:
            self.command("getvar:all")
        finally:
            self.on_event = previous
        result: dict[str, str] = {}
        for line in lines:
            parsed = parse_var_line(line)
            if parsed:
                result[parsed[0]] = parsed[1]
        return result

    def max_download_size(self) -> int | None:
        value = self.getvar("max-download-size", cached=True)
        return parse_size(value, "max-download-size") if value else None

    def partition_size(self, partition: str) -> int | None:
        value = self.getvar(f"partition-size:{partition}", cached=True)
        return parse_size(value, f"partition-size:{partition}") if value else None

    def slot_count(self) -> int:
        value = self.getvar("slot-count", cached=True)
        try:
            return parse_size(value, "slot-count") if value else 0
        except ZflashError:
            return 0  # a device that garbles this has no usable slots

    def current_slot(self) -> str | None:
        value = self.getvar("current-slot")
        return parse_slot(value) if value else None

    def has_slot(self, partition: str) -> bool:
        return parse_bool(self.getvar(f"has-slot:{partition}", cached=True) or "") is True

    # --------------------------------------------------------------- slots
    def slots(self) -> list[str]:
        return [chr(ord("a") + i) for i in range(min(self.slot_count(), 26))]

    def resolve_slot(self, slot: str | None) -> str | None:
        """``a``/``_a``/``b``/``other`` -> a slot letter the device has (``all`` is not one)."""
        if slot is None or slot == "":
            return None
        slots = self.slots()
        if not slots:
            raise ZflashError(Code.SLOT, f"--slot {slot}: the device reports no slots")
        if slot == "other":
            current = self.current_slot()
            if current not in slots:
                raise ZflashError(Code.SLOT, f"cannot tell the other slot: current slot is "
                                             f"{current!r}")
            return slots[(slots.index(current) + 1) % len(slots)]
        letter = parse_slot(slot)
        if letter not in slots:
            raise ZflashError(Code.SLOT, f"no slot {slot!r}; the device has "
                                         f"{', '.join(slots)}")
        return letter

    def partition_names(self, partition: str, slot: str | None) -> list[str]:
        """What ``flash PART`` writes, as the stock client decides: PART_x for slotted
        partitions (the current slot unless ``slot`` says otherwise; ``all`` = every slot),
        PART as is otherwise."""
        if not self.has_slot(partition):
            if slot:
                self.on_event({"event": "warning", "message": f"{partition} has no slots; "
                               f"--slot {slot} ignored"})
            return [partition]
        if slot == "all":
            return [f"{partition}_{s}" for s in self.slots()]
        letter = self.resolve_slot(slot) or self.current_slot()
        if letter is None:
            raise ZflashError(Code.SLOT, f"{partition} has slots but the device reports no "
                                         "current slot; pass --slot")
        return [f"{partition}_{letter}"]

    # --------------------------------------------------------------- data
    def download(self, source: BinaryIO, size: int, what: str = "") -> None:
        """``download:`` + the data phase, streamed from ``source`` (``size`` bytes)."""
        self._expect_data(self._start_download(size), size)
        self._send_stream(source, size, what)
        self._expect_okay(f"download of {size} bytes", self._final("download"))

    def _start_download(self, size: int) -> HostEvent:
        self.link.send_packet(self.engine.send_download(size))
        return self._final("download")

    def _expect_data(self, event: HostEvent, size: int) -> None:
        if isinstance(event, Fail):
            raise ZflashError(Code.DEVICE_REFUSED, f"download of {size} bytes: "
                                                   f"{event.message or 'FAIL'}")
        if not isinstance(event, DataRequest):
            raise ZflashError(Code.PROTOCOL, f"device answered download with {event!r}")

    def _send_stream(self, source: BinaryIO, size: int, what: str) -> None:
        """The data phase. A progress event each DATA_PIECE and at the end, not per write:
        a package's stream writes each 64 KiB block on its own, and an event per block
        (through the pipeline's progress and its event stamps) was ~9% of the host's CPU
        on a compressed image (D192)."""
        sent = 0
        try:
            self.link.begin_data(size)
            for piece in _pieces(source, size, what):
                self.link.send_data(self.engine.send_data(piece))
                before, sent = sent, sent + len(piece)
                if sent // DATA_PIECE != before // DATA_PIECE or sent == size:
                    self.on_event({"event": "progress", "what": what, "sent": sent,
                                   "total": size})
        except ZflashError as exc:
            if exc.code in (Code.LINK_LOST, Code.TIMEOUT):
                self._raise_device_reason(exc)
            raise

    def _raise_device_reason(self, exc: ZflashError) -> None:
        """A write failed mid data phase: a device that said FAIL first deserves the credit."""
        try:
            for data, end in self.link.receive(FAIL_GRACE, self.engine.max_packet):
                for event in self.engine.receive(data, end):
                    if isinstance(event, Fail):
                        raise ZflashError(Code.DEVICE_REFUSED, f"device stopped the download: "
                                                               f"{event.message or 'FAIL'}")
        except ZflashError as inner:
            if inner.code == Code.DEVICE_REFUSED:
                raise inner from None
        raise exc

    def upload(self, out: BinaryIO) -> int:
        """``upload``: the device's staged data into ``out``; returns the byte count.

        What a device stages came through a download, so an upload larger than its own
        ``max-download-size`` is refused before a byte is written (when it reports one).
        """
        limit = self.max_download_size()
        event = self._run("upload")
        if isinstance(event, Fail):
            raise ZflashError(Code.DEVICE_REFUSED, f"upload: {event.message or 'FAIL'}")
        if not isinstance(event, DataRequest):
            raise ZflashError(Code.PROTOCOL, f"device answered upload with {event!r}")
        if limit is not None and event.size > limit:
            self.engine.state = HostState.BROKEN
            raise ZflashError(Code.PROTOCOL, f"device offers an upload of {event.size} bytes, "
                                             f"more than its max-download-size ({limit})")
        received = 0
        while received < event.size:
            item = self._next_event("upload data", time.monotonic() + self.timeout)
            if isinstance(item, UploadData):
                out.write(item.data)
                received += len(item.data)
            else:
                raise ZflashError(Code.PROTOCOL, f"device sent {item!r} inside upload data")
        self._expect_okay("upload", self._final("upload"))
        return received

    # --------------------------------------------------------------- flashing
    def flash_image(self, partition: str, path: str | os.PathLike[str],
                    size_limit: int | None = None) -> int:
        """Flash one image into one (already slot-suffixed) partition; returns pieces sent.

        An image within the limit goes as it is (raw or sparse); a larger one is split into
        complete sparse pieces, each ``download`` + ``flash``. Checked against
        ``partition-size`` first when the device reports it (9023 before any write).
        """
        # imported here: getvar, erase, reboot... (most commands) never read an image
        from zflash.package.sparse import validate_sparse_file
        path = Path(path)
        size, expanded, sparse = image_sizes(path)
        if sparse:  # the whole image is checked before a byte is sent (9005)
            validate_sparse_file(path)
        capacity = self.partition_size(partition)
        if capacity is not None and expanded > capacity:
            raise ZflashError(Code.IMAGE_TOO_LARGE, f"{path.name} expands to {expanded} bytes; "
                                            f"{partition} holds {capacity}")
        limit = size_limit or self.max_download_size()
        self.on_event({"event": "partition", "partition": partition, "image": str(path),
                       "bytes": size, "sparse": sparse})
        if limit is None or size <= limit:
            with _open(path) as source:
                self.download(source, size, partition)
            self.command(f"flash:{partition}")
            return 1
        count = 0
        for piece in _split(path, limit):
            self.on_event({"event": "piece", "partition": partition, "index": piece.index,
                           "bytes": piece.size})
            self.download(piece.file, piece.size, f"{partition} piece {piece.index + 1}")
            self.command(f"flash:{partition}")
            count += 1
        return count

    def flash(self, partition: str, path: str | os.PathLike[str], slot: str | None = None,
              size_limit: int | None = None) -> list[str]:
        """``fastboot flash PART FILE`` with the stock client's slot rules; returns names."""
        names = self.partition_names(partition, slot)
        for name in names:
            self.flash_image(name, path, size_limit)
        return names

    def erase(self, partition: str, slot: str | None = None) -> list[str]:
        names = self.partition_names(partition, slot)
        for name in names:
            self.command(f"erase:{name}")
        return names

    def set_active(self, slot: str) -> str:
        letter = self.resolve_slot(slot)
        if letter is None:
            raise ZflashError(Code.SLOT, "set_active needs a slot")
        self.command(f"set_active:{letter}")
        return letter

    def reboot(self, target: str = "") -> None:
        """``reboot``, or ``reboot-bootloader``/``-fastboot``/``-recovery``."""
        if target not in ("", "bootloader", "fastboot", "recovery"):
            raise ZflashError(Code.USAGE, f"cannot reboot into {target!r}; use bootloader, "
                                          "fastboot or recovery")
        self.command(f"reboot-{target}" if target else "reboot")

    def oem(self, args: str) -> str:
        return self.command(f"oem {args}")


def _pieces(source: BinaryIO, size: int, what: str) -> Iterator[memoryview]:
    """``size`` bytes of ``source`` in DATA_PIECE views: straight from a memory map when
    the source is a regular file (no copy in user space, as the stock client does), else
    through one reused buffer."""
    views = getattr(source, "views", None)
    if callable(views):
        yield from _gathered(views(), size, what)
        return
    mapped = _map(source, size)
    if mapped is not None:
        try:
            with memoryview(mapped) as view:
                for start in range(0, size, DATA_PIECE):
                    with view[start:start + DATA_PIECE] as piece:  # released before unmapping
                        yield piece
                    release_pages(mapped, start, start + DATA_PIECE)  # sent: RSS stays flat
        finally:
            try:
                mapped.close()
            except BufferError:
                pass  # a traceback still holds a view of it; the unmap happens with the GC
        source.seek(size, os.SEEK_CUR)
        return
    buf = bytearray(min(DATA_PIECE, size))
    view = memoryview(buf)
    done = 0
    while done < size:
        n = source.readinto(view[:min(len(buf), size - done)])  # type: ignore[attr-defined]
        if not n:
            raise ZflashError(Code.FILE_UNREADABLE, f"{what or 'image'} ended after {done} "
                                                    f"of {size} bytes")
        done += n
        yield view[:n]


def _gathered(views: Iterator[bytes | memoryview], size: int, what: str
              ) -> Iterator[bytes | memoryview]:
    """A stream's own views (zflash.targets.fastboot.stream), sent as they are: large ones
    in DATA_PIECE slices, small ones (sparse headers) gathered into one write."""
    small = bytearray()
    done = 0
    for view in views:
        done += len(view)
        if len(view) < GATHER_BELOW:
            small += view
            if len(small) < DATA_PIECE:
                continue
            view = small
            small = bytearray()
        elif small:
            yield small
            small = bytearray()
        with memoryview(view) as whole:
            for start in range(0, len(whole), DATA_PIECE):
                yield whole[start:start + DATA_PIECE]
    if small:
        yield small
    if done != size:
        raise ZflashError(Code.INTERNAL, f"{what or 'image'}: {done} bytes made for a "
                                         f"download of {size}")


def _map(source: BinaryIO, size: int) -> mmap.mmap | None:
    """A read-only map of the next ``size`` bytes, if the source is a file that holds them."""
    try:
        offset = source.tell()
        fd = source.fileno()
        if offset % mmap.ALLOCATIONGRANULARITY or os.fstat(fd).st_size < offset + size:
            return None
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ, offset=offset)
    except (AttributeError, OSError, ValueError):
        return None  # a pipe, an in-memory file, a spooled piece: use the buffer


def _split(path: Path, limit: int) -> Iterator[Any]:
    """The image's sparse pieces: planned over a map of a regular file (no copy, no temp
    file, D208), else written by the streaming splitter (a pipe, a device node, a file
    system that cannot map files)."""
    if path.is_file():
        from zflash.package.sparse.mapped import split_mapped
        try:
            return split_mapped(path, limit)
        except OSError:
            pass  # cannot be mapped: streamed, as from a pipe
    from zflash.package.sparse import split_sparse
    return split_sparse(path, limit)


def image_sizes(path: Path) -> tuple[int, int, bool]:
    """(file size, size once expanded, is sparse); a malformed sparse header is 9005."""
    from zflash.package.sparse import SparseReader, is_sparse  # only a flash reads an image
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(4)
            if not is_sparse(head):
                return size, size, False
            handle.seek(0)
            return size, SparseReader(handle).total_size, True
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None

