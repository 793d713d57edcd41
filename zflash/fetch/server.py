"""A small HTTPS file server for a workshop bench or a test (`zflash serve`). Not for production.

Standard library only: ThreadingHTTPServer with TLS 1.2+ and single byte-range support
(Range, If-Range, 206, 416), so that resuming can be exercised against it. The TLS handshake
runs on the request's own thread, so one stalled client cannot block the others. Only regular
files inside the folder are served; no listings, no dot files.
"""

from __future__ import annotations

import email.utils
import re
import socket
import ssl
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
COPY_CHUNK = 256 << 10


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 minimum, no renegotiation; the certificate chain and key from PEM files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.load_cert_chain(str(cert), str(key))
    return context


class WorkshopServer(ThreadingHTTPServer):
    """Serves ``directory`` over TLS; ``quiet`` silences the per-request log lines."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], directory: Path, context: ssl.SSLContext,
                 handler: type[BaseHTTPRequestHandler] | None = None,
                 quiet: bool = False) -> None:
        self.directory = directory.resolve()
        self.context = context
        self.quiet = quiet
        super().__init__(address, handler or RangeRequestHandler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        sock.settimeout(30)
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, not a traceback: failed handshakes are expected (wrong pins, old TLS)."""
        if not self.quiet:
            exc = sys.exc_info()[1]
            print(f"{client_address[0]} - {type(exc).__name__}: {exc}", file=sys.stderr)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"https://{host}:{port}/"


class RangeRequestHandler(BaseHTTPRequestHandler):
    """GET/HEAD of files in the server's folder with one byte range at most."""

    server: WorkshopServer
    server_version = "zflash-serve"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.request.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:
        self.serve(body=False)

    def do_GET(self) -> None:
        self.serve(body=True)

    def resolve(self) -> Path | None:
        """The file the request names, if it lies inside the folder and is not hidden."""
        relative = unquote(urlsplit(self.path).path).lstrip("/")
        if not relative or any(p.startswith(".") for p in relative.split("/")):
            return None
        candidate = (self.server.directory / relative).resolve()
        if not candidate.is_relative_to(self.server.directory) or not candidate.is_file():
            return None
        return candidate

    def serve(self, body: bool) -> None:
        path = self.resolve()
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        stat = path.stat()
        size = stat.st_size
        etag = f'"{stat.st_mtime_ns:x}-{size:x}"'
        modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        wanted = self.wanted_range(size, etag, modified)
        if wanted == "unsatisfiable":
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            return
        start, end = wanted if isinstance(wanted, tuple) else (0, size)
        if isinstance(wanted, tuple):
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        else:
            self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream"
                         if path.suffix != ".json" else "application/json")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", modified)
        self.send_header("Connection", "close")
        self.end_headers()
        if body:
            with open(path, "rb") as handle:
                handle.seek(start)
                self.copy_body(handle, end - start)

    def wanted_range(self, size: int, etag: str, modified: str
                     ) -> tuple[int, int] | str | None:
        """(start, end) for one satisfiable range, "unsatisfiable", or None for the whole file."""
        header = self.headers.get("Range")
        if not header:
            return None
        if_range = self.headers.get("If-Range")
        if if_range and if_range not in (etag, modified):
            return None  # the file changed: send it whole
        match = _RANGE.fullmatch(header.strip())
        if not match or not (match[1] or match[2]):
            return None  # several ranges or unparsable: a whole answer is always allowed
        if match[1]:
            start = int(match[1])
            end = min(size, int(match[2]) + 1) if match[2] else size
        else:
            start, end = max(0, size - int(match[2])), size
        if start >= size or end <= start:
            return "unsatisfiable"
        return start, end

    def copy_body(self, source: BinaryIO, length: int) -> None:
        """Send ``length`` bytes; tests override this to cut connections or corrupt data."""
        while length > 0:
            chunk = source.read(min(COPY_CHUNK, length))
            if not chunk:
                break
            self.wfile.write(chunk)
            length -= len(chunk)


def make_server(directory: Path, context: ssl.SSLContext, host: str = "127.0.0.1",
                port: int = 0, handler: type[BaseHTTPRequestHandler] | None = None,
                quiet: bool = False) -> WorkshopServer:
    """Bind (port 0 picks a free one); call ``serve_forever`` to run."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("Server", (WorkshopServer,), {"address_family": family})
    return server_class((host, port), directory, context, handler, quiet)
