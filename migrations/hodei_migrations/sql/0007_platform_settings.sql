-- Settings every service must agree on, stored once (hodei_common.platform_settings):
-- the heartbeat interval agents are told and the supervisor judges silence by, and how long
-- the LOGS stream keeps lines. Seeded with the defaults; `hodei migrate` records the values
-- its environment sets; services only read them.
CREATE TABLE platform_settings (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE,
    value       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER platform_settings_touch BEFORE UPDATE ON platform_settings
    FOR EACH ROW EXECUTE FUNCTION hodei_touch_updated_at();

INSERT INTO platform_settings (name, value) VALUES
    ('heartbeat_interval_s', '1'),
    ('logs_max_age_s', '604800');
