"""A finished job's log, archived in the JetStream stream ``LOG_ARCHIVE`` under its namespace.

The archive holds the log as readers see it (every line once, in order, then the end
marker): one JSON ``LogMessage`` per line, gzip-compressed, published in chunks of
``CHUNK_BYTES`` on ``archive.<namespace>.<job>.chunk.<put>``, then described (size, sha256,
lines, chunks, put) on ``archive.<namespace>.<job>.meta``. The meta is written last, so a
meta means a complete archive; a new write of the same job's archive rolls up the meta and
then purges the chunks the old one named. It is written and read a chunk at a time, so
neither side holds a whole log in memory.

Every read names the namespace in the request's subject (a direct get of the meta, a consumer
created by name whose filter is the chunks' subject): NATS permissions keep a user to its own
namespace's archives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
import zlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import IO
from uuid import UUID

import msgspec
from nats import nuid
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from hodei_common import messaging
from hodei_common.contracts import subjects
from hodei_common.contracts.logs import LogBatch, LogMessage
from hodei_common.errors import HodeiError

GZIP_WBITS = 31  # zlib's gzip container
COMPRESS_LEVEL = 1  # logs compress well even so; level 1 costs least CPU
CHUNK_BYTES = 128 * 1024
SPOOL_BYTES = 4 * CHUNK_BYTES
# A chunk of a very repetitive log can inflate a thousandfold: inflate a bounded step at a time.
INFLATE_STEP = 1 << 20
CHUNK_WAIT_S = 30.0
ROLLUP = {"Nats-Rollup": "sub"}  # a new meta replaces the subject's earlier ones


class ArchiveError(HodeiError):
    """A stored log could not be read back as written."""


class Archived(msgspec.Struct, frozen=True, kw_only=True):
    """The meta of one archived log: where its chunks are and what they must add up to."""

    job_id: UUID
    namespace: str
    put: str  # the token of this write's chunk subject
    chunks: int
    size_bytes: int
    sha256: str  # hex, of the stored (gzip'd) bytes
    lines: int
    truncated: bool = False


def storage_uri(namespace: str, job_id: UUID) -> str:
    """Where the job's archive is, as ``job_log_files`` records it: its meta's subject."""
    meta = subjects.log_archive_meta(namespace, job_id)
    return f"nats-stream://{subjects.LOG_ARCHIVE_STREAM}/{meta}"


def archive_config() -> StreamConfig:
    """The archive stream: file storage, kept until the logs service sweeps it."""
    return StreamConfig(
        name=subjects.LOG_ARCHIVE_STREAM,
        description="Hodei: finished jobs' logs",
        subjects=[subjects.LOG_ARCHIVE_SUBJECTS],
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        allow_direct=True,
        allow_rollup_hdrs=True,
    )


async def ensure_archive(js: JetStreamContext) -> None:
    """Create the archive stream unless it exists (with another config: kept as the operator
    set it)."""
    with contextlib.suppress(BadRequestError):
        await js.add_stream(archive_config())


async def info(js: JetStreamContext, namespace: str, job_id: UUID) -> Archived | None:
    """The job's archived log, or None when there is none (yet, or any more)."""
    try:
        meta = await js.get_last_msg(subjects.LOG_ARCHIVE_STREAM,
                                     subjects.log_archive_meta(namespace, job_id), direct=True)
    except (NotFoundError, NoRespondersError):  # no meta, or no archive stream at all
        return None
    try:
        return msgspec.json.decode(meta.data or b"", type=Archived)
    except msgspec.DecodeError as e:
        raise ArchiveError(f"archived log of job {job_id}: unreadable meta ({e})") from e


async def delete(js: JetStreamContext, namespace: str, job_id: UUID) -> None:
    """Remove the job's archived log (gone already is fine)."""
    with contextlib.suppress(NotFoundError):
        await js.purge_stream(subjects.LOG_ARCHIVE_STREAM,
                              subject=subjects.log_archive_job(namespace, job_id))


@dataclass(frozen=True)
class Written:
    """What an archived log holds: stored bytes and their sha256 (hex), lines, attempt."""

    size_bytes: int
    sha256: str
    lines: int
    truncated: bool


class ArchiveWriter:
    """Encodes and compresses log messages into a temporary file, then stores it (see
    discard())."""

    def __init__(self) -> None:
        # In memory while small (most logs), on disk past SPOOL_BYTES.
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(SPOOL_BYTES)  # noqa: SIM115
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

    async def store(self, js: JetStreamContext, namespace: str, job_id: UUID, *,
                    truncated: bool, first: bool = False) -> Written:
        """Store the archive as the job's (replacing an earlier one): chunks, then the meta,
        then the earlier write's chunks purged. ``first``: the caller knows of no earlier
        write (a terminal event's first delivery), so none is looked for; should one exist
        after all, its chunks stay beside the new ones until the job's archive is deleted."""
        self._emit(self._zip.flush())
        self._file.seek(0)
        earlier = None if first else await info(js, namespace, job_id)
        put = nuid.NUID().next().decode()
        subject = subjects.log_archive_chunks(namespace, job_id, put)
        chunks = 0
        while chunk := self._file.read(CHUNK_BYTES):
            await js.publish(subject, chunk)
            chunks += 1
        written = Written(self._size, self._sha.hexdigest(), self.lines, truncated)
        meta = Archived(job_id=job_id, namespace=namespace, put=put, chunks=chunks,
                        size_bytes=written.size_bytes, sha256=written.sha256,
                        lines=written.lines, truncated=truncated)
        await js.publish(subjects.log_archive_meta(namespace, job_id), msgspec.json.encode(meta),
                         headers=ROLLUP)
        if earlier is not None and earlier.put != put:
            # Only the chunks the replaced meta named: a write of the same log racing this one
            # keeps its own, whichever meta ends up last.
            await js.purge_stream(
                subjects.LOG_ARCHIVE_STREAM,
                subject=subjects.log_archive_chunks(namespace, job_id, earlier.put))
        return written

    def discard(self) -> None:
        """Drop the temporary file (stored or not)."""
        self._file.close()


async def read(js: JetStreamContext, found: Archived) -> AsyncGenerator[LogMessage, None]:
    """Yield the messages of an archived log, checking its size and digest at the end."""
    name = f"archive {found.namespace}/{found.job_id}"
    if not found.chunks:
        raise ArchiveError(f"{name} is empty")
    sha = hashlib.sha256()
    size = 0
    unzip = zlib.decompressobj(GZIP_WBITS)
    decoder = msgspec.json.Decoder(LogMessage)
    rest = b""
    async with contextlib.aclosing(chunks(js, found)) as stored:
        async for chunk in stored:
            sha.update(chunk)
            size += len(chunk)
            data = chunk
            while data:
                try:
                    rest += unzip.decompress(data, INFLATE_STEP)
                    data = unzip.unconsumed_tail
                    *lines, rest = rest.split(b"\n")
                    messages = [decoder.decode(line) for line in lines]
                except (zlib.error, msgspec.DecodeError) as e:
                    raise ArchiveError(f"{name} is corrupt: {e}") from e
                for message in messages:
                    yield message
                await asyncio.sleep(0)
    if size != found.size_bytes or sha.hexdigest() != found.sha256 or rest or not unzip.eof:
        raise ArchiveError(f"{name} does not match its digest")


async def chunks(js: JetStreamContext, found: Archived) -> AsyncGenerator[bytes, None]:
    """The archive's bytes as stored (gzip), a chunk at a time, unchecked."""
    subject = subjects.log_archive_chunks(found.namespace, found.job_id, found.put)
    async with messaging.confined_reading(js, subjects.LOG_ARCHIVE_STREAM, subject) as sub:
        for _ in range(found.chunks):
            try:
                msg = await sub.next_msg(timeout=CHUNK_WAIT_S)
            except NatsTimeoutError as e:
                raise ArchiveError(f"archive {found.namespace}/{found.job_id}: a chunk did "
                                   "not come") from e
            yield msg.data
