-- Failure recovery: a requeued job's backoff, the stop order sent to a worker that came back
-- after it was declared dead, and the supervisor's sweeps.

-- A QUEUED job is not dispatched before not_before (NULL: at once); set when it is requeued.
ALTER TABLE jobs ADD COLUMN not_before timestamptz;
-- When a worker declared FAILED (or TERMINATED) was first seen alive again and told to stop.
ALTER TABLE workers ADD COLUMN stop_ordered_at timestamptz;

-- The supervisor's questions: live workers by last sign of life, jobs past their deadline.
CREATE INDEX workers_live_idx ON workers (state, last_heartbeat)
    WHERE state IN ('CREATING', 'READY', 'BUSY');
CREATE INDEX jobs_running_idx ON jobs (started_at) WHERE state = 'RUNNING';
CREATE INDEX jobs_worker_idx ON jobs (worker_id) WHERE state IN ('ASSIGNED', 'RUNNING');
CREATE INDEX sagas_state_idx ON sagas (state) WHERE state IN ('RUNNING', 'COMPENSATING');
