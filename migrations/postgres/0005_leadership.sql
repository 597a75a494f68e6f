-- Leadership: which `wakafleet run` process plans and enqueues, and since when.
--
-- One row, made here. `epoch` counts the terms begun (0: none yet); a process that takes
-- the leader lock begins a term by incrementing it, and every write the leader makes names
-- its epoch and is refused once a later term has begun, so a leader that lost its lock
-- without knowing writes nothing more. `holder` names the process (host and pid),
-- `since_us` when its term began and `renewed_us` when it last showed it still holds it.
CREATE TABLE leadership (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    epoch      BIGINT NOT NULL,
    holder     TEXT NOT NULL,
    since_us   BIGINT NOT NULL,
    renewed_us BIGINT NOT NULL
);
INSERT INTO leadership (id, epoch, holder, since_us, renewed_us) VALUES (1, 0, '', 0, 0);
REVOKE ALL ON leadership FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'wakafleet_app') THEN
        GRANT SELECT, UPDATE ON leadership TO wakafleet_app;
    END IF;
END
$$;
