-- Secrets wakafleet generates (an instance's database password), encrypted with
-- ChaCha20-Poly1305 under a key only the daemon holds (an `env:` reference); the owner and
-- name are the associated data, so a ciphertext cannot be moved to another row.
CREATE TABLE secrets (
    owner         TEXT NOT NULL,
    name          TEXT NOT NULL,
    nonce         BLOB NOT NULL,
    ciphertext    BLOB NOT NULL,
    updated_at_us INTEGER NOT NULL,
    PRIMARY KEY (owner, name)
);
