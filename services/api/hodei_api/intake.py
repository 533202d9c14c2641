"""Submits that arrive together are stored together.

A submit that finds no statement running is stored at once, alone. Those that arrive while
one runs wait for it to end and then go together in the next (up to ``max_batch``): one
statement, one commit and one WAL flush for all of them. So a lone caller never waits for
company, and many callers share the cost of storing their jobs.
"""

from __future__ import annotations

import asyncio
import contextvars
from uuid import UUID, uuid4

import asyncpg

from hodei_api import handlers
from hodei_common.contracts.api import SubmitJob
from hodei_common.lifecycle import jobs

MAX_BATCH = 100

Waiting = tuple[jobs.NewJob, "asyncio.Future[handlers.Submitted]"]


class Intake:
    """The api replica's submits, stored in as few statements as they arrive in."""

    def __init__(self, pool: asyncpg.Pool, *, assign_now: bool,
                 max_batch: int = MAX_BATCH) -> None:
        self._pool = pool
        self._assign_now = assign_now
        self._max_batch = max_batch
        self._waiting: list[Waiting] = []
        self._storing: asyncio.Task[None] | None = None

    async def submit(self, namespace: str, req: SubmitJob) -> handlers.Submitted:
        """Store ``req`` as a job of ``namespace`` (or find the one it repeats); bad input is
        refused here, before it can share a statement with others."""
        handlers.validate_submit(req)
        new = jobs.new_job(req, job_id=req.id or uuid4(), namespace=namespace,
                           actor=handlers.ACTOR, assign_now=self._assign_now)
        stored: asyncio.Future[handlers.Submitted] = asyncio.get_running_loop().create_future()
        self._waiting.append((new, stored))
        if self._storing is None:
            # In a context of its own: the statement serves many requests, so it must not
            # run in (and log under) the trace of the one that happened to start it.
            self._storing = asyncio.create_task(self._store(), name="api-intake",
                                                context=contextvars.Context())
        return await stored

    def _next_batch(self) -> list[Waiting]:
        """The oldest waiting submits, up to ``max_batch``, with distinct job ids (a submit
        repeating one of them by id goes in the next statement, where it finds the job)."""
        batch: list[Waiting] = []
        later: list[Waiting] = []
        ids: set[UUID] = set()
        for item in self._waiting:
            if item[1].done():  # its caller gave up waiting
                continue
            if len(batch) < self._max_batch and item[0].job_id not in ids:
                ids.add(item[0].job_id)
                batch.append(item)
            else:
                later.append(item)
        self._waiting = later
        return batch

    async def _alone(self, new: jobs.NewJob) -> handlers.Submitted | Exception:
        try:
            return (await handlers.submit_jobs(self._pool, [new],
                                               assign_now=self._assign_now))[0]
        except Exception as e:
            return e

    async def _store(self) -> None:
        batch: list[Waiting] = []
        try:
            while batch := self._next_batch():
                news = [new for new, _ in batch]
                results: list[handlers.Submitted | Exception]
                try:
                    results = await handlers.submit_jobs(self._pool, news,
                                                         assign_now=self._assign_now)
                except Exception as e:
                    # The statement stored nothing, perhaps for one job's sake (or a deadlock
                    # with another replica's): each goes again alone, so that a failure
                    # stays the failing job's own.
                    results = [e] if len(news) == 1 else [await self._alone(n) for n in news]
                for (_, stored), result in zip(batch, results, strict=True):
                    if stored.done():
                        continue
                    if isinstance(result, Exception):
                        stored.set_exception(result)
                    else:
                        stored.set_result(result)
        finally:
            self._storing = None
            for _, stored in (*batch, *self._waiting):  # only when cancelled: none is left
                stored.cancel()
