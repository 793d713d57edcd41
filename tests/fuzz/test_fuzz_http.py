"""Fuzz the HTTP response head handling of `zflash fetch`: framing and range headers."""

from __future__ import annotations

import http.client
import io

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, coded_or_ok
from zflash.errors import Code
from zflash.fetch.client import body_length, parse_content_range, parse_unsatisfied_range

NAMES = st.sampled_from(["Content-Length", "content-length", "Transfer-Encoding",
                         "Content-Range", "ETag", "X"]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), max_size=12)
VALUES = st.sampled_from(["0", "10", " 10 ", "10, 10", "-1", "+5", "1e3", "0x10", "٣",
                          "99999999999999999999", "bytes 0-9/10", "bytes */10", "chunked",
                          ""]) | st.text(max_size=40)


def head_bytes(lines: list[tuple[str, str]]) -> bytes:
    text = "".join(f"{name}: {value}\r\n" for name, value in lines) + "\r\n"
    return text.encode("utf-8", "surrogateescape")


def read_head(raw: bytes) -> int | None:
    """What Exchange does with a response head: http.client parses, zflash decides."""
    try:
        headers = http.client.parse_headers(io.BytesIO(raw))
    except http.client.HTTPException:
        return None  # Exchange maps these (TRANSFER_ERRORS) to 9054
    length = body_length(headers, "https://server/x")
    first = parse_content_range(headers.get("Content-Range"))
    total = parse_unsatisfied_range(headers.get("Content-Range"))
    if first is not None:
        assert 0 <= first.first <= first.last and (first.total is None or first.last < first.total)
    assert total is None or total >= 0
    assert length is None or length >= 0
    return length


@FUZZ
@given(st.lists(st.tuples(NAMES, VALUES), max_size=8))
def test_response_heads(lines: list[tuple[str, str]]) -> None:
    coded_or_ok(lambda: read_head(head_bytes(lines)), allowed={Code.DOWNLOAD})


@FUZZ
@given(st.binary(max_size=2048))
def test_raw_head_bytes(raw: bytes) -> None:
    coded_or_ok(lambda: read_head(raw + b"\r\n\r\n"), allowed={Code.DOWNLOAD})


@FUZZ
@given(VALUES)
def test_range_values(value: str) -> None:
    coded_or_ok(lambda: (parse_content_range(value), parse_unsatisfied_range(value)),
                allowed=set())
