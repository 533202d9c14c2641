-- A job event's subject names its job now: `job.<job id>.<event>` instead of `job.<event>`,
-- and the JOB_EVENTS stream takes `job.*.*` only. An event recorded before the upgrade and
-- not published yet would go to a subject no stream takes: it is given its new subject, the
-- job's id read from its payload (every job event carries `job_id`).
UPDATE outbox_events
SET subject = 'job.' || (convert_from(payload, 'UTF8')::jsonb ->> 'job_id')
              || '.' || substr(subject, length('job.') + 1),
    updated_at = now()
WHERE published_at IS NULL
  AND subject ~ '^job\.[a-z_]+$'
  AND convert_from(payload, 'UTF8')::jsonb ? 'job_id';
