"""Hostile update servers: bad framing, trickling, endless bodies, and two fetches at once.

Before: an invalid or doubled Content-Length was accepted (the body read until close), a
server trickling one byte at a time hung the fetch, a server streaming without end filled the
cache up to 64 GiB, and two fetches of one URL into one cache ended in 9001 in 9 of 10 rounds.
Every fetch below runs on a thread joined with a generous bound, so a regression to a hang
fails the test instead of stalling the suite.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, Callable

import pytest

from conftest import SAMPLES
from test_fetch import (GOOD, LoggingHandler, cache_files, certs, folder,  # noqa: F401
                        make_config, serve)
from zflash.errors import Code, ZflashError
from zflash.fetch import fetch_package
from zflash.fetch.download import Expected

PACKAGE = (SAMPLES / GOOD).read_bytes()


def run_bounded(call: Callable[[], Any], bound: float = 60.0) -> Any:
    """``call()`` on a thread; its result or its exception. Fails if it is still running."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), "the fetch did not end"
    if "error" in box:
        raise box["error"]
    return box["result"]


def fetch_error(config: Any, url: str, expected: Expected = Expected()) -> ZflashError:
    with pytest.raises(ZflashError) as err:
        run_bounded(lambda: fetch_package(url, config, expected))
    return err.value


def raw_answer(head: list[str], payload: Callable[[Any], None] | bytes = b""
               ) -> type[LoggingHandler]:
    """A handler writing exactly these header lines, then ``payload``."""

    class Raw(LoggingHandler):
        def serve(self, body: bool) -> None:
            self.wfile.write(("\r\n".join(["HTTP/1.1 200 OK", *head]) + "\r\n\r\n").encode())
            if callable(payload):
                payload(self.wfile)
            else:
                self.wfile.write(payload)
            self.wfile.flush()
            self.close_connection = True
    return Raw


n = len(PACKAGE)
FRAMINGS = {
    "doubled": [f"Content-Length: {n}", f"Content-Length: {n}"],
    "two values": [f"Content-Length: {n}", "Content-Length: 10"],
    "comma list": [f"Content-Length: {n}, {n}"],
    "not a number": ["Content-Length: 12abc"],
    "negative": ["Content-Length: -1"],
    "plus sign": [f"Content-Length: +{n}"],
    "with transfer-encoding": [f"Content-Length: {n}", "Transfer-Encoding: chunked"],
}


@pytest.mark.parametrize("case", sorted(FRAMINGS))
def test_bad_content_length_is_refused(tmp_path, certs, folder, serve, case) -> None:
    server = serve(folder, raw_answer(["Connection: close", *FRAMINGS[case]], PACKAGE))
    config, _ = make_config(tmp_path, certs, reconnects=0)
    error = fetch_error(config, server.url + GOOD)
    assert error.code == Code.DOWNLOAD and "Content-Length" in error.detail
    assert cache_files(config) == []


def _trickle(wfile: BinaryIO) -> None:
    for byte in PACKAGE[:400]:
        try:
            wfile.write(bytes([byte]))
            wfile.flush()
        except OSError:
            return
        time.sleep(0.05)


def _short_timeout(config: Any) -> Any:
    return replace(config, policy=replace(config.policy, timeout=1.0))


def test_trickling_body_stops_with_a_coded_error(tmp_path, certs, folder, serve) -> None:
    server = serve(folder, raw_answer([f"Content-Length: {n}", "Connection: close"], _trickle))
    config, _ = make_config(tmp_path, certs, reconnects=0)
    error = fetch_error(_short_timeout(config), server.url + GOOD)
    assert error.code == Code.DOWNLOAD and "too slow" in error.detail


def test_trickling_headers_stop_with_a_coded_error(tmp_path, certs, folder, serve) -> None:
    class SlowHead(LoggingHandler):
        def serve(self, body: bool) -> None:
            for char in "HTTP/1.1 200 OK\r\nX-Slow: " + "a" * 200:
                try:
                    self.wfile.write(char.encode())
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.05)

    server = serve(folder, SlowHead)
    config, _ = make_config(tmp_path, certs, reconnects=0)
    error = fetch_error(_short_timeout(config), server.url + GOOD)
    assert error.code == Code.DOWNLOAD and "headers" in error.detail


def _endless(sent: list[int]) -> Callable[[BinaryIO], None]:
    def body(wfile: BinaryIO) -> None:
        wfile.write(PACKAGE)
        sent[0] += len(PACKAGE)
        junk = bytes(256 << 10)
        try:
            for _ in range(40_000):  # 10 GiB, if nobody stops it
                wfile.write(junk)
                sent[0] += len(junk)
        except OSError:
            return
    return body


def test_endless_body_is_bounded_by_the_package_header(tmp_path, certs, folder, serve) -> None:
    sent = [0]
    server = serve(folder, raw_answer(["Connection: close"], _endless(sent)))
    config, events = make_config(tmp_path, certs, reconnects=0)
    error = fetch_error(config, server.url + GOOD)
    assert error.code == Code.SIGNATURE and "more than" in error.detail
    assert cache_files(config) == []
    progress = [e["bytes"] for e in events if e["event"] == "progress"]
    assert max(progress, default=0) <= len(PACKAGE)


def test_a_body_that_is_not_a_package_stops_after_its_header(tmp_path, certs, folder,
                                                             serve) -> None:
    junk = b"<html>" + bytes(1 << 20)
    server = serve(folder, raw_answer(["Connection: close"], junk))
    config, events = make_config(tmp_path, certs, reconnects=0)
    error = fetch_error(config, server.url + GOOD)
    assert error.code == Code.SIGNATURE and "not a .zpk" in error.detail


def test_body_longer_than_the_catalog_promise_stops(tmp_path, certs, folder, serve) -> None:
    server = serve(folder, raw_answer(["Connection: close"], PACKAGE + bytes(1 << 20)))
    config, _ = make_config(tmp_path, certs, reconnects=0)
    error = fetch_error(config, server.url + GOOD, Expected(size=len(PACKAGE) - 10))
    assert error.code in (Code.SIGNATURE, Code.MALFORMED_PACKAGE)


class Slow(LoggingHandler):
    """Sends the file in small pieces with pauses, so two fetches surely overlap."""

    def copy_body(self, source: BinaryIO, length: int) -> None:
        while piece := source.read(40_000):
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(0.02)


@pytest.mark.parametrize("round_", range(3))
def test_two_fetches_of_one_url_into_one_cache(tmp_path, certs, folder, serve, round_) -> None:
    server = serve(folder, Slow)
    config, _ = make_config(tmp_path, certs)
    results: list[Any] = [None, None]
    barrier = threading.Barrier(2)

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fetch_package(server.url + GOOD, config)
        except BaseException as exc:  # noqa: BLE001 - checked below
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    for result in results:
        assert not isinstance(result, BaseException), repr(result)
        assert result.path.read_bytes() == PACKAGE
    assert cache_files(config) == [GOOD]
