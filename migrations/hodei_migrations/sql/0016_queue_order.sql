-- The queue's index ends with the job's id, as the scheduler's order does (priority, then
-- age, then id): a dispatch pass then reads the first jobs of a provider's queue straight from
-- the index and stops there, however long the queue, instead of sorting all of it.
DROP INDEX jobs_queue_idx;
CREATE INDEX jobs_queue_idx ON jobs (provider, priority DESC, queued_at, id)
    WHERE state = 'QUEUED';
