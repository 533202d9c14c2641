-- One lifecycle: every audit row of a job's run carries the job as its correlation id (its
-- worker's rows included), and the trace that wrote it. The functions the lifecycle's
-- statements call are created from libs/hodei_common/lifecycle/sql/routines.sql.

ALTER TABLE domain_events ADD COLUMN trace_id text;
CREATE INDEX domain_events_correlation_idx ON domain_events (correlation_id, seq)
    WHERE correlation_id IS NOT NULL;

CREATE TABLE schema_routines (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
