"""ZDL decoding bounds sizes before building objects, and maps device error codes.

Before: a FACTS reply with 10^6 partitions was refused only after json.loads had built it
(3.2 s, +282 MiB peak RSS); a chunked one was first reassembled whole (up to 80 MiB); facts
with 2**64-1 sizes or terminal escape codes were accepted; an ERROR with code 9000, 9001 or
9999 reached the user as 9001 "internal error in zflash".
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from test_zdl_protocol import FACTS, _connect
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.protocol.zdl import (BeginUpdate, BlockRejected, Error, Facts, Identify, KeepBlocks,
                                 Kept, UpdateReady, decode_message)
from zflash.protocol.zdl import wirejson
from zflash.protocol.zdl.chunks import Assembler
from zflash.protocol.zdl.constants import CHUNK_HEADER, FLAG_CHUNK, HEADER, MsgType
from zflash.protocol.zdl.frames import encode_frame_parts
from zflash.protocol.zdl.messages import max_payload


def facts_json(**changes: Any) -> dict[str, Any]:
    obj = json.loads(json.dumps(FACTS.to_dict()))
    obj.update(changes)
    return obj


def refused(msg_type: int, payload: bytes) -> ZflashError:
    with pytest.raises(ZflashError) as err:
        decode_message(msg_type, memoryview(payload))
    assert err.value.code == Code.PROTOCOL
    return err.value


def test_huge_facts_is_refused_before_parsing(monkeypatch) -> None:
    parts = [{"name": f"p{i}", "size": 4096, "slotted": True} for i in range(200_000)]
    payload = json.dumps(facts_json(partitions=parts)).encode()

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("json.loads must not run on an oversized payload")

    monkeypatch.setattr(wirejson.json, "loads", no_parse)
    assert "more than" in refused(MsgType.FACTS, payload).detail


def test_element_count_is_bounded_before_parsing(monkeypatch) -> None:
    """Small in bytes, huge in elements: [[],[],...] fits 64 KiB but has 20k elements."""
    payload = b'{"info":[' + b",".join([b"[]"] * 20_000) + b"]}"
    assert len(payload) <= wirejson.MAX_JSON
    monkeypatch.setattr(wirejson.json, "loads", lambda *a, **k: pytest.fail("parsed"))
    assert "elements" in refused(MsgType.OK, payload).detail


def test_eighty_mib_string_is_refused_by_size() -> None:
    payload = json.dumps(facts_json(serial="x" * (1 << 20))).encode()
    refused(MsgType.FACTS, payload)


@pytest.mark.parametrize("changes", [
    {"flash_size": 2**64 - 1}, {"cache_free": 2**63},
    {"serial": "\x1b[2J\x1b]0;owned\x07"}, {"product": "zx\ndemo"},
    {"partitions": [{"name": "boot\r", "size": 1, "slotted": True}]},
])
def test_absurd_facts_are_protocol_errors(changes: dict[str, Any]) -> None:
    refused(MsgType.FACTS, json.dumps(facts_json(**changes)).encode())


def test_real_facts_still_decode() -> None:
    assert decode_message(MsgType.FACTS, memoryview(Facts(FACTS).payload())) == Facts(FACTS)
    big = DeviceFacts.from_dict(facts_json(partitions=[
        {"name": "p" * 256, "size": 1, "slotted": False}] * 1024))
    assert decode_message(MsgType.FACTS, memoryview(Facts(big).payload())).facts == big


def test_ranges_messages_keep_room_for_their_ranges() -> None:
    ranges = tuple((i * 2, 1) for i in range(100_000))
    for message in (KeepBlocks(3, ranges), Kept(3, ranges), UpdateReady("ab", "b", {0: ranges})):
        assert decode_message(message.TYPE, memoryview(message.payload())) == message


def test_assembler_refuses_a_chunked_message_larger_than_its_type() -> None:
    assembler = Assembler("FACTS", False, 4096, max_payload(MsgType.FACTS))
    first = CHUNK_HEADER.pack(50 << 20, 0) + b"{" * 100
    with pytest.raises(ZflashError) as err:
        assembler.add(memoryview(first))
    assert err.value.code == Code.PROTOCOL and "more than" in err.value.detail


def test_host_refuses_a_chunked_facts_on_its_first_piece() -> None:
    wire = _connect()
    host = wire.host
    (frame,) = host.send(Identify())
    seq = HEADER.unpack(frame[2:12])[2]
    piece = CHUNK_HEADER.pack(50 << 20, 0) + b" " * 1000
    host.receive_data(encode_frame_parts(MsgType.FACTS, seq, (piece,), FLAG_CHUNK))
    with pytest.raises(ZflashError) as err:
        host.next_event()
    assert err.value.code == Code.PROTOCOL and "FACTS" in err.value.detail


# --- device error codes -------------------------------------------------------------------------

@pytest.mark.parametrize("code", [9000, 9001, 9002, 9003, 9050, 9999])
def test_reserved_or_unknown_device_code_is_a_protocol_error_naming_it(code: int) -> None:
    exc = Error(code, "boom").to_exception()
    assert exc.code == Code.PROTOCOL
    assert str(code) in exc.detail and "boom" in exc.detail


@pytest.mark.parametrize("code", [Code.SIGNATURE, Code.ROLLBACK, Code.STORAGE, Code.SLOT,
                                  Code.COMPATIBILITY, Code.DEVICE_REFUSED])
def test_device_codes_pass_through(code: int) -> None:
    exc = Error(code, "why").to_exception()
    assert exc.code == code and exc.detail == "device: why"


def test_end_to_end_error_9001_from_the_device_is_reported_as_protocol() -> None:
    wire = _connect()
    host = wire.host
    (frame,) = host.send(BeginUpdate(b"head"))
    seq = HEADER.unpack(frame[2:12])[2]
    answer = Error(9001, "device crashed")
    host.receive_data(encode_frame_parts(answer.TYPE, seq, answer.parts()))
    event = host.next_event()
    assert isinstance(event, Error)
    assert event.to_exception().code == Code.PROTOCOL


def test_rejected_block_with_a_reserved_code_names_it() -> None:
    wire = _connect()
    wire.send(wire.host.send(BeginUpdate(b"head")))
    wire.run_until(lambda: not wire.host.request_pending)
    original = wire.fake.dev.reject_block

    def reject(block: Any, code: int, why: str) -> list[bytes]:
        return original(block, 9999, why)

    wire.fake.dev.reject_block = reject  # type: ignore[method-assign]
    wire.fake.reject.add((0, 1))
    wire.write_blocks([(0, i, bytes(4096)) for i in range(3)])
    (event,) = [e for e in wire.events if isinstance(e, BlockRejected)]
    assert event.code == Code.PROTOCOL and "9999" in event.message
