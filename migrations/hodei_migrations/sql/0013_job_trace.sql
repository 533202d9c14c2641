-- The W3C traceparent of the request that submitted each job: every later step of the job
-- (dispatch passes, sweeps, a requeued attempt) continues that trace, so a job is one trace.
ALTER TABLE jobs ADD COLUMN traceparent text;
