-- Hodei Jobs: the initial schema. Every key is a uuid, every time a timestamptz, and every
-- table has created_at/updated_at kept by one trigger function.

CREATE FUNCTION hodei_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE provider_configs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL UNIQUE,
    kind         text NOT NULL CHECK (kind IN ('local', 'docker', 'kubernetes')),
    enabled      boolean NOT NULL DEFAULT false,
    max_workers  integer NOT NULL DEFAULT 4 CHECK (max_workers >= 0),
    worker_mode  text NOT NULL DEFAULT 'ephemeral' CHECK (worker_mode IN ('ephemeral', 'reusable')),
    min_idle     integer NOT NULL DEFAULT 0 CHECK (min_idle >= 0),
    image        text,
    settings     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

INSERT INTO provider_configs (name, kind, enabled, max_workers, image) VALUES
    ('local', 'local', true, 8, NULL),
    ('docker', 'docker', false, 8, 'hodei-agent:latest'),
    ('kubernetes', 'kubernetes', false, 16, 'hodei-agent:latest');

CREATE TABLE workers (
    id                   uuid PRIMARY KEY,
    provider             text NOT NULL REFERENCES provider_configs (name),
    state                text NOT NULL DEFAULT 'CREATING'
                         CHECK (state IN ('CREATING', 'READY', 'BUSY', 'TERMINATING',
                                          'TERMINATED', 'FAILED')),
    mode                 text NOT NULL DEFAULT 'ephemeral'
                         CHECK (mode IN ('ephemeral', 'reusable')),
    provider_resource_id text,
    last_heartbeat       timestamptz,          -- NULL: never heard from
    current_job_id       uuid,
    jobs_run             integer NOT NULL DEFAULT 0,
    error                text,
    registered_at        timestamptz,
    terminated_at        timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_state_idx ON workers (provider, state);

CREATE TABLE jobs (
    id                  uuid PRIMARY KEY,
    namespace           text NOT NULL DEFAULT 'default',
    name                text NOT NULL DEFAULT '',
    state               text NOT NULL DEFAULT 'QUEUED'
                        CHECK (state IN ('QUEUED', 'ASSIGNED', 'RUNNING', 'SUCCEEDED', 'FAILED',
                                         'CANCELLED', 'TIMED_OUT')),
    command             text NOT NULL CHECK (command <> '' AND octet_length(command) <= 65536),
    args                text[] NOT NULL DEFAULT '{}',
    env                 jsonb NOT NULL DEFAULT '{}'::jsonb,
    timeout_s           double precision NOT NULL CHECK (timeout_s > 0),
    provider            text NOT NULL REFERENCES provider_configs (name),
    priority            integer NOT NULL DEFAULT 0,
    attempt             integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    max_attempts        integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    worker_id           uuid REFERENCES workers (id),
    exit_code           integer,
    error               text,
    idempotency_key     text,
    cancel_requested_at timestamptz,
    queued_at           timestamptz NOT NULL DEFAULT now(),
    assigned_at         timestamptz,
    started_at          timestamptz,
    completed_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX jobs_idempotency_key_idx ON jobs (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_created_idx ON jobs (namespace, created_at DESC);
CREATE INDEX jobs_state_created_idx ON jobs (state, created_at DESC);
-- The scheduler's queue: highest priority first, then oldest.
CREATE INDEX jobs_queue_idx ON jobs (provider, priority DESC, queued_at)
    WHERE state = 'QUEUED';

ALTER TABLE workers ADD CONSTRAINT workers_current_job_fk
    FOREIGN KEY (current_job_id) REFERENCES jobs (id);

CREATE TABLE worker_bootstrap_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    worker_id   uuid NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE,     -- sha256 of the token; the token itself is never stored
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX worker_bootstrap_tokens_worker_idx ON worker_bootstrap_tokens (worker_id);

CREATE TABLE outbox_events (
    id            uuid PRIMARY KEY,           -- the event id, published as Nats-Msg-Id
    seq           bigserial NOT NULL UNIQUE,  -- publishing order
    subject       text NOT NULL,
    event_type    text NOT NULL,
    payload       bytea NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}'::jsonb,
    published_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_events_unpublished_idx ON outbox_events (seq) WHERE published_at IS NULL;

CREATE TABLE domain_events (
    id              uuid PRIMARY KEY,
    seq             bigserial NOT NULL UNIQUE,
    event_type      text NOT NULL,
    aggregate_type  text NOT NULL,
    aggregate_id    uuid NOT NULL,
    correlation_id  text,
    actor           text NOT NULL DEFAULT 'system',
    payload         jsonb NOT NULL,
    occurred_at     timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX domain_events_aggregate_idx ON domain_events (aggregate_id, seq);

-- The audit log is append-only.
CREATE FUNCTION hodei_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'domain_events is append-only';
END;
$$;
CREATE TRIGGER domain_events_append_only BEFORE UPDATE OR DELETE ON domain_events
    FOR EACH ROW EXECUTE FUNCTION hodei_forbid_change();

CREATE TABLE job_log_files (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      integer NOT NULL DEFAULT 1,
    storage_uri  text NOT NULL,
    size_bytes   bigint NOT NULL CHECK (size_bytes >= 0),
    entry_count  bigint NOT NULL CHECK (entry_count >= 0),
    sha256       text,
    truncated    boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, attempt)
);

CREATE TABLE sagas (
    id            uuid PRIMARY KEY,
    saga_type     text NOT NULL CHECK (saga_type IN ('provisioning', 'execution', 'recovery')),
    aggregate_id  uuid NOT NULL,
    state         text NOT NULL DEFAULT 'RUNNING'
                  CHECK (state IN ('RUNNING', 'COMPENSATING', 'COMPLETED', 'FAILED',
                                   'COMPENSATED')),
    current_step  text,
    error         text,
    completed_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sagas_aggregate_idx ON sagas (aggregate_id, created_at);

CREATE TABLE saga_steps (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    saga_id       uuid NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    position      integer NOT NULL,
    step_name     text NOT NULL,
    state         text NOT NULL DEFAULT 'PENDING'
                  CHECK (state IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'COMPENSATING',
                                   'COMPENSATED')),
    retry_count   integer NOT NULL DEFAULT 0,
    error         text,
    started_at    timestamptz,
    completed_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (saga_id, position)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['provider_configs', 'workers', 'jobs', 'worker_bootstrap_tokens',
                             'outbox_events', 'job_log_files', 'sagas', 'saga_steps']
    LOOP
        EXECUTE format('CREATE TRIGGER %I_touch BEFORE UPDATE ON %I
                        FOR EACH ROW EXECUTE FUNCTION hodei_touch_updated_at()', t, t);
    END LOOP;
END;
$$;
