"""A `POST /v1/jobs` body streamed into a staging folder of `inbox/`, limits enforced while reading.

The multipart parser runs in a worker thread, fed FEED_BYTES at a time (a thread hop per
64 KiB socket read would cost more than the parsing), and writes each image part straight
into its file, so neither a large nor a slow upload holds the event loop or more than
FEED_BYTES of memory: a body over its limit is refused at the chunk that crosses it (413),
a part over the image size limit within FEED_BYTES of crossing it, and an upload not
finished within the deadline gets 408.
The body's sha256 is computed on the way, for the request signature.

Part names are checked as they arrive: `job.json` (kept in memory, at most the manifest
limit) or a plain image file name (path_not_allowed otherwise), each at most once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import anyio
from python_multipart.exceptions import ParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from orfeas_pipelines.lib.intake.manifest import MAX_MANIFEST_BYTES, is_valid_id
from orfeas_pipelines.lib.intake.requests import RequestError
from orfeas_pipelines.lib.intake.verify import MANIFEST_NAME

FEED_BYTES = 1 << 20
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@dataclass
class Upload:
    """What arrived: the manifest's bytes, the image parts written and the body's hash."""

    manifest: bytes | None = None
    image_names: list[str] = field(default_factory=list)
    body_sha256: str = ""
    body_bytes: int = 0


def multipart_boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise RequestError("bad_upload", "POST /v1/jobs takes multipart/form-data with a boundary")
    return boundary


async def receive_upload(
    chunks: AsyncIterator[bytes],
    boundary: bytes,
    staging: Path,
    max_body_bytes: int,
    max_image_bytes: int,
    deadline_seconds: float,
) -> Upload:
    """Stream the body into `staging` (created here); RequestError on any limit or bad part."""
    staging.mkdir()
    writer = _PartWriter(staging, max_image_bytes)
    parser = MultipartParser(boundary, writer.callbacks())
    digest = hashlib.sha256()
    upload = Upload()

    def feed(received: list[bytes], final: bool) -> None:
        try:
            for chunk in received:
                digest.update(chunk)
                parser.write(chunk)
            if final:
                parser.finalize()
        except ParseError as error:
            raise RequestError("bad_upload", f"the multipart body is malformed ({error})") from None

    received: list[bytes] = []
    received_bytes = 0
    try:
        with anyio.fail_after(deadline_seconds):
            async for chunk in chunks:
                upload.body_bytes += len(chunk)
                if upload.body_bytes > max_body_bytes:
                    raise RequestError("too_large", f"request body is over the limit of {max_body_bytes} bytes")
                received.append(chunk)
                received_bytes += len(chunk)
                if received_bytes >= FEED_BYTES:
                    await anyio.to_thread.run_sync(feed, received, False)
                    received, received_bytes = [], 0
        await anyio.to_thread.run_sync(feed, received, True)
    except TimeoutError:
        raise RequestError("too_slow", f"upload did not finish within {deadline_seconds:g} s") from None
    finally:
        writer.close()
    if not writer.ended:
        raise RequestError("bad_upload", "multipart body ended before its closing boundary")
    upload.manifest = writer.manifest
    upload.image_names = writer.names
    upload.body_sha256 = digest.hexdigest()
    return upload


class _PartWriter:
    """python-multipart callbacks: one file per image part, job.json in memory."""

    def __init__(self, folder: Path, max_image_bytes: int):
        self.folder = folder
        self.max_image_bytes = max_image_bytes
        self.names: list[str] = []
        self.manifest: bytes | None = None
        self.ended = False
        self._header_field = b""
        self._header_value = b""
        self._disposition = b""
        self._name: str | None = None
        self._buffer: bytearray | None = None
        self._fd: int | None = None
        self._written = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._append_field(data[start:end]),
            "on_header_value": lambda data, start, end: self._append_value(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _part_begin(self) -> None:
        self._disposition = b""
        self._header_field = self._header_value = b""

    def _append_field(self, data: bytes) -> None:
        self._header_field += data

    def _append_value(self, data: bytes) -> None:
        self._header_value += data

    def _header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        raw_name = options.get(b"name")
        if raw_name is None:
            raise RequestError("bad_upload", "a multipart part has no name")
        name = raw_name.decode("utf-8", "replace")
        if name == MANIFEST_NAME:
            if self.manifest is not None or self._buffer is not None:
                raise RequestError("bad_upload", "part job.json is sent twice")
            self._buffer = bytearray()
            self._name = name
            return
        if not is_valid_id(name):
            shown = repr(name) if len(name) <= 60 else repr(name[:57] + "...")
            raise RequestError("path_not_allowed", f"part name {shown} is not a plain image file name (A-Z a-z 0-9 . _ -)")
        if name in self.names:
            raise RequestError("bad_upload", f"part {name} is sent twice")
        self._fd = os.open(self.folder / name, _CREATE_FLAGS, 0o644)
        self._name = name
        self._written = 0
        self.names.append(name)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._buffer is not None:
            self._buffer += data[start:end]
            if len(self._buffer) > MAX_MANIFEST_BYTES:
                raise RequestError("too_large", f"part job.json is over the limit of {MAX_MANIFEST_BYTES} bytes")
            return
        self._written += end - start
        if self._written > self.max_image_bytes:
            raise RequestError("too_large", f"part {self._name} is over the image limit of {self.max_image_bytes} bytes")
        view = memoryview(data)[start:end]
        while view:
            view = view[os.write(self._fd, view):]

    def _part_end(self) -> None:
        if self._buffer is not None:
            self.manifest = bytes(self._buffer)
            self._buffer = None
        self.close()
        self._name = None

    def _end(self) -> None:
        self.ended = True
