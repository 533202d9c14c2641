-- Every statement that changes a job. Each takes its fence and its target from the job
-- transition table (`:from_states`, `:to_state`; see transitions.py), makes the change only
-- while the fence holds, and records in the same statement its saga step and its events
-- (`:events`, made by lifecycle/events.py; `hodei_record_events` keeps those of the steps
-- named). A statement that returns no row changed nothing and recorded nothing.

-- name: submit
-- New QUEUED jobs, one per element of the arrays (`:job_ids` and the rest, in order), in one
-- statement: the api stores the submits that arrive together at once. A job is not inserted
-- when its provider is unknown or disabled, or its id or idempotency key is taken (also by
-- an earlier job of the same call): the caller then finds out which. Rows come back in the
-- order of the arrays, one per job inserted.
-- With `:assign_now`, jobs that find an idle worker go to one at once: a READY worker of
-- their provider made with their limits, not held for a job that still waits, the longest
-- idle first, the jobs in order; and only while no job of the same provider and limits waits
-- (those go first: the scheduler pairs them). Such a job is stored ASSIGNED to its worker
-- (transition `assign`), the worker made BUSY with it (worker transition `occupy`) and the
-- job's execution saga opened, as a dispatch pass does; its row also says the worker's
-- `mode` and whether its provider keeps a warm pool with room to grow (`pool_short`: the
-- scheduler should make up for it). Each job's events (`:events`, a JSON array per job) name
-- its worker by the job's `:picked`, a stand-in id replaced here; they are recorded in one
-- call for the whole statement. A job's `:args` and `:envs` are JSON texts.
-- The ids go through a subquery so that the planner cannot count the jobs of each call:
-- with one estimate for every call, one generic plan serves them all instead of planning
-- each call anew (which costs more than running it).
WITH input AS MATERIALIZED (
    SELECT * FROM unnest((SELECT :job_ids::uuid[]), :namespaces::text[], :names::text[],
                         :commands::text[], :args::text[], :envs::text[],
                         :timeouts::float8[], :providers::text[], :priorities::int[],
                         :max_attempts::int[], :idempotency_keys::text[], :cpus::float8[],
                         :memory_bytes::bigint[], :traceparents::text[], :events::text[],
                         :picked::text[])
        WITH ORDINALITY AS i(id, namespace, name, command, args, env, timeout_s, provider,
                             priority, max_attempts, idempotency_key, cpus, memory_bytes,
                             traceparent, events, picked, n)
),
wanted AS (
    SELECT provider, cpus, memory_bytes, count(*) AS jobs FROM input
    WHERE :assign_now
    GROUP BY provider, cpus, memory_bytes
),
candidates AS (
    SELECT w.id, wanted.jobs,
           row_number() OVER (PARTITION BY w.provider, w.cpus, w.memory_bytes
                              ORDER BY w.idle_since NULLS FIRST, w.id) AS rank
    FROM workers AS w
    JOIN wanted ON wanted.provider = w.provider AND wanted.cpus IS NOT DISTINCT FROM w.cpus
                   AND wanted.memory_bytes IS NOT DISTINCT FROM w.memory_bytes
    WHERE w.state = ANY(:occupy_from)
      AND NOT EXISTS (SELECT 1 FROM jobs AS q WHERE q.id = w.for_job_id AND q.state = 'QUEUED')
      AND NOT EXISTS (SELECT 1 FROM jobs AS q
                      WHERE q.state = 'QUEUED' AND q.provider = w.provider
                        AND q.cpus IS NOT DISTINCT FROM w.cpus
                        AND q.memory_bytes IS NOT DISTINCT FROM w.memory_bytes
                        AND (q.not_before IS NULL OR q.not_before <= now()))
),
idle AS MATERIALIZED (
    SELECT w.id, w.mode, w.provider, w.cpus, w.memory_bytes, w.idle_since FROM workers AS w
    WHERE w.id IN (SELECT id FROM candidates WHERE rank <= jobs) AND w.state = ANY(:occupy_from)
    FOR UPDATE SKIP LOCKED
),
paired AS MATERIALIZED (
    SELECT i.*, w.id AS worker_id, w.mode AS worker_mode
    FROM (SELECT input.*, row_number() OVER (PARTITION BY provider, cpus, memory_bytes
                                             ORDER BY n) AS rank
          FROM input) AS i
    LEFT JOIN (SELECT idle.*, row_number() OVER (PARTITION BY provider, cpus, memory_bytes
                                                 ORDER BY idle_since NULLS FIRST, id) AS rank
               FROM idle) AS w
      ON w.provider = i.provider AND w.cpus IS NOT DISTINCT FROM i.cpus
         AND w.memory_bytes IS NOT DISTINCT FROM i.memory_bytes AND w.rank = i.rank
),
submitted AS (
    INSERT INTO jobs (id, namespace, name, state, command, args, env, timeout_s, provider,
                      priority, max_attempts, idempotency_key, cpus, memory_bytes, traceparent,
                      worker_id, assigned_at)
    SELECT p.id, p.namespace, p.name,
           CASE WHEN p.worker_id IS NULL THEN :to_state ELSE :assign_to END,
           p.command, ARRAY(SELECT jsonb_array_elements_text(p.args::jsonb)), p.env::jsonb,
           p.timeout_s,
           p.provider, p.priority, p.max_attempts, p.idempotency_key, p.cpus, p.memory_bytes,
           p.traceparent, p.worker_id, CASE WHEN p.worker_id IS NOT NULL THEN now() END
    FROM paired AS p
    WHERE EXISTS (SELECT 1 FROM provider_configs WHERE name = p.provider AND enabled)
    ORDER BY p.n
    ON CONFLICT DO NOTHING
    RETURNING *
),
occupied AS (
    UPDATE workers SET state = :occupy_to, current_job_id = s.id, idle_since = NULL
    FROM submitted AS s
    WHERE workers.id = s.worker_id AND workers.state = ANY(:occupy_from)
    RETURNING workers.id
),
recorded AS MATERIALIZED (
    SELECT hodei_record_events(
               coalesce((SELECT json_agg(e.event ORDER BY p.n, e.k)
                         FROM submitted AS s JOIN paired AS p ON p.id = s.id,
                              json_array_elements(replace(p.events, p.picked,
                                                          coalesce(s.worker_id::text, p.picked)
                                                          )::json) WITH ORDINALITY AS e(event, k)
                         WHERE e.event->>'step' = ANY(
                             CASE WHEN s.worker_id IS NULL THEN ARRAY['submit']
                                  ELSE ARRAY['submit_assigned', 'assign'] END)),
                        '[]'::json),
               ARRAY['submit', 'submit_assigned', 'assign']) AS recorded
)
SELECT s.*, p.worker_mode,
       s.worker_id IS NOT NULL AND (
           SELECT c.min_idle > 0 AND c.max_workers > (
               SELECT count(*) FROM workers AS a
               WHERE a.provider = c.name
                 AND a.state IN ('CREATING', 'READY', 'BUSY', 'TERMINATING'))
           FROM provider_configs AS c WHERE c.name = s.provider) AS pool_short,
       (SELECT count(*) FROM occupied) AS occupied,
       CASE WHEN s.worker_id IS NOT NULL THEN
           hodei_saga_open('execution', s.id, ARRAY['assign', 'start', 'finish'], 1) END
           AS saga,
       r.recorded
FROM submitted AS s JOIN paired AS p ON p.id = s.id CROSS JOIN recorded AS r
ORDER BY p.n;

-- name: cancel_queued
WITH cancelled AS (
    UPDATE jobs SET state = :to_state, completed_at = now()
    WHERE id = :job_id AND state = ANY(:from_states)
    RETURNING *
)
SELECT cancelled.*, hodei_record_events(:events, ARRAY['cancel_queued']) AS recorded
FROM cancelled;

-- name: request_cancel
-- Once: a job whose cancel was asked for before is left as it is.
WITH requested AS (
    UPDATE jobs SET cancel_requested_at = now()
    WHERE id = :job_id AND state = ANY(:from_states) AND cancel_requested_at IS NULL
    RETURNING *
)
SELECT requested.*, hodei_record_events(:events, ARRAY['request_cancel']) AS recorded
FROM requested;

-- name: assign
-- The pairs a dispatch pass locked (`:job_ids`, `:worker_ids`, `:attempts`, in step): each
-- job ASSIGNED to its worker, fenced by its attempt; each worker BUSY with its job (the
-- worker transition `occupy`); each job's execution saga opened with `assign` done; and
-- the events of the jobs that moved (an event's step is its job's id).
WITH pairs AS (
    SELECT * FROM unnest(:job_ids::uuid[], :worker_ids::uuid[], :attempts::int[])
        AS p(job_id, worker_id, attempt)
),
assigned AS (
    UPDATE jobs SET state = :to_state, worker_id = p.worker_id, assigned_at = now()
    FROM pairs AS p
    -- ids named outright as well: the plan then looks each up by its key whatever the
    -- statistics say (a plan made while the table was small would scan it all)
    WHERE jobs.id = ANY(:job_ids::uuid[]) AND jobs.id = p.job_id
      AND jobs.state = ANY(:from_states) AND jobs.attempt = p.attempt
    RETURNING jobs.id, jobs.attempt, jobs.worker_id, jobs.command, jobs.args, jobs.env,
              jobs.timeout_s, jobs.assigned_at, jobs.namespace, jobs.traceparent
),
occupied AS (
    UPDATE workers SET state = :occupy_to, current_job_id = a.id, idle_since = NULL
    FROM assigned AS a
    WHERE workers.id = a.worker_id AND workers.state = ANY(:occupy_from)
    RETURNING workers.id
)
SELECT a.*, (SELECT count(*) FROM occupied) AS occupied,
       hodei_saga_open('execution', a.id, ARRAY['assign', 'start', 'finish'], 1) AS saga,
       (SELECT hodei_record_events(:events, ARRAY(SELECT id::text FROM assigned))) AS recorded
FROM assigned AS a;

-- name: accept
WITH accepted AS (
    UPDATE jobs SET accepted_at = :at
    WHERE id = :job_id AND attempt = :attempt AND worker_id = :worker_id
      AND state = ANY(:from_states) AND accepted_at IS NULL
    RETURNING id, cancel_requested_at
)
SELECT accepted.*, hodei_record_events(:events, ARRAY['accept']) AS recorded
FROM accepted;

-- name: start
-- A STARTED report also says the assignment was accepted, when no ACCEPTED came before it
-- (then JobAccepted, step `accept`, is recorded before JobStarted).
WITH before AS (
    SELECT id, accepted_at FROM jobs WHERE id = :job_id FOR UPDATE
),
started AS (
    UPDATE jobs SET state = :to_state, started_at = :at,
                    accepted_at = coalesce(jobs.accepted_at, :at)
    FROM before
    WHERE jobs.id = :job_id AND jobs.id = before.id AND jobs.attempt = :attempt
      AND jobs.worker_id = :worker_id AND jobs.state = ANY(:from_states)
    RETURNING jobs.id, jobs.cancel_requested_at, before.accepted_at IS NULL AS newly_accepted
)
SELECT s.*,
       hodei_saga_advance('execution', s.id, 'start', 'finish', 'RUNNING') AS saga,
       hodei_record_events(:events, CASE WHEN s.newly_accepted THEN ARRAY['accept', 'start']
                                         ELSE ARRAY['start'] END) AS recorded
FROM started AS s;

-- name: finish
-- The job ends as its FINISHED report says (`:to_state` of succeed, fail, time_out or
-- cancel), recording the steps it skipped reporting (accepted; started, from
-- `:started_at`, when its STARTED never came). Its worker leaves it in the same statement:
-- freed for its next job (worker transition `free`) when it is reusable, `:reuse_worker`
-- (its agent stays, the job was not cancelled) and it has jobs left under its provider's
-- max_jobs; retired otherwise (worker transition `retire`). `waiting`: whether a job of the
-- provider waited as the statement ran.
WITH before AS (
    SELECT id, accepted_at, started_at FROM jobs WHERE id = :job_id FOR UPDATE
),
finished AS (
    UPDATE jobs SET state = :to_state, exit_code = :exit_code, error = :error,
                    completed_at = :at,
                    started_at = coalesce(jobs.started_at, :started_at::timestamptz, :at),
                    accepted_at = coalesce(jobs.accepted_at, :started_at::timestamptz, :at)
    FROM before
    WHERE jobs.id = :job_id AND jobs.id = before.id AND jobs.attempt = :attempt
      AND jobs.worker_id = :worker_id AND jobs.state = ANY(:from_states)
    RETURNING jobs.id, jobs.namespace, jobs.provider, jobs.created_at, jobs.started_at,
              jobs.completed_at, before.accepted_at IS NULL AS newly_accepted,
              before.started_at IS NULL AND :started_at::timestamptz IS NOT NULL
                  AS newly_started
),
freed AS (
    UPDATE workers SET state = :free_to, current_job_id = NULL,
                       jobs_run = workers.jobs_run + 1, idle_since = now()
    FROM provider_configs AS p
    WHERE workers.id = :worker_id AND workers.state = ANY(:free_from)
      AND EXISTS (SELECT 1 FROM finished)
      AND p.name = workers.provider AND workers.mode = 'reusable' AND :reuse_worker
      AND coalesce(workers.jobs_run + 1 < (p.settings->>'max_jobs')::float8, true)
    RETURNING workers.id
),
retired AS (
    UPDATE workers SET state = :retire_to, current_job_id = NULL, jobs_run = jobs_run + 1
    WHERE id = :worker_id AND state = ANY(:retire_from) AND EXISTS (SELECT 1 FROM finished)
      AND NOT EXISTS (SELECT 1 FROM freed)
    RETURNING id
)
SELECT f.id, f.namespace, f.provider, f.created_at, f.started_at, f.completed_at,
       EXISTS (SELECT 1 FROM freed) AS freed,
       EXISTS (SELECT 1 FROM jobs AS q WHERE q.state = 'QUEUED' AND q.provider = f.provider)
           AS waiting,
       hodei_saga_advance('execution', f.id, 'start', 'finish', 'COMPLETED', 'COMPLETED')
           AS saga,
       hodei_record_events(:events, array_remove(ARRAY[
           CASE WHEN f.newly_accepted THEN 'accept' END,
           CASE WHEN f.newly_started THEN 'start' END,
           'finish',
           CASE WHEN EXISTS (SELECT 1 FROM freed) THEN 'free' END,
           CASE WHEN EXISTS (SELECT 1 FROM retired) THEN 'retire' END], NULL)) AS recorded
FROM finished AS f;

-- name: abandon
-- The platform stops while a job is ASSIGNED and no report says its agent took it (the
-- agent may never see it before it is stopped): the job ends CANCELLED with `:error`
-- rather than run again at the next start, its execution saga FAILED, and its worker is
-- retired (worker transition `retire`) for the provisioner to destroy. Nothing changes
-- once its agent reported taking it: then the agent cancels it itself.
WITH abandoned AS (
    UPDATE jobs SET state = :to_state, error = :error, completed_at = now()
    WHERE id = :job_id AND attempt = :attempt AND worker_id = :worker_id
      AND state = ANY(:from_states) AND accepted_at IS NULL
    RETURNING id
),
retired AS (
    UPDATE workers SET state = :retire_to, current_job_id = NULL
    WHERE id = :worker_id AND state = ANY(:retire_from) AND EXISTS (SELECT 1 FROM abandoned)
    RETURNING id
)
SELECT a.id, hodei_saga_fail('execution', a.id, :error, 'FAILED') AS saga,
       hodei_record_events(:events, CASE WHEN EXISTS (SELECT 1 FROM retired)
                                         THEN ARRAY['abandon', 'retire']
                                         ELSE ARRAY['abandon'] END) AS recorded
FROM abandoned AS a;

-- name: refuse_stale_report
-- Recorded once: the event's id (`:event_id`) is derived from the report.
SELECT hodei_record_events(:events, ARRAY['refuse_stale_report']) AS recorded
FROM jobs
WHERE id = :job_id AND state = ANY(:from_states)
  AND NOT EXISTS (SELECT 1 FROM domain_events WHERE id = :event_id);

-- name: record_log_archives
-- The job_log_files rows of stored archives, one per element of the arrays (`:job_ids`
-- and the rest, in step; a job at most once), and the truncation mark (transition
-- `mark_log_truncated`) of each job whose output passed the log's byte cap.
WITH archived AS (
    INSERT INTO job_log_files (job_id, attempt, storage_uri, size_bytes, entry_count, sha256,
                               truncated)
    SELECT * FROM unnest(:job_ids::uuid[], :attempts::int[], :storage_uris::text[],
                         :sizes::bigint[], :entry_counts::bigint[], :sha256s::text[],
                         :truncated::boolean[])
    ON CONFLICT (job_id, attempt) DO UPDATE
       SET storage_uri = EXCLUDED.storage_uri, size_bytes = EXCLUDED.size_bytes,
           entry_count = EXCLUDED.entry_count, sha256 = EXCLUDED.sha256,
           truncated = EXCLUDED.truncated
    RETURNING job_id, truncated
)
UPDATE jobs SET log_truncated = true
FROM archived AS a
WHERE a.truncated AND jobs.id = a.job_id AND jobs.state = ANY(:from_states)
  AND NOT jobs.log_truncated;
