"""Which provider each worker belongs to: it never changes, so it is learnt once."""

from __future__ import annotations

from collections import OrderedDict
from uuid import UUID

from hodei_common.database import Conn
from hodei_scheduler import store


class WorkerProviders:
    """Learnt as the dispatcher assigns jobs, looked up otherwise; the oldest entries are
    forgotten first once ``size`` are known."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._known: OrderedDict[UUID, str] = OrderedDict()

    def remember(self, worker_id: UUID, provider: str) -> None:
        self._known[worker_id] = provider
        self._known.move_to_end(worker_id)
        while len(self._known) > self._size:
            self._known.popitem(last=False)

    async def provider(self, conn: Conn, worker_id: UUID) -> str | None:
        """The worker's provider; None for a worker the database does not know."""
        known = self._known.get(worker_id)
        if known is None:
            known = await store.worker_provider(conn, worker_id)
            if known is not None:
                self.remember(worker_id, known)
        return known
