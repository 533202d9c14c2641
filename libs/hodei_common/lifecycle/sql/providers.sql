-- The statement that changes a provider's configuration, with its ProviderUpdated event.

-- name: update
-- Fields left NULL keep their value; settings keys set to NULL are removed. Nothing
-- changes when min_idle would exceed max_workers.
WITH updated AS (
    UPDATE provider_configs SET
        enabled = coalesce(:enabled, enabled),
        worker_mode = coalesce(:worker_mode, worker_mode),
        max_workers = coalesce(:max_workers, max_workers),
        min_idle = coalesce(:min_idle, min_idle),
        image = coalesce(:image, image),
        settings = jsonb_strip_nulls(settings || :settings::jsonb)
    WHERE name = :name AND coalesce(:min_idle, min_idle) <= coalesce(:max_workers, max_workers)
    RETURNING *
)
SELECT updated.*, hodei_record_events(:events, ARRAY['update']) AS recorded
FROM updated;
