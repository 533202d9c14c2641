"""A finished job's log as one object in the JetStream object store ``HODEI_LOG_ARCHIVE``.

The object is named by the job's id and holds the log as readers see it (every line once,
in order, then the end marker): one JSON ``LogMessage`` per line, gzip-compressed, so an
operator can fetch it with ``nats object get`` and read it with ``zcat``. It is written and
read a chunk at a time, so neither side holds a whole log in memory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import tempfile
import zlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import IO, cast
from uuid import UUID

import msgspec
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, ObjectInfo, ObjectStoreConfig, StorageType
from nats.js.errors import BadRequestError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from hodei_common.contracts import subjects
from hodei_common.contracts.logs import LogBatch, LogMessage
from hodei_common.errors import HodeiError

GZIP_WBITS = 31  # zlib's gzip container
COMPRESS_LEVEL = 1  # logs compress well even so; level 1 costs least CPU
# A chunk of a very repetitive log can inflate a thousandfold: inflate a bounded step at a time.
INFLATE_STEP = 1 << 20
CHUNK_WAIT_S = 30.0


class ArchiveError(HodeiError):
    """A stored log could not be read back as written."""


def storage_uri(job_id: UUID) -> str:
    return f"nats-object://{subjects.LOG_ARCHIVE_BUCKET}/{job_id}"


def _store(js: JetStreamContext) -> ObjectStore:
    return ObjectStore(js=js, name=subjects.LOG_ARCHIVE_BUCKET,
                       stream=subjects.LOG_ARCHIVE_STREAM)


async def ensure_bucket(js: JetStreamContext) -> ObjectStore:
    """Create the archive bucket unless it exists (file storage)."""
    try:
        return await js.create_object_store(
            subjects.LOG_ARCHIVE_BUCKET,
            ObjectStoreConfig(description="Hodei: finished jobs' logs",
                              storage=StorageType.FILE))
    except BadRequestError:  # it exists (with another config: kept as the operator set it)
        return _store(js)


async def info(js: JetStreamContext, job_id: UUID) -> ObjectInfo | None:
    """The job's archived log, or None when there is none (yet, or any more)."""
    try:
        return await _store(js).get_info(str(job_id))
    except ObjectNotFoundError:
        return None


async def delete(js: JetStreamContext, job_id: UUID) -> None:
    """Remove the job's archived log (gone already is fine)."""
    with contextlib.suppress(ObjectNotFoundError):
        await _store(js).delete(str(job_id))


@dataclass(frozen=True)
class Written:
    """What an archived log holds: stored bytes and their sha256 (hex), lines, attempt."""

    size_bytes: int
    sha256: str
    lines: int
    truncated: bool


class ArchiveWriter:
    """Encodes and compresses log messages into a temporary file, then stores it."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (see discard())
        self._zip = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, GZIP_WBITS)
        self._sha = hashlib.sha256()
        self._size = 0
        self._encoder = msgspec.json.Encoder()
        self.lines = 0

    def add(self, message: LogMessage) -> None:
        if isinstance(message, LogBatch):
            self.lines += len(message.lines)
        self._emit(self._zip.compress(self._encoder.encode(message) + b"\n"))

    def _emit(self, data: bytes) -> None:
        if data:
            self._file.write(data)
            self._sha.update(data)
            self._size += len(data)

    async def store(self, js: JetStreamContext, job_id: UUID, *, truncated: bool) -> Written:
        """Put the archive in the bucket under the job's id (replacing an earlier copy)."""
        self._emit(self._zip.flush())
        self._file.seek(0)
        await _store(js).put(str(job_id), cast(io.BufferedIOBase, self._file))
        return Written(self._size, self._sha.hexdigest(), self.lines, truncated)

    def discard(self) -> None:
        """Drop the temporary file (stored or not)."""
        self._file.close()


async def read(js: JetStreamContext, found: ObjectInfo) -> AsyncGenerator[LogMessage, None]:
    """Yield the messages of an archived log, checking its digest at the end."""
    if not found.size:
        raise ArchiveError(f"archived log {found.name} is empty")
    sub = await js.subscribe(
        subjects.log_archive_chunks(found.nuid or ""), stream=subjects.LOG_ARCHIVE_STREAM,
        ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, inactive_threshold=5.0)
    sha = hashlib.sha256()
    unzip = zlib.decompressobj(GZIP_WBITS)
    decoder = msgspec.json.Decoder(LogMessage)
    rest = b""
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=CHUNK_WAIT_S)
            except NatsTimeoutError as e:
                raise ArchiveError(f"archived log {found.name}: a chunk did not come") from e
            sha.update(msg.data)
            data = msg.data
            while data:
                rest += unzip.decompress(data, INFLATE_STEP)
                data = unzip.unconsumed_tail
                *lines, rest = rest.split(b"\n")
                for line in lines:
                    yield decoder.decode(line)
                await asyncio.sleep(0)
            if msg.metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(NatsError, TimeoutError):
            await sub.unsubscribe()
    digest = "SHA-256=" + base64.urlsafe_b64encode(sha.digest()).decode()
    if found.digest and found.digest.upper() != digest.upper():
        raise ArchiveError(f"archived log {found.name} does not match its digest")
