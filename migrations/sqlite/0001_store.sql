-- wakafleet's store on SQLite (the embedded default): actual state, fleet commits, jobs,
-- schedules and the append-only audit log. Times are microseconds since the Unix epoch (UTC),
-- the same on both backends.

CREATE TABLE instances (
    name          TEXT PRIMARY KEY,
    status        TEXT NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended', 'terminated', 'failed')),
    version       TEXT,
    config_hash   TEXT,
    spec          TEXT,
    health        TEXT,
    last_error    TEXT,
    updated_at_us INTEGER NOT NULL
);

CREATE TABLE entities (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    fields        TEXT NOT NULL,
    updated_at_us INTEGER NOT NULL,
    PRIMARY KEY (resource_type, id)
);

CREATE TABLE commits (
    sha           TEXT PRIMARY KEY,
    seen_at_us    INTEGER NOT NULL,
    applied_at_us INTEGER,
    author        TEXT NOT NULL,
    committer     TEXT NOT NULL,
    summary       TEXT NOT NULL,
    approved_by   TEXT NOT NULL,
    reviewed_by   TEXT NOT NULL,
    valid         INTEGER NOT NULL CHECK (valid IN (0, 1))
);

CREATE TABLE jobs (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    instance       TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    priority       INTEGER NOT NULL,
    attempts       INTEGER NOT NULL,
    max_attempts   INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    commit_sha     TEXT,
    reason         TEXT NOT NULL,
    created_at_us  INTEGER NOT NULL,
    not_before_us  INTEGER NOT NULL,
    started_at_us  INTEGER,
    finished_at_us INTEGER,
    worker         TEXT,
    error          TEXT
);
-- At most one active job per instance.
CREATE UNIQUE INDEX jobs_one_active_per_instance ON jobs (instance) WHERE status IN ('pending', 'running');
CREATE INDEX jobs_ready ON jobs (status, not_before_us);

CREATE TABLE job_steps (
    job_id         TEXT NOT NULL REFERENCES jobs (id),
    position       INTEGER NOT NULL,
    name           TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'compensated')),
    attempts       INTEGER NOT NULL,
    started_at_us  INTEGER NOT NULL,
    finished_at_us INTEGER,
    error          TEXT,
    PRIMARY KEY (job_id, position)
);

CREATE TABLE schedules (
    name           TEXT PRIMARY KEY,
    cron           TEXT NOT NULL,
    timezone       TEXT NOT NULL,
    job_kind       TEXT NOT NULL,
    instance       TEXT,
    payload        TEXT NOT NULL,
    enabled        INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    last_run_at_us INTEGER,
    next_run_at_us INTEGER NOT NULL
);
CREATE INDEX schedules_due ON schedules (enabled, next_run_at_us);

-- The audit log. `hash` is sha256(prev_hash, canonical record): see src/store/audit.rs.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY CHECK (seq > 0),
    id          TEXT NOT NULL UNIQUE,
    at_us       INTEGER NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    actor_email TEXT,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    commit_sha  TEXT,
    result      TEXT NOT NULL,
    body        TEXT NOT NULL,
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_us);
CREATE INDEX audit_log_action ON audit_log (action);
CREATE INDEX audit_log_resource ON audit_log (resource);
CREATE INDEX audit_log_commit ON audit_log (commit_sha);
CREATE INDEX audit_log_actor ON audit_log (actor_id);

-- Append-only, enforced by the database: no UPDATE or DELETE (SQLite has no TRUNCATE; a
-- DELETE without WHERE fires the trigger too).
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE is not allowed');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: DELETE is not allowed');
END;
