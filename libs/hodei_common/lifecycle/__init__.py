"""The one home of every state change of jobs, workers and sagas, and of the audit trail.

* :mod:`.transitions`: the transition tables (from-states, to-state, event, subject) of each
  aggregate; a transition that is not in its table does not exist.
* :mod:`.jobs`, :mod:`.workers`: one named function per transition. Each runs ONE named
  statement (``sql/jobs.sql``, ``sql/workers.sql``, named parameters) that makes the change
  only when its fence holds (expected states, attempt, worker), and in the same statement
  records its saga step and its events.
* :mod:`.events`: the one constructor of event envelopes (id, time, actor, correlation id,
  trace context), and how a statement receives them.
* ``sql/routines.sql``: the database functions those statements share (recording events,
  moving saga steps), created by ``hodei migrate``.

Services' stores keep reads only.
"""

from __future__ import annotations

from pathlib import Path

SQL_DIR = Path(__file__).with_name("sql")
ROUTINES_SQL = SQL_DIR / "routines.sql"
