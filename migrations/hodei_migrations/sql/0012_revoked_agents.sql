-- The provisioner reads the keys of ended workers' agents whose last JWT may still be valid
-- every couple of seconds: terminated workers are revoked too now, and they accumulate, so
-- the read goes by an index of ended workers' expiries rather than over every worker.
CREATE INDEX workers_ended_agent_keys ON workers (nats_jwt_expires_at)
WHERE state IN ('TERMINATED', 'FAILED') AND nats_public_key IS NOT NULL;
