-- When the newest NATS user JWT minted for each worker's agent expires: its agent's JWTs are
-- short-lived and renewed while the worker lives, so a lost worker's revocation need last only
-- until then. Agents registered before this kept 30-day JWTs: theirs is counted from now.
ALTER TABLE workers ADD COLUMN nats_jwt_expires_at timestamptz;
UPDATE workers SET nats_jwt_expires_at = now() + interval '30 days'
WHERE nats_public_key IS NOT NULL;
