"""Sagas: the long processes around a worker and a job, recorded step by step in ``sagas`` and
``saga_steps`` (state, retry count, error), with every step change kept in
``saga_step_history`` by a trigger (the audit trail).

* ``provisioning`` (aggregate: the worker): ``create_worker_row`` (the dispatch pass) →
  ``create_resource`` (the provisioner; retried on redelivery) → ``await_registration`` (the
  agent's token exchange). A step that fails compensates: the worker is marked FAILED, its
  resource destroyed (the provisioner's release), and its job, still QUEUED, gets another
  worker from the next dispatch pass. The saga ends ``COMPENSATED``.
* ``execution`` (aggregate: the job; one per attempt): ``assign`` (the dispatch pass) →
  ``start`` (its STARTED report, or its FINISHED one) → ``finish`` (its FINISHED report). A
  lost worker fails the step under way with the reason; the saga ends ``COMPENSATED`` when the
  job is requeued (the next attempt opens a new one), ``FAILED`` otherwise.
* ``recovery`` (aggregate: the lost worker): ``declare_worker_failed`` (why, in its error) →
  ``settle_job`` (requeued, failed, cancelled or timed out, in the same statement) →
  ``destroy_resource`` (the provisioner's release of the FAILED worker).

No saga step runs alone: each is a CTE riding in the statement of the state change it
records (:func:`hodei_common.outbox.transition`), so the record can never disagree with the
state. Step SQL takes the aggregate id (and an error text, when given) as parameters.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from hodei_common.database import Conn

PROVISIONING = "provisioning"
EXECUTION = "execution"
RECOVERY = "recovery"
PROVISIONING_STEPS = ("create_worker_row", "create_resource", "await_registration")
EXECUTION_STEPS = ("assign", "start", "finish")
RECOVERY_STEPS = ("declare_worker_failed", "settle_job", "destroy_resource")


class StepState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    COMPENSATED = "COMPENSATED"


_ENDS = (StepState.COMPLETED, StepState.FAILED, StepState.COMPENSATED)


def start(saga_type: str, steps: Sequence[str], aggregate: str, *, done: int,
          error: str = "NULL", rows: str = "(SELECT 1 FROM state LIMIT 1) AS applied",
          ) -> list[tuple[str, str]]:
    """Transition steps opening a saga for ``aggregate`` (a SQL parameter such as ``$1``, or
    a column of ``rows``: one saga per row) when the state step applied: its first ``done``
    steps COMPLETED (the first with ``error``, a SQL parameter or NULL), the rest PENDING."""
    values = ", ".join(f"({i + 1}, '{name}')" for i, name in enumerate(steps))
    saga = f"""
INSERT INTO sagas (id, saga_type, aggregate_id, state, current_step, completed_at)
SELECT gen_random_uuid(), '{saga_type}', {aggregate}::uuid,
       CASE WHEN {done} >= {len(steps)} THEN 'COMPLETED' ELSE 'RUNNING' END,
       '{steps[min(done, len(steps) - 1)]}',
       CASE WHEN {done} >= {len(steps)} THEN now() END
FROM {rows}
RETURNING id"""
    saga_steps = f"""
INSERT INTO saga_steps (saga_id, position, step_name, state, error, started_at, completed_at)
SELECT s.id, p.position, p.name,
       CASE WHEN p.position <= {done} THEN 'COMPLETED' ELSE 'PENDING' END,
       CASE WHEN p.position = 1 THEN {error}::text END,
       CASE WHEN p.position <= {done} THEN now() END,
       CASE WHEN p.position <= {done} THEN now() END
FROM {saga_type}_saga AS s, (VALUES {values}) AS p(position, name)
RETURNING id"""
    return [(f"{saga_type}_saga", saga), (f"{saga_type}_steps", saga_steps)]


def step(saga_type: str, name: str, to: StepState, aggregate: str, *, error: str = "NULL",
         saga_state: str | None = None, after: str = "state", cte: str | None = None,
         touch_saga: bool = True) -> list[tuple[str, str]]:
    """Transition steps moving step ``name`` of the aggregate's open saga to ``to`` (with
    ``error``) when step ``after`` applied, and the saga's ``current_step`` (and state, if
    given: ``COMPLETED``, ``COMPENSATED``...) with it. Moving a step that is RUNNING or FAILED
    to RUNNING again counts a retry. Of several steps of one saga moved in one statement,
    only the last may ``touch_saga``: a statement must not update the same row twice."""
    cte = cte or f"{saga_type}_{name}"
    ended = "now()" if to in _ENDS else "NULL"
    moved = f"""
UPDATE saga_steps AS s SET state = '{to}', error = coalesce({error}::text, s.error),
    retry_count = s.retry_count + CASE WHEN '{to}' = 'RUNNING' AND s.state IN ('RUNNING',
                                       'FAILED') THEN 1 ELSE 0 END,
    started_at = coalesce(s.started_at, now()), completed_at = {ended}
FROM sagas AS g
WHERE g.id = s.saga_id AND g.saga_type = '{saga_type}' AND g.aggregate_id = {aggregate}::uuid
  AND g.state IN ('RUNNING', 'COMPENSATING') AND s.step_name = '{name}'
  AND EXISTS (SELECT 1 FROM {after})
RETURNING s.saga_id"""
    if not touch_saga:
        return [(cte, moved)]
    new_state = f"'{saga_state}'" if saga_state else "g.state"
    done = "now()" if saga_state in ("COMPLETED", "COMPENSATED", "FAILED") else "NULL"
    saga = f"""
UPDATE sagas AS g SET current_step = '{name}', state = {new_state},
    error = CASE WHEN '{to}' = 'FAILED' THEN {error}::text ELSE g.error END,
    completed_at = {done}
WHERE g.id IN (SELECT saga_id FROM {cte})
RETURNING g.id"""
    return [(cte, moved), (f"{cte}_saga", saga)]


async def apply(conn: Conn, steps: list[tuple[str, str]], *args: object,
                state_sql: str = "SELECT 1") -> None:
    """Run saga steps in a statement of their own after ``state_sql`` (a change without an
    event; by default nothing: the change they record ran earlier in the transaction)."""
    ctes = ",\n".join(f"{name} AS ({sql})" for name, sql in [("state", state_sql), *steps])
    await conn.execute(f"WITH {ctes} SELECT 1", *args)
