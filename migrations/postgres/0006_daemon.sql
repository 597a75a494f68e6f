-- What the reconcile daemon reports about itself, for `wakafleet status` and the API in
-- other processes: one JSON document per key (`reconcile`: the leader, the last pass, the
-- commit seen and whether it was valid, the pause; `waiting`: what each instance waits for).
-- Rewritten at each pass; not history (the audit log is).
CREATE TABLE daemon_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at_us BIGINT NOT NULL
);
