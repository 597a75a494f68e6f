-- Idempotency keys of audit records: the job, step and attempt a record describes, so that a
-- step audited again after a resume is recorded once. The key is the `key` field of the
-- record's body, which the hash covers (see src/store/audit/mod.rs); this column is a copy
-- of it under a unique index, so that a key is found without reading bodies. Records
-- written before have no key (NULL, which the index does not compare), and keep their
-- bodies and hashes.
--
-- Adding a column updates no row, so the append-only triggers do not fire; the application
-- role's INSERT and SELECT are granted on the whole table, so they cover the new column.
ALTER TABLE audit_log ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX audit_log_idempotency_key ON audit_log (idempotency_key);
