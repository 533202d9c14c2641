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

-- The audit trail of sagas: every state a step takes, kept by a trigger, append-only.
CREATE TABLE saga_step_history (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq           bigserial NOT NULL UNIQUE,  -- the order of the trail
    saga_id       uuid NOT NULL REFERENCES sagas (id),
    step_name     text NOT NULL,
    state         text NOT NULL,
    retry_count   integer NOT NULL,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX saga_step_history_saga_idx ON saga_step_history (saga_id, seq);

CREATE FUNCTION hodei_saga_step_history() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state
       OR NEW.retry_count IS DISTINCT FROM OLD.retry_count THEN
        INSERT INTO saga_step_history (saga_id, step_name, state, retry_count, error)
        VALUES (NEW.saga_id, NEW.step_name, NEW.state, NEW.retry_count, NEW.error);
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER saga_steps_history AFTER INSERT OR UPDATE ON saga_steps
    FOR EACH ROW EXECUTE FUNCTION hodei_saga_step_history();
CREATE FUNCTION hodei_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER saga_step_history_append_only BEFORE UPDATE OR DELETE ON saga_step_history
    FOR EACH ROW EXECUTE FUNCTION hodei_append_only();
