-- Leases, fencing and cancellation of jobs.
--
-- A claimed job holds a lease until `lease_until_us`, renewed by its worker's heartbeat; a
-- job whose lease ran out is returned to the queue by the reaper, which counts it in
-- `stalls`; `failures` counts the attempts that failed, which alone count against
-- `max_attempts` (a stall or a hand-back is not the job's fault). Every write a worker makes names the attempt it claimed (`attempts`), so a
-- worker whose job was reaped and claimed again writes nothing more. `claim` is the token of
-- the claim that took the job, so a claim retried after an I/O error finds the job its
-- first try took instead of taking a second one. A running job with `cancel_requested_at_us`
-- is cancelling: it keeps its instance's slot until its worker stops at a step boundary.
-- `region` is the region of the job's instance, so workers beside one region's engine take
-- only its jobs; a schedule's `region` is that of the jobs it enqueues.
--
-- Steps keep the job attempt that last started them (`job_attempt`), so a step start
-- retried within one attempt counts once, and what a step left for later steps (`output`,
-- JSON: the name of the backup an upgrade took, say).
ALTER TABLE jobs ADD COLUMN region TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN lease_until_us INTEGER;
ALTER TABLE jobs ADD COLUMN claim TEXT;
ALTER TABLE jobs ADD COLUMN stalls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cancel_requested_at_us INTEGER;
CREATE INDEX jobs_claim ON jobs (claim);
CREATE INDEX jobs_leases ON jobs (status, lease_until_us);
-- The order claims take ready jobs in, so a claim reads the head of the queue, not all of it.
CREATE INDEX jobs_claim_order ON jobs (status, priority DESC, created_at_us, id);
ALTER TABLE schedules ADD COLUMN region TEXT NOT NULL DEFAULT '';
ALTER TABLE job_steps ADD COLUMN job_attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_steps ADD COLUMN output TEXT;
