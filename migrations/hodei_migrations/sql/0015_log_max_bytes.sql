-- The byte cap of one job's log becomes a platform setting: the api now assigns a job to an
-- idle worker at once when it can, so it writes assignments as the scheduler does, and both
-- must give agents the same cap. 1 GiB by default; 0 means none. A platform whose scheduler
-- had another HODEI_LOG_MAX_BYTES records it with `hodei migrate` run in its environment.
INSERT INTO platform_settings (name, value) VALUES ('log_max_bytes', '1073741824')
ON CONFLICT (name) DO NOTHING;
