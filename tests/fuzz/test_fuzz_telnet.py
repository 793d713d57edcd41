"""Fuzz the RFC 2217 client's telnet codec with whatever a serial server might send."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, coded_or_ok
from zflash.errors import Code
from zflash.transport.telnet import TelnetCodec

#: Telnet-heavy input: IAC, the verbs and SB/SE are far more likely than in uniform bytes.
TELNET_BYTES = st.lists(st.sampled_from([255, 254, 253, 252, 251, 250, 240, 44, 0, 1, 3, 101])
                        | st.integers(0, 255), max_size=400).map(bytes)


@FUZZ
@given(st.lists(TELNET_BYTES | st.binary(max_size=300), max_size=8))
def test_codec_takes_any_stream(chunks: list[bytes]) -> None:
    codec = TelnetCodec()

    def run() -> None:
        for chunk in chunks:
            codec.receive(chunk)
            assert len(codec.pending()) <= 3 * len(chunk)  # answers never outgrow the input

    coded_or_ok(run, allowed={Code.SERIAL_SERVER})
