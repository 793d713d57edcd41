"""Resumable, verified downloads into the cache directory.

Bytes land in ``NAME.part``; a sidecar ``NAME.part.json`` remembers the URL and the server's
validators (ETag / Last-Modified) so that a later run resumes with ``Range`` + ``If-Range``
and never splices two different files together. Only a file that passed every check (size and
SHA-256 when the catalog gave them, then the package signature and every block) is renamed
to ``NAME``, atomically. A corrupt result is discarded and fetched once more from scratch;
a second corrupt result is error 9012 and leaves nothing behind.

Bounds: a download never exceeds the size the catalog promises, nor, once its first 64
bytes are in, the size the package's own header promises (so a server streaming for ever
stops at the package's end). Two fetches of one entry into one cache are serialized by an
``flock`` on ``.locks/NAME`` in the cache, held from the cache check to the rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from zflash.errors import Code, ZflashError
from zflash.fetch.client import (TRANSFER_ERRORS, Exchange, describe_status,
                                 parse_content_range, parse_unsatisfied_range)
from zflash.fetch.config import FetchConfig
from zflash.fetch.tls import HttpsUrl, parse_url
from zflash.package.format import HEADER_SIZE, Header
from zflash.package.reader import Package

CHUNK = 256 << 10
PROGRESS_STEP = 1 << 20
MAX_UNKNOWN_SIZE = 64 << 30  # cap when neither the catalog nor the server states a size
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


@dataclass(frozen=True)
class Expected:
    """What the signed catalog says about the file, when a catalog was used."""

    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int
    manifest_digest: str
    version: str
    product: str


def safe_name(name: str) -> str:
    """A cache file name that cannot escape the cache directory."""
    if not _SAFE_NAME.fullmatch(name) or name.endswith((".part", ".part.json")):
        raise ZflashError(Code.USAGE, f"cannot use {name!r} as a cache file name; the URL "
                                      "must end in a plain file name such as NAME.zpk")
    return name


def fetch_package(url: str, config: FetchConfig, expected: Expected = Expected(),
                  name: str | None = None) -> Fetched:
    """Download (or resume) ``url`` into the cache and return the verified file."""
    if not len(config.trust):
        raise ZflashError(Code.NO_TRUSTED_KEY, "a download cannot be verified without a "
                                               "trusted key")
    target = parse_url(url)
    name = safe_name(name or target.basename)
    with entry_lock(config, name):
        return _fetch_locked(target, name, config, expected)


@contextlib.contextmanager
def entry_lock(config: FetchConfig, name: str) -> Iterator[None]:
    """Hold the cache entry ``name`` alone: another fetch of it waits (and says so)."""
    folder = config.cache_dir / ".locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ZflashError(Code.FILE_UNWRITABLE, f"{config.cache_dir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            config.on_event({"event": "waiting", "name": name,
                             "reason": "another zflash is fetching the same file"})
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fetch_locked(target: HttpsUrl, name: str, config: FetchConfig,
                  expected: Expected) -> Fetched:
    final = config.cache_dir / name
    cached = _reuse_cached(final, expected, config)
    if cached:
        return cached
    for attempt in (1, 2):
        part = config.cache_dir / f"{name}.part"
        try:
            _Transfer(target, part, expected, config).run()
            result = verify_file(part, expected, config)
        except ZflashError as exc:
            if exc.code not in (Code.SIGNATURE, Code.MALFORMED_PACKAGE):
                raise
            discard(part)
            error = ZflashError(Code.SIGNATURE, f"downloaded {name} is corrupt: {exc.detail}")
            if attempt == 2:
                raise error from None
            config.on_event({"event": "retry", "name": name, "reason": error.detail,
                             "code": int(Code.SIGNATURE)})
            continue
        os.replace(part, final)
        _fsync_dir(final.parent)
        _sidecar(part).unlink(missing_ok=True)
        result = Fetched(final, result.sha256, result.size, result.manifest_digest,
                         result.version, result.product)
        config.on_event({"event": "done", "path": str(final), "sha256": result.sha256,
                         "size": result.size, "version": result.version})
        return result
    raise AssertionError("unreachable")


def verify_file(path: Path, expected: Expected, config: FetchConfig) -> Fetched:
    """Size and SHA-256 against the catalog, then the package's signature and blocks."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise ZflashError(Code.SIGNATURE, f"{size} bytes, the catalog says {expected.size}")
    digest = _sha256_file(path)
    if expected.sha256 is not None and digest != expected.sha256:
        raise ZflashError(Code.SIGNATURE, "SHA-256 differs from the catalog's")
    with Package(path) as pkg:
        signers = pkg.verify(config.trust)
        manifest, manifest_digest = pkg.manifest, pkg.head.digest
    config.on_event({"event": "verified", "name": path.name.removesuffix(".part"),
                     "sha256": digest, "signers": [s.hex() for s in signers],
                     "product": manifest.product, "version": manifest.version})
    return Fetched(path, digest, size, manifest_digest, manifest.version, manifest.product)


def discard(part: Path) -> None:
    """Remove a partial download and its sidecar."""
    part.unlink(missing_ok=True)
    _sidecar(part).unlink(missing_ok=True)


def _reuse_cached(final: Path, expected: Expected, config: FetchConfig) -> Fetched | None:
    """A cached file is reused only when the catalog pins its hash and it still verifies."""
    if expected.sha256 is None or not final.is_file():
        return None
    try:
        result = verify_file(final, expected, config)
    except ZflashError:
        final.unlink(missing_ok=True)
        return None
    config.on_event({"event": "cached", "path": str(final), "sha256": result.sha256})
    return result


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Transfer:
    """The HTTP side of one download: resume, restart, reconnect after a cut."""

    def __init__(self, url: HttpsUrl, part: Path, expected: Expected,
                 config: FetchConfig) -> None:
        self.url, self.part, self.expected, self.config = url, part, expected, config
        self.emit = config.on_event

    def run(self) -> None:
        reconnects = self.config.reconnects
        while True:
            before = self._resumable_size()
            try:
                if self._attempt(before):
                    return
                continue  # restart requested (server changed or answered oddly)
            except _Cut as cut:
                gained = cut.size - before
                if gained <= 0 or reconnects <= 0:
                    raise ZflashError(Code.DOWNLOAD, f"{self.url.text}: connection lost after "
                                                     f"{cut.size} bytes ({cut.why}); run the "
                                                     "same command again to resume") from None
                reconnects -= 1
                self.emit({"event": "retry", "name": self.part.stem, "reason": cut.why,
                           "offset": cut.size, "code": int(Code.DOWNLOAD)})

    def _resumable_size(self) -> int:
        """Bytes already on disk for this very URL and server file, else 0 (and discard)."""
        if not self.part.is_file():
            return 0
        meta = self._meta()
        if meta.get("url") != self.url.text:
            discard(self.part)
            return 0
        return self.part.stat().st_size

    def _meta(self) -> dict[str, Any]:
        try:
            data = json.loads(_sidecar(self.part).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _attempt(self, offset: int) -> bool:
        """One request. True when the part file is complete; False to start over."""
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            meta = self._meta()
            validator = meta.get("etag") or meta.get("last_modified")
            if isinstance(validator, str) and validator:
                headers["If-Range"] = validator
        with Exchange(self.url, self.config.policy, headers, self.emit,
                      self.config.min_progress) as ex:
            if ex.status == 200:
                start, total = 0, ex.length()
            elif ex.status == 206 and offset:
                content_range = parse_content_range(ex.header("Content-Range"))
                if content_range is None or content_range.first != offset:
                    self.emit({"event": "restart", "name": self.part.stem,
                               "reason": "server sent an unexpected range"})
                    discard(self.part)
                    return False
                start, total = offset, content_range.total
            elif ex.status == 416 and offset:
                total = parse_unsatisfied_range(ex.header("Content-Range"))
                if total == offset:
                    return True  # everything was already here
                self.emit({"event": "restart", "name": self.part.stem,
                           "reason": "server no longer has the resumed range"})
                discard(self.part)
                return False
            else:
                raise describe_status(ex)
            limit = self._limit(total)
            if offset and start == 0:
                self.emit({"event": "restart", "name": self.part.stem,
                           "reason": "server sent the whole file instead of the range"})
            self._write_meta(ex, start)
            self.emit({"event": "download", "name": self.part.stem, "url": self.url.text,
                       "offset": start, "total": total, "resumed": start > 0})
            self._receive(ex, start, total, limit)
        return True

    def _limit(self, total: int | None) -> int:
        expected = self.expected.size
        if total is not None and expected is not None and total != expected:
            raise ZflashError(Code.SIGNATURE, f"server offers {total} bytes, the catalog "
                                              f"says {expected}")
        return total if total is not None else (expected or MAX_UNKNOWN_SIZE)

    def _write_meta(self, ex: Exchange, start: int) -> None:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        if start == 0:
            meta = {"url": self.url.text, "etag": ex.header("ETag"),
                    "last_modified": ex.header("Last-Modified")}
            _sidecar(self.part).write_text(json.dumps(meta))

    def _receive(self, ex: Exchange, start: int, total: int | None, limit: int) -> None:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        done = start
        with open(self.part, "r+b" if start else "w+b") as out:
            head = bytearray(out.read(min(start, HEADER_SIZE)))
            out.seek(start)
            out.truncate()
            last = done
            try:
                while count := ex.readinto(view):
                    if len(head) < HEADER_SIZE:
                        head += view[:min(count, HEADER_SIZE - len(head))]
                        if len(head) == HEADER_SIZE:
                            limit = self._promised(bytes(head), total, limit)
                    if done + count > limit:
                        raise ZflashError(Code.SIGNATURE, f"server sent more than {limit} "
                                                          "bytes")
                    out.write(view[:count])
                    done += count
                    if done - last >= PROGRESS_STEP:
                        self.emit({"event": "progress", "name": self.part.stem,
                                   "bytes": done, "total": total})
                        last = done
            except TRANSFER_ERRORS as exc:
                out.flush()
                os.fsync(out.fileno())
                raise _Cut(done, f"{type(exc).__name__}: {exc}") from None
            out.flush()
            os.fsync(out.fileno())
        self.emit({"event": "progress", "name": self.part.stem, "bytes": done,
                   "total": total})
        if total is not None and done < total:
            raise _Cut(done, f"server closed the connection at {done} of {total} bytes")


    def _promised(self, head: bytes, total: int | None, limit: int) -> int:
        """The package header's own size: the download's bound once 64 bytes are in."""
        promised = Header.decode(head).total_size  # 9004 if this is not a package
        if promised > limit or (total is not None and promised != total):
            raise ZflashError(Code.MALFORMED_PACKAGE, f"package header promises {promised} "
                                                      f"bytes; the download is {total or limit}")
        return promised


class _Cut(Exception):
    """The body ended early; ``size`` bytes are safely on disk."""

    def __init__(self, size: int, why: str) -> None:
        super().__init__(why)
        self.size, self.why = size, why
