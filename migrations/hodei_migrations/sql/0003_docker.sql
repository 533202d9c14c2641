-- Docker workers: a job's resource limits, the limits a worker was made with, and the
-- Docker provider's defaults. NULL limits mean "the provider's defaults".

ALTER TABLE jobs ADD COLUMN cpus double precision CHECK (cpus > 0);
ALTER TABLE jobs ADD COLUMN memory_bytes bigint CHECK (memory_bytes > 0);
ALTER TABLE workers ADD COLUMN cpus double precision CHECK (cpus > 0);
ALTER TABLE workers ADD COLUMN memory_bytes bigint CHECK (memory_bytes > 0);
-- The job a worker was requested for: it takes that job while the job waits, and a container
-- is labelled with it. NULL for a warm-pool worker.
ALTER TABLE workers ADD COLUMN for_job_id uuid REFERENCES jobs (id);

-- Defaults a job without limits gets on Docker (1 CPU, 512 MiB), and host networking, so an
-- agent reaches a NATS server that listens on 127.0.0.1. Keys already set are kept.
UPDATE provider_configs
SET settings = '{"cpus": 1, "memory_bytes": 536870912, "network_mode": "host"}'::jsonb || settings
WHERE kind = 'docker';
