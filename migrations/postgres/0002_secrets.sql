-- Secrets wakafleet generates (an instance's database password), encrypted with
-- ChaCha20-Poly1305 under a key only the daemon holds (an `env:` reference); the owner and
-- name are the associated data, so a ciphertext cannot be moved to another row.
CREATE TABLE secrets (
    owner         TEXT NOT NULL,
    name          TEXT NOT NULL,
    nonce         BYTEA NOT NULL,
    ciphertext    BYTEA NOT NULL,
    updated_at_us BIGINT NOT NULL,
    PRIMARY KEY (owner, name)
);
REVOKE ALL ON secrets FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'wakafleet_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON secrets TO wakafleet_app;
    END IF;
END
$$;
