-- A job is its namespace's (jobs.namespace, there since 0001): the API reads and lists only
-- the jobs of the namespace a request's subject names. Listing a namespace's jobs of one
-- state replaces listing every namespace's, so its index leads with the namespace too
-- (listing a namespace's jobs of any state has jobs_created_idx).
DROP INDEX jobs_state_created_idx;
CREATE INDEX jobs_namespace_state_created_idx ON jobs (namespace, state, created_at DESC);
