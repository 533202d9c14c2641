-- Log archives: a job says whether its log was cut at the byte cap, and archives are swept
-- by age.
ALTER TABLE jobs ADD COLUMN log_truncated boolean NOT NULL DEFAULT false;

CREATE INDEX job_log_files_created_at ON job_log_files (created_at);
