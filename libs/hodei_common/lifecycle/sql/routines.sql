-- The bookkeeping every transition shares, as database functions: the statements in jobs.sql
-- and workers.sql call them in the statement of the state change they record, so the audit
-- trail, the outbox and the saga records can never disagree with the state. `hodei migrate`
-- (re)creates them whenever this file changes.

-- Records the events of a statement whose step applied, in the order given: the audit row
-- (domain_events) and the outbox row the relay publishes, then wakes the relay once.
-- `events` is a JSON array of objects with the columns below, `step` and `job`; an event is
-- kept when its step is in `applied`. An event whose `job` is set (lifecycle/events.py sets
-- it for an event written outside its job's trace: by a dispatch pass, a sweep) continues
-- the job's trace: it takes the job's stored traceparent unless it was written in that
-- trace after all (one primary-key lookup per such event). The plan is kept generic: a custom plan per call (the
-- default here) cost more than the whole statement. The array is parsed once, as jsonb:
-- every field read from `json` would parse its event's text again.
CREATE OR REPLACE FUNCTION hodei_record_events(events json, applied text[])
RETURNS integer LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    recorded integer;
BEGIN
    WITH chosen AS (
        SELECT e.n, e.event, e.event->'headers'->>'traceparent' AS written,
               CASE WHEN e.event->>'job' IS NOT NULL THEN
                   (SELECT j.traceparent FROM jobs AS j WHERE j.id = (e.event->>'job')::uuid)
               END AS stored
        FROM jsonb_array_elements(events::jsonb) WITH ORDINALITY AS e(event, n)
        WHERE e.event->>'step' = ANY(applied)
    ),
    traced AS (
        SELECT n, event,
               CASE WHEN stored IS NOT NULL AND split_part(coalesce(written, ''), '-', 2)
                                                <> split_part(stored, '-', 2)
                    THEN stored ELSE written END AS traceparent
        FROM chosen
    ),
    audit AS (
        INSERT INTO domain_events (id, event_type, aggregate_type, aggregate_id, correlation_id,
                                   actor, payload, occurred_at, trace_id)
        SELECT (event->>'id')::uuid, event->>'event_type', event->>'aggregate_type',
               (event->>'aggregate_id')::uuid, event->>'correlation_id', event->>'actor',
               (event->>'payload')::jsonb, (event->>'occurred_at')::timestamptz,
               coalesce(nullif(split_part(traceparent, '-', 2), ''), event->>'trace_id')
        FROM traced ORDER BY n
    )
    INSERT INTO outbox_events (id, subject, event_type, payload, headers)
    SELECT (event->>'id')::uuid, event->>'subject', event->>'event_type',
           convert_to(event->>'payload', 'UTF8'),
           (event->'headers')::jsonb
               || CASE WHEN traceparent IS NULL THEN '{}'
                       ELSE jsonb_build_object('traceparent', traceparent) END
    FROM traced ORDER BY n;
    GET DIAGNOSTICS recorded = ROW_COUNT;
    IF recorded > 0 THEN
        PERFORM pg_notify('hodei_outbox', '');
    END IF;
    RETURN recorded;
END;
$$;

-- Opens a saga for an aggregate: its first `done` steps COMPLETED (the first with
-- `first_error`), the others PENDING; current_step is the first not done (or the last).
CREATE OR REPLACE FUNCTION hodei_saga_open(saga text, aggregate uuid, steps text[],
                                           done integer, first_error text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    opened uuid := gen_random_uuid();
    finished boolean := done >= cardinality(steps);
BEGIN
    INSERT INTO sagas (id, saga_type, aggregate_id, state, current_step, completed_at)
    VALUES (opened, saga, aggregate, CASE WHEN finished THEN 'COMPLETED' ELSE 'RUNNING' END,
            steps[least(done + 1, cardinality(steps))],
            CASE WHEN finished THEN now() END);
    INSERT INTO saga_steps (saga_id, position, step_name, state, error, started_at,
                            completed_at)
    SELECT opened, p.position, p.name,
           CASE WHEN p.position <= done THEN 'COMPLETED' ELSE 'PENDING' END,
           CASE WHEN p.position = 1 THEN first_error END,
           CASE WHEN p.position <= done THEN now() END,
           CASE WHEN p.position <= done THEN now() END
    FROM unnest(steps) WITH ORDINALITY AS p(name, position);
    RETURN opened;
END;
$$;

-- Moves step `step` of the aggregate's open saga to `to_state` (with `error`), and the
-- saga's current_step with it (and its state, when `saga_state` is given). A step that is
-- RUNNING or FAILED and runs again counts a retry. Returns the sagas moved: none without an
-- open saga.
CREATE OR REPLACE FUNCTION hodei_saga_step(saga text, aggregate uuid, step text,
                                           to_state text, error text DEFAULT NULL,
                                           saga_state text DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    moved integer;
BEGIN
    WITH moved_step AS (
        UPDATE saga_steps AS s
        SET state = to_state, error = coalesce(hodei_saga_step.error, s.error),
            retry_count = s.retry_count
                + CASE WHEN to_state = 'RUNNING' AND s.state IN ('RUNNING', 'FAILED') THEN 1
                       ELSE 0 END,
            started_at = coalesce(s.started_at, now()),
            completed_at = CASE WHEN to_state IN ('COMPLETED', 'FAILED', 'COMPENSATED')
                                THEN now() END
        FROM sagas AS g
        WHERE g.id = s.saga_id AND g.saga_type = saga AND g.aggregate_id = aggregate
          AND g.state IN ('RUNNING', 'COMPENSATING') AND s.step_name = step
        RETURNING s.saga_id
    )
    UPDATE sagas AS g
    SET current_step = step, state = coalesce(saga_state, g.state),
        error = CASE WHEN to_state = 'FAILED' THEN hodei_saga_step.error ELSE g.error END,
        completed_at = CASE WHEN saga_state IN ('COMPLETED', 'COMPENSATED', 'FAILED')
                            THEN now() END
    WHERE g.id IN (SELECT saga_id FROM moved_step);
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END;
$$;

-- The step after `done_step`: `done_step` COMPLETED, then `next_step` to `next_state`.
CREATE OR REPLACE FUNCTION hodei_saga_advance(saga text, aggregate uuid, done_step text,
                                              next_step text, next_state text,
                                              saga_state text DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    PERFORM hodei_saga_step(saga, aggregate, done_step, 'COMPLETED');
    RETURN hodei_saga_step(saga, aggregate, next_step, next_state, NULL, saga_state);
END;
$$;

-- Fails the step under way (the first PENDING or RUNNING one) of the aggregate's open
-- saga with `error`, and ends the saga as `saga_state`.
CREATE OR REPLACE FUNCTION hodei_saga_fail(saga text, aggregate uuid, error text,
                                           saga_state text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    under_way record;
BEGIN
    SELECT s.saga_id, s.step_name INTO under_way
    FROM saga_steps AS s JOIN sagas AS g ON g.id = s.saga_id
    WHERE g.saga_type = saga AND g.aggregate_id = aggregate AND g.state = 'RUNNING'
      AND s.state IN ('PENDING', 'RUNNING')
    ORDER BY s.position
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    RETURN hodei_saga_step(saga, aggregate, under_way.step_name, 'FAILED', error, saga_state);
END;
$$;
