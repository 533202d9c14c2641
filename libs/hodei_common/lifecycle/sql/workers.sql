-- Every statement that changes a worker. Each takes its fence and its target from the
-- worker transition table (`:from_states`, `:to_state`; see transitions.py), makes the
-- change only while the fence holds, and records in the same statement its saga step and
-- its events (`:events`). A statement that returns no row changed nothing.
--
-- Sagas (saga_steps, with every step change kept in saga_step_history):
-- * provisioning (the worker): create_worker_row (request) -> create_resource (the
--   provisioner; retried on redelivery) -> await_registration (register). A worker that
--   fails before it registers ends it COMPENSATED: marked FAILED, its resource destroyed,
--   its job, still QUEUED, gets another worker from the next dispatch pass.
-- * recovery (a lost worker): declare_worker_failed (why, in its error) -> settle_job (in
--   the same statement) -> destroy_resource (the provisioner's release).
-- * execution (a job, one per attempt; jobs.sql): assign -> start -> finish; a lost worker
--   fails the step under way, COMPENSATED when the job is requeued, FAILED otherwise.

-- name: request
-- A CREATING worker requested by a dispatch pass, for `:for_job_id` (NULL: the warm pool),
-- with its provisioning saga opened, its first step done.
WITH requested AS (
    INSERT INTO workers (id, provider, mode, state, cpus, memory_bytes, for_job_id)
    VALUES (:worker_id, :provider, :mode, :to_state, :cpus, :memory_bytes, :for_job_id)
    RETURNING id
)
SELECT requested.id,
       hodei_saga_open('provisioning', requested.id,
                       ARRAY['create_worker_row', 'create_resource', 'await_registration'], 1)
           AS saga,
       hodei_record_events(:events, ARRAY['request']) AS recorded
FROM requested;

-- name: begin_create
-- The provisioner is about to create the worker's resource (again, on a redelivery: the
-- step counts a retry).
SELECT id, hodei_saga_step('provisioning', id, 'create_resource', 'RUNNING') AS saga
FROM workers
WHERE id = :worker_id AND state = ANY(:from_states);

-- name: record_resource
-- The agent may have registered (READY, even BUSY) before its resource id is recorded.
WITH recorded_resource AS (
    UPDATE workers SET provider_resource_id = :resource_id
    WHERE id = :worker_id AND provider_resource_id IS NULL AND state = ANY(:from_states)
    RETURNING id
)
SELECT r.id,
       hodei_saga_advance('provisioning', r.id, 'create_resource', 'await_registration',
                          'RUNNING') AS saga,
       hodei_record_events(:events, ARRAY['record_resource']) AS recorded
FROM recorded_resource AS r;

-- name: fail_create
-- The provider could not create the worker: it has no resource, nothing more to undo.
WITH failed AS (
    UPDATE workers SET state = :to_state, error = :error
    WHERE id = :worker_id AND state = ANY(:from_states)
    RETURNING id
)
SELECT failed.id,
       hodei_saga_step('provisioning', failed.id, 'create_resource', 'FAILED', :error,
                       'COMPENSATED') AS saga,
       hodei_record_events(:events, ARRAY['fail_create']) AS recorded
FROM failed;

-- name: cannot_start
-- The provider says the worker can never start (its image cannot be pulled, no node can
-- take it): the CREATING worker becomes FAILED (`:reason`) and the QUEUED job it was made
-- for (`:job_id` at `:attempt`, if still so) FAILED with `:job_error`, at once: another
-- worker would fail the same way.
WITH failed AS (
    UPDATE workers SET state = :to_state, error = :reason
    WHERE id = :worker_id AND state = ANY(:from_states)
    RETURNING id
),
ended AS (
    UPDATE jobs SET state = :job_to, error = :job_error, completed_at = now()
    WHERE id = :job_id AND attempt = :attempt AND state = ANY(:job_from)
      AND EXISTS (SELECT 1 FROM failed)
    RETURNING id
)
SELECT failed.id, (SELECT id FROM ended) AS job_id,
       hodei_saga_step('provisioning', failed.id, :step, 'FAILED', :reason,
                       'COMPENSATED') AS saga,
       hodei_record_events(:events, CASE WHEN EXISTS (SELECT 1 FROM ended)
                                         THEN ARRAY['cannot_start', 'fail_unstartable']
                                         ELSE ARRAY['cannot_start'] END) AS recorded
FROM failed;

-- name: queued_attempt
-- The attempt of a job that is still QUEUED (what `cannot_start` fences on).
SELECT attempt FROM jobs WHERE id = :job_id AND state = 'QUEUED';

-- name: register
-- The agent spent its bootstrap token (in the same transaction): the worker is READY.
WITH registered AS (
    UPDATE workers AS w SET state = :to_state, registered_at = now(), idle_since = now(),
                            hostname = :hostname, nats_public_key = :public_key
    FROM provider_configs AS p
    WHERE w.id = :worker_id AND w.state = ANY(:from_states) AND p.name = w.provider
    RETURNING w.id, w.mode, w.provider, w.for_job_id, p.settings,
              extract(epoch FROM w.registered_at - w.created_at)::float8 AS provision_s
)
SELECT r.*,
       hodei_saga_advance('provisioning', r.id, 'create_resource', 'await_registration',
                          'COMPLETED', 'COMPLETED') AS saga,
       hodei_record_events(:events, ARRAY['register']) AS recorded
FROM registered AS r;

-- name: retire
-- An idle worker leaves (`retire_idle`: the scheduler's idle limit; `wind_down`: the
-- platform stops): the provisioner destroys it on WorkerTerminating.
WITH retired AS (
    UPDATE workers SET state = :to_state, current_job_id = NULL
    WHERE id = :worker_id AND state = ANY(:from_states)
    RETURNING id
)
SELECT retired.id, hodei_record_events(:events, ARRAY['retire']) AS recorded
FROM retired;

-- name: terminate
-- The provisioner destroyed the worker's resource.
WITH terminated AS (
    UPDATE workers SET state = :to_state, terminated_at = now(), current_job_id = NULL
    WHERE id = :worker_id AND state = ANY(:from_states)
    RETURNING id
)
SELECT terminated.id, hodei_record_events(:events, ARRAY['terminate']) AS recorded
FROM terminated;

-- name: release_failed
-- A FAILED worker stays FAILED; terminated_at records that its resource is gone too, the
-- last step of its recovery saga.
WITH released AS (
    UPDATE workers SET terminated_at = now()
    WHERE id = :worker_id AND state = ANY(:from_states) AND terminated_at IS NULL
    RETURNING id
)
SELECT released.id,
       hodei_saga_step('recovery', released.id, 'destroy_resource', 'COMPLETED', NULL,
                       'COMPLETED') AS saga
FROM released;

-- name: beat
-- The newest heartbeat of each worker of a batch (`:worker_ids`, `:beats`); a late, older
-- beat never moves the time back. Returns the beats of workers that should be silent:
-- finished, declared dead (`:silent_states`), or unknown; a beat taken before its worker's
-- resource was destroyed (`terminated_at`), only applied late, is no sign of life.
WITH beat AS (
    SELECT * FROM unnest(:worker_ids::uuid[], :beats::timestamptz[]) AS b(id, at)
),
recorded AS (
    UPDATE workers SET last_heartbeat = beat.at
    FROM beat
    WHERE workers.id = beat.id AND workers.state = ANY(:from_states)
      AND (workers.last_heartbeat IS NULL OR workers.last_heartbeat < beat.at)
)
SELECT beat.id, w.state, w.provider, coalesce(w.current_job_id, w.for_job_id) AS job_id
FROM beat LEFT JOIN workers AS w ON w.id = beat.id
WHERE w.id IS NULL
   OR (w.state = ANY(:silent_states) AND (w.terminated_at IS NULL OR beat.at > w.terminated_at));

-- name: order_stop
-- The first beat of a worker that should be gone: it is told to stop, and that is recorded.
WITH ordered AS (
    UPDATE workers SET stop_ordered_at = now()
    WHERE id = :worker_id AND state = ANY(:from_states) AND stop_ordered_at IS NULL
    RETURNING id
)
SELECT ordered.id, hodei_record_events(:events, ARRAY['order_stop']) AS recorded
FROM ordered;

-- name: note_status
-- The provider's latest words about a live worker's resource (a pod Pending:
-- ContainerCreating), kept with the time they were first said; the same words again change
-- nothing. A progress note, like a heartbeat: no event.
UPDATE workers SET resource_status = :status, resource_status_at = now()
WHERE id = :worker_id AND state = ANY(:from_states)
  AND resource_status IS DISTINCT FROM :status
RETURNING id;

-- name: extend_credentials
-- Its agent is given a NATS user JWT expiring at :expires_at: the latest expiry of the JWTs
-- its key may hold is kept (a lost worker's revocation lasts until then). No row: the worker
-- is not live, and no JWT is given.
UPDATE workers
SET nats_jwt_expires_at = greatest(nats_jwt_expires_at, :expires_at)
WHERE id = :worker_id AND state = ANY(:from_states)
RETURNING id;

-- name: live_worker
-- What a finder of a lost worker reads first: the worker, if live, and the job it holds.
SELECT w.id, w.provider, w.state, w.for_job_id, j.id AS job_id, j.attempt, j.max_attempts,
       j.cancel_requested_at IS NOT NULL AS cancel_requested, j.traceparent
FROM workers AS w
LEFT JOIN jobs AS j ON j.worker_id = w.id AND j.state = ANY(:held_states)
WHERE w.id = :worker_id AND w.state = ANY(:live_states);

-- name: lose
-- A live worker that holds no job becomes FAILED (`:reason`): its recovery saga opened
-- with its first two steps done, its provisioning saga compensated if it never registered.
-- Nothing changes while it holds a job: the finder looks again.
WITH lost AS (
    UPDATE workers SET state = :to_state, error = :reason, current_job_id = NULL,
                       idle_since = NULL
    WHERE id = :worker_id AND state = ANY(:from_states)
      AND NOT EXISTS (SELECT 1 FROM jobs
                      WHERE worker_id = :worker_id AND state IN ('ASSIGNED', 'RUNNING'))
    RETURNING id
)
SELECT lost.id,
       hodei_saga_open('recovery', lost.id,
                       ARRAY['declare_worker_failed', 'settle_job', 'destroy_resource'], 2,
                       :reason) AS recovery,
       hodei_saga_step('provisioning', lost.id, 'await_registration', 'FAILED', :reason,
                       'COMPENSATED') AS provisioning,
       hodei_record_events(:events, ARRAY['lose']) AS recorded
FROM lost;

-- name: lose_and_requeue
-- A live worker becomes FAILED (as `lose`) and the job it holds (`:job_id` at `:attempt`,
-- no cancel asked for, attempts left) is QUEUED again as attempt + 1 after `:backoff_s`
-- (job transition `requeue`); its execution saga ends COMPENSATED. Nothing changes when
-- the job is no longer so: the finder looks again.
WITH held AS (
    SELECT id FROM jobs
    WHERE id = :job_id AND attempt = :attempt AND worker_id = :worker_id
      AND state = ANY(:job_from) AND cancel_requested_at IS NULL AND attempt < max_attempts
    FOR UPDATE
),
lost AS (
    UPDATE workers SET state = :to_state, error = :reason, current_job_id = NULL,
                       idle_since = NULL
    WHERE id = :worker_id AND state = ANY(:from_states) AND EXISTS (SELECT 1 FROM held)
    RETURNING id
),
requeued AS (
    UPDATE jobs SET state = :job_to, attempt = attempt + 1, worker_id = NULL,
                    assigned_at = NULL, accepted_at = NULL, started_at = NULL,
                    exit_code = NULL, error = :job_error,
                    not_before = now() + make_interval(secs => :backoff_s)
    WHERE id = (SELECT id FROM held) AND EXISTS (SELECT 1 FROM lost)
    RETURNING id
)
SELECT lost.id,
       hodei_saga_open('recovery', lost.id,
                       ARRAY['declare_worker_failed', 'settle_job', 'destroy_resource'], 2,
                       :reason) AS recovery,
       hodei_saga_fail('execution', requeued.id, :job_error, 'COMPENSATED') AS execution,
       hodei_record_events(:events, ARRAY['lose', 'requeue']) AS recorded
FROM lost, requeued;

-- name: lose_and_end_job
-- A live worker becomes FAILED (as `lose`) and the job it holds (`:job_id` at `:attempt`,
-- a cancel asked for or not as `:cancel_requested` says) ends as `:job_to` (job transition
-- `cancel`, `fail` or `time_out`) with `:job_error`; its execution saga ends FAILED.
-- Nothing changes when the job is no longer so: the finder looks again.
WITH held AS (
    SELECT id FROM jobs
    WHERE id = :job_id AND attempt = :attempt AND worker_id = :worker_id
      AND state = ANY(:job_from) AND (cancel_requested_at IS NOT NULL) = :cancel_requested
    FOR UPDATE
),
lost AS (
    UPDATE workers SET state = :to_state, error = :reason, current_job_id = NULL,
                       idle_since = NULL
    WHERE id = :worker_id AND state = ANY(:from_states) AND EXISTS (SELECT 1 FROM held)
    RETURNING id
),
ended AS (
    UPDATE jobs SET state = :job_to, error = :job_error, completed_at = now(),
                    -- a job failed by its worker's loss counts as started (for its duration)
                    started_at = CASE WHEN :job_to = 'FAILED' THEN coalesce(started_at, now())
                                      ELSE started_at END
    WHERE id = (SELECT id FROM held) AND EXISTS (SELECT 1 FROM lost)
    RETURNING id
)
SELECT lost.id,
       hodei_saga_open('recovery', lost.id,
                       ARRAY['declare_worker_failed', 'settle_job', 'destroy_resource'], 2,
                       :reason) AS recovery,
       hodei_saga_fail('execution', ended.id, :job_error, 'FAILED') AS execution,
       hodei_record_events(:events, ARRAY['lose', 'end_job']) AS recorded
FROM lost, ended;
