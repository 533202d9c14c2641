-- The public nkey of the agent that registered as each worker: its NATS user is bound to it,
-- so the platform can mint further JWTs for that agent (a job's log, per assignment) and
-- revoke its user when the worker is lost.
ALTER TABLE workers ADD COLUMN nats_public_key text;
