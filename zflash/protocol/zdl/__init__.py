"""ZDL, the zflash download protocol, version 1 (spec: protocols/zdl.md), as sans-IO engines.

Two state machines in the style of h11: bytes in, events out, bytes to send. Neither does I/O,
starts threads, sleeps or reads a clock; timing belongs to the caller, which tells the engine
when a timer expired (``HostEngine.timeout``, ``HostEngine.baud_switch_failed``,
``DeviceEngine.ping_timeout``). Every method that produces output returns ``list[bytes]``,
one complete frame per item: a byte-stream transport writes them back to back, a USB transport
sends each as one bulk transfer (plus a ZLP when its length is a multiple of wMaxPacketSize).
Malformed input from the peer raises only ``ZflashError`` (``Code.PROTOCOL``, or
``Code.UNSUPPORTED_PROTOCOL`` for a version mismatch); garbage on the line is skipped and
counted in ``engine.stats``. Misuse of the API by the caller raises ``ZflashError(INTERNAL)``.

Host (the flasher)::

    host = HostEngine(max_data=256 << 10, window=32)
    send(host.hello(baud=None))                  # -> SessionStarted(session); if session.baud:
                                                 #  switch rate, send(host.ping()) -> BaudSwitched,
                                                 #  or no PONG in time: host.baud_switch_failed()
    send(host.send(Identify()))                  # -> Facts(facts)
    send(host.send(BeginUpdate(head)))           # -> UpdateReady(session, slot, have) | Error
    while blocks or not host.idle:               # windowed writes, many frames in flight
        while blocks and host.can_send_block():
            send(host.send_block(part_idx, block_idx, CODEC_ZLIB, data))
        data = recv_or_none(rto)                 # caller's timer
        if data is None: send(host.timeout()); continue
        host.receive_data(data)
        while (ev := host.next_event()) is not NEED_DATA:
            handle(ev)                           # BlockRejected, Retransmitted, answers ...
        send(host.data_to_send())                # NAK-driven retransmissions, window refills
    send(host.send(CommitPartition(part_idx)))   # -> Ok | Error

Host events: ``SessionStarted``, ``BaudSwitched``, ``Pong``, the answers ``Facts``,
``UpdateReady``, ``Hashes``, ``Kept``, ``Ok``, ``Error`` (``.to_exception()``), read results
``Data`` (in order, contiguous) then ``ReadDone`` (``.ok``; else READ again from
``offset + received``), and ``BlockRejected``, ``Retransmitted``. One request may be
outstanding at a time (``request_pending``); blocks may flow around it. ``blocks_acked``,
``bytes_acked`` and ``in_flight`` report window progress.

Device (the emulator or firmware)::

    dev = DeviceEngine(max_data=1 << 20, window=64, bauds=(921600,))
    while True:
        for ev in dev.receive_data(read_some()):
            if isinstance(ev, SwitchBaud): write(dev.data_to_send()); drain(); set_baud(ev.baud)
            elif isinstance(ev, WriteBlock): store(ev) or write(dev.reject_block(ev, 9012, "hash"))
            elif isinstance(ev, Identify): write(dev.respond(Facts(facts)))
            elif isinstance(ev, Read): for piece: write(dev.respond(Data(off, piece)));
                                       write(dev.respond(Done(length, sha256_hex)))
            ...                                  # every request gets exactly one answer
        write(dev.data_to_send())                # ACK / NAK / PONG / WELCOME / re-sent answers

Device events: ``SessionStarted``, ``SwitchBaud`` (then ``ping_timeout()`` when the 1 s timer
expires: True means switch back), the requests ``Identify``, ``BeginUpdate``, ``BlockHashes``,
``KeepBlocks``, ``CommitPartition``, ``SetActive``, ``Reboot``, ``Read``, ``Erase``, and
``WriteBlock`` (each block exactly once, in order; ``data`` is a memoryview, inflate it with
``codecs.decode_block``). ``keepalive()`` during long work.
"""

from typing import TYPE_CHECKING

from zflash import lazy_getattr
from zflash.protocol.zdl.codecs import compress, decode_block, local_codecs
from zflash.protocol.zdl.constants import (
    CODEC_NONE, CODEC_ZLIB, CODEC_ZSTD, DEFAULT_MAX_DATA, DEFAULT_WINDOW, MAX_MAX_DATA,
    MAX_WINDOW, VERSION,
    MsgType,
)
from zflash.protocol.zdl.events import (
    NEED_DATA, BaudSwitched, BlockRejected, NeedData, ReadDone, Retransmitted, Session,
    SessionStarted, SwitchBaud,
)
from zflash.protocol.zdl.frames import Damage, Frame, FrameDecoder, encode_frame
from zflash.protocol.zdl.host import HostEngine, HostState
from zflash.protocol.zdl.messages import (
    BeginUpdate, BlockHashes, CommitPartition, Data, Done, Erase, Error, Facts, Hashes, Hello,
    Identify, KeepBlocks, Kept, Message, Ok, Ping, Pong, Read, Reboot, SetActive, UpdateReady,
    Welcome, WriteBlock, decode_message,
)
from zflash.protocol.zdl.stats import LinkStats

if TYPE_CHECKING:
    from zflash.protocol.zdl.device import DeviceEngine, DeviceState

#: names imported on first use: a host (every `zflash flash`) never loads the device engine
__getattr__ = lazy_getattr(__name__, dict.fromkeys(("DeviceEngine", "DeviceState"),
                                                   "zflash.protocol.zdl.device"))

__all__ = [
    "CODEC_NONE", "CODEC_ZLIB", "CODEC_ZSTD", "DEFAULT_MAX_DATA", "DEFAULT_WINDOW", "MAX_MAX_DATA",
    "MAX_WINDOW", "NEED_DATA", "VERSION", "BaudSwitched", "BeginUpdate", "BlockHashes",
    "BlockRejected", "CommitPartition", "Damage", "Data", "DeviceEngine", "DeviceState",
    "Done", "Erase", "Error", "Facts", "Frame", "FrameDecoder", "Hashes", "Hello",
    "HostEngine", "HostState", "Identify", "KeepBlocks", "Kept", "LinkStats", "Message",
    "MsgType", "NeedData", "Ok", "Ping", "Pong", "Read", "ReadDone", "Reboot", "Retransmitted",
    "Session", "SessionStarted", "SetActive", "SwitchBaud", "UpdateReady", "Welcome",
    "WriteBlock", "compress", "decode_block", "decode_message", "encode_frame", "local_codecs",
]
