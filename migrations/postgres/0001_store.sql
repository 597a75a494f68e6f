-- wakafleet's store on PostgreSQL: actual state, fleet commits, jobs, schedules and the
-- append-only audit log. Times are microseconds since the Unix epoch (UTC) in BIGINT
-- columns, the same on both backends; the view `audit_trail` shows them as timestamps.

CREATE TABLE instances (
    name          TEXT PRIMARY KEY,
    status        TEXT NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended', 'terminated', 'failed')),
    version       TEXT,
    config_hash   TEXT,
    spec          TEXT,
    health        TEXT,
    last_error    TEXT,
    updated_at_us BIGINT NOT NULL
);

CREATE TABLE entities (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    fields        TEXT NOT NULL,
    updated_at_us BIGINT NOT NULL,
    PRIMARY KEY (resource_type, id)
);

CREATE TABLE commits (
    sha           TEXT PRIMARY KEY,
    seen_at_us    BIGINT NOT NULL,
    applied_at_us BIGINT,
    author        TEXT NOT NULL,
    committer     TEXT NOT NULL,
    summary       TEXT NOT NULL,
    approved_by   TEXT NOT NULL,
    reviewed_by   TEXT NOT NULL,
    valid         BIGINT NOT NULL CHECK (valid IN (0, 1))
);

CREATE TABLE jobs (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    instance       TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    priority       BIGINT NOT NULL,
    attempts       BIGINT NOT NULL,
    max_attempts   BIGINT NOT NULL,
    payload        TEXT NOT NULL,
    commit_sha     TEXT,
    reason         TEXT NOT NULL,
    created_at_us  BIGINT NOT NULL,
    not_before_us  BIGINT NOT NULL,
    started_at_us  BIGINT,
    finished_at_us BIGINT,
    worker         TEXT,
    error          TEXT
);
-- At most one active job per instance.
CREATE UNIQUE INDEX jobs_one_active_per_instance ON jobs (instance) WHERE status IN ('pending', 'running');
CREATE INDEX jobs_ready ON jobs (status, not_before_us);

CREATE TABLE job_steps (
    job_id         TEXT NOT NULL REFERENCES jobs (id),
    position       BIGINT NOT NULL,
    name           TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'compensated')),
    attempts       BIGINT NOT NULL,
    started_at_us  BIGINT NOT NULL,
    finished_at_us BIGINT,
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
    enabled        BIGINT NOT NULL CHECK (enabled IN (0, 1)),
    last_run_at_us BIGINT,
    next_run_at_us BIGINT NOT NULL
);
CREATE INDEX schedules_due ON schedules (enabled, next_run_at_us);

-- The audit log. `hash` is sha256(prev_hash, canonical record): see src/store/audit.rs.
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY CHECK (seq > 0),
    id          TEXT NOT NULL UNIQUE,
    at_us       BIGINT NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    actor_email TEXT,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    commit_sha  TEXT,
    result      TEXT NOT NULL,
    body        TEXT NOT NULL,
    prev_hash   BYTEA NOT NULL,
    hash        BYTEA NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_us);
CREATE INDEX audit_log_action ON audit_log (action);
CREATE INDEX audit_log_resource ON audit_log (resource);
CREATE INDEX audit_log_commit ON audit_log (commit_sha);
CREATE INDEX audit_log_actor ON audit_log (actor_id);

-- Append-only, enforced by the database: no UPDATE, DELETE or TRUNCATE, by anyone.
CREATE FUNCTION wakafleet_audit_log_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION wakafleet_audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION wakafleet_audit_log_is_append_only();

CREATE VIEW audit_trail AS
SELECT seq, id, to_timestamp(at_us / 1000000.0) AS at, actor_kind, actor_id, actor_email,
       action, resource, commit_sha, result, body::jsonb AS body,
       encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash
FROM audit_log;

-- The application's role: everything on state, jobs and schedules, but only INSERT and
-- SELECT on the audit log. Grant it to the role wakafleet logs in as:
--   GRANT wakafleet_app TO <login role>;
-- Creating it needs CREATEROLE; without that the grants are left to the operator.
REVOKE ALL ON audit_log FROM PUBLIC;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'wakafleet_app') THEN
        BEGIN
            CREATE ROLE wakafleet_app NOLOGIN;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot create role wakafleet_app; grant the privileges by hand';
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'wakafleet_app') THEN
        GRANT SELECT, INSERT ON audit_log TO wakafleet_app;
        GRANT SELECT ON audit_trail TO wakafleet_app;
        GRANT SELECT, INSERT, UPDATE, DELETE ON instances, entities, commits, jobs, job_steps, schedules TO wakafleet_app;
        GRANT SELECT ON _sqlx_migrations TO wakafleet_app;
    END IF;
END
$$;
