"""A pod container's output, read from the Docker engine, whole or followed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any

from docker.errors import DockerException, NotFound


class ContainerLogs:
    """Reads containers' logs in the kubelet's threads."""

    def __init__(self, api: Any, pool: Executor) -> None:
        self._api = api
        self._pool = pool

    async def read(self, container_id: str, *, tail: int | None,
                   timestamps: bool) -> bytes | None:
        """The container's output so far; None when the container is gone."""
        def read() -> bytes:
            return bytes(self._api.logs(container_id, timestamps=timestamps,
                                        tail="all" if tail is None else tail))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, read)
        except NotFound:
            return None

    async def follow(self, container_id: str, *, tail: int | None,
                     timestamps: bool) -> AsyncIterator[bytes]:
        """The container's output as it comes, until the container exits."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

        def pump() -> None:
            try:
                for chunk in self._api.logs(container_id, stream=True, follow=True,
                                            timestamps=timestamps,
                                            tail="all" if tail is None else tail):
                    loop.call_soon_threadsafe(chunks.put_nowait, bytes(chunk))
            except DockerException:
                pass  # the container went: the stream ends
            finally:
                loop.call_soon_threadsafe(chunks.put_nowait, None)

        self._pool.submit(pump)
        while (chunk := await chunks.get()) is not None:
            yield chunk
