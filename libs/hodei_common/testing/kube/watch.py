"""A watch as the real server streams it: one JSON event per line over a chunked response."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from aiohttp import web

from hodei_common.testing.kube.selectors import FieldSelector, LabelSelector
from hodei_common.testing.kube.store import Store


def wants_watch(request: web.Request) -> bool:
    return request.query.get("watch", "").lower() in ("1", "true")


async def stream(request: web.Request, store: Store, kind: str, namespace: str | None) -> \
        web.StreamResponse:
    """Stream the changes of ``kind`` from ``resourceVersion`` until ``timeoutSeconds``, a
    fault, or shutdown ends the watch."""
    labels = LabelSelector.parse(request.query.get("labelSelector"))
    fields = FieldSelector.parse(request.query.get("fieldSelector"), kind)
    timeout = request.query.get("timeoutSeconds")
    deadline = time.monotonic() + float(timeout) if timeout else None
    watcher = store.watch(kind, namespace, labels, fields, request.query.get("resourceVersion"))
    response = web.StreamResponse(headers={"Content-Type": "application/json",
                                           "Transfer-Encoding": "chunked"})
    await response.prepare(request)

    def abort() -> None:
        if request.transport is not None:
            request.transport.abort()
        watcher.queue.put_nowait(None)

    watcher.abort = abort
    try:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                event = await asyncio.wait_for(watcher.queue.get(), remaining)
            except TimeoutError:
                break
            if event is None:
                break
            await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    except ConnectionError:
        pass  # the client went away, or a fault cut the connection
    finally:
        store.watchers.discard(watcher)
    return response
