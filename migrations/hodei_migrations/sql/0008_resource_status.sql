-- What a worker's provider last said about its resource (a pod Pending: ContainerCreating,
-- a container started), and since when: `hodei job explain` and the status line of
-- `hodei job run` show it while a job waits for its worker. A progress note, like
-- last_heartbeat: no event records it.
ALTER TABLE workers ADD COLUMN resource_status text;
ALTER TABLE workers ADD COLUMN resource_status_at timestamptz;
