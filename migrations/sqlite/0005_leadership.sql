-- Leadership: which `wakafleet run` process plans and enqueues, and since when.
--
-- One row, made here. `epoch` counts the terms begun (0: none yet); a process that takes
-- the leader lock begins a term by incrementing it, and every write the leader makes names
-- its epoch and is refused once a later term has begun, so a leader that lost its lock
-- without knowing writes nothing more. `holder` names the process (host and pid),
-- `since_us` when its term began and `renewed_us` when it last showed it still holds it.
CREATE TABLE leadership (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    epoch      INTEGER NOT NULL,
    holder     TEXT NOT NULL,
    since_us   INTEGER NOT NULL,
    renewed_us INTEGER NOT NULL
);
INSERT INTO leadership (id, epoch, holder, since_us, renewed_us) VALUES (1, 0, '', 0, 0);
