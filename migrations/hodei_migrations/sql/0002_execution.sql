-- The execution path: when an agent accepted its assignment, and what a worker last did.

ALTER TABLE jobs ADD COLUMN accepted_at timestamptz;
ALTER TABLE workers ADD COLUMN idle_since timestamptz;
ALTER TABLE workers ADD COLUMN hostname text;

-- The dispatcher's questions: READY workers of a provider, and workers per provider and state.
CREATE INDEX workers_ready_idx ON workers (provider, idle_since) WHERE state = 'READY';
CREATE INDEX jobs_assigned_idx ON jobs (assigned_at) WHERE state = 'ASSIGNED';
