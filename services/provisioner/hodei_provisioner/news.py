"""What the provisioner does with a provider's news of a worker's resource.

Every change goes through the lifecycle (fenced by the worker's state), so news told twice,
or late (the worker moved on meanwhile), changes nothing.
"""

from __future__ import annotations

import logging

from hodei_common.contracts.workers import WorkerState
from hodei_common.lifecycle import workers
from hodei_common.recovery import Fate
from hodei_provisioner import store
from hodei_provisioner.handlers import ACTOR, Deps
from hodei_provisioner.providers import News, Verdict
from hodei_provisioner.providers.base import OOM_KILLED

log = logging.getLogger(__name__)



async def apply(deps: Deps, news: News) -> None:
    """Record progress, fail a worker that cannot start with its job, or lose a worker."""
    if news.verdict is Verdict.PROGRESS:
        async with deps.pool.acquire() as conn:
            await workers.note_status(conn, news.worker_id, news.reason)
    elif news.verdict is Verdict.CANNOT_START:
        await _cannot_start(deps, news)
    elif news.verdict is Verdict.LOST:
        await deps.recovery.lose(news.worker_id, news.reason, fate=Fate.REQUEUE)
    elif news.verdict is Verdict.TIMED_OUT:
        await deps.recovery.lose(news.worker_id, news.reason, fate=Fate.TIME_OUT)
    elif news.oom_killed:
        # An agent that exited 0 reported its job (the OOM killer took a process of it).
        await deps.recovery.lose(news.worker_id, f"{OOM_KILLED}: {news.reason}",
                                 fate=Fate.FAIL, job_error=OOM_KILLED,
                                 spare_busy=news.exit_code == 0)
    else:
        # One that exits 0 while BUSY reported its job; the report retires it.
        await deps.recovery.lose(news.worker_id, news.reason, spare_busy=news.exit_code == 0)


async def _cannot_start(deps: Deps, news: News) -> None:
    async with deps.pool.acquire() as conn:
        worker = await store.get_worker(conn, news.worker_id)
        if worker is None or worker.state is not WorkerState.CREATING:
            return
        failed = await workers.cannot_start(conn, worker.ref, news.reason,
                                            job_error=news.reason, created=True, actor=ACTOR)
    if failed:
        log.warning("worker %s cannot start: %s", worker.id, news.reason)
