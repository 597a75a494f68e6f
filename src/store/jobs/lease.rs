//! Claims, leases and the fenced writes of a worker: what keeps a job in one worker's hands
//! at a time, and gives it back when that worker is gone.

use chrono::{DateTime, TimeDelta, Utc};

use crate::store::{
    Backend, Error, Store,
    jobs::{
        JOB_COLUMNS, Job, JobStatus, STEP_COLUMNS, Step, StepStatus, job_from_row, no_job,
        retry_delay, step_from_row,
    },
    micros,
};

/// How long a claim holds a job unless renewed: BullMQ's 30 s. Workers renew every third
/// of it.
pub const LEASE: TimeDelta = TimeDelta::seconds(30);

/// Who claims, and for what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    /// The worker's name, recorded on the job.
    pub worker: String,
    /// Only jobs of these regions; every region when none.
    pub regions: Option<Vec<String>>,
    /// How long the claim holds the job unless renewed.
    pub lease: TimeDelta,
}

impl Claimant {
    /// A worker of every region, with the standard lease.
    pub fn new(worker: &str) -> Claimant {
        Claimant {
            worker: worker.to_string(),
            regions: None,
            lease: LEASE,
        }
    }
}

/// A worker's hold on the job it claimed: the job and the attempt. Every write for the job
/// names it, and is refused once the job is no longer running that attempt under a lease
/// that has not run out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    pub job: String,
    pub attempt: i64,
}

impl Lease {
    pub fn new(job: &str, attempt: i64) -> Lease {
        Lease {
            job: job.to_string(),
            attempt,
        }
    }
}

impl Job {
    /// The lease of the job's current attempt.
    pub fn lease(&self) -> Lease {
        Lease::new(&self.id, self.attempts)
    }
}

/// What a renewal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The lease is extended.
    Held,
    /// The lease is extended, and the job is to stop at the next step boundary.
    Cancelling,
    /// The job is no longer this attempt's: reaped, ended, or claimed by another worker.
    Lost,
}

/// How a worker ends its attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish<'a> {
    Succeeded,
    /// Failed: retried after [`retry_delay`] while fewer than `max_attempts` attempts
    /// failed, else dead.
    Failed(&'a str),
    /// Failed in a way retrying cannot mend (a refused downgrade, a bad payload): failed.
    Fatal(&'a str),
    /// Stopped at a step boundary after a cancellation.
    Cancelled,
}

/// The condition that a job runs `$1`'s attempt `$2` under a lease that has not run out at
/// `$3`.
const FENCE: &str = "id = $1 AND attempts = $2 AND status = 'running' AND lease_until_us >= $3";

impl Store {
    /// Takes the ready job (pending, `not_before` passed, of the claimant's regions) with the
    /// highest priority, the oldest first among equals, and marks it running for the
    /// claimant under a lease: one more attempt, started now. None when no job is ready.
    ///
    /// Several workers may claim at once; each job goes to one of them. The claim carries a
    /// token of its own, so when its statement is retried after an I/O error (its first try
    /// may have landed unseen), the retry returns the job the first try took rather than
    /// taking another and stranding that one.
    pub async fn claim(
        &self,
        claimant: &Claimant,
        now: DateTime<Utc>,
    ) -> Result<Option<Job>, Error> {
        let token = uuid::Uuid::new_v4().to_string();
        self.claim_with_token(claimant, now, &token, false).await
    }

    /// [`Store::claim`], under the claim token `token`; `retried` when this is a retry
    /// already: a retry looks for the job an earlier try with the token took first.
    async fn claim_with_token(
        &self,
        claimant: &Claimant,
        now: DateTime<Utc>,
        token: &str,
        retried: bool,
    ) -> Result<Option<Job>, Error> {
        // PostgreSQL lets concurrent claimers pass over each other's row instead of waiting
        // for it; SQLite has one writer at a time, so the statement alone is atomic.
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let regions = claimant.regions.as_deref();
        let region_filter = match regions {
            None => String::new(),
            Some([]) => " AND 1 = 0".to_string(),
            Some(regions) => {
                let places: Vec<String> =
                    (0..regions.len()).map(|i| format!("${}", i + 5)).collect();
                format!(" AND region IN ({})", places.join(", "))
            }
        };
        let claim_sql = format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at_us = $2, \
             worker = $1, lease_until_us = $3, claim = $4 WHERE id = (SELECT id FROM jobs \
             WHERE status = 'pending' AND not_before_us <= $2{region_filter} \
             ORDER BY priority DESC, created_at_us, id LIMIT 1{lock}) RETURNING {JOB_COLUMNS}"
        );
        let earlier_sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE claim = $1");
        let until = micros(now.checked_add_signed(claimant.lease).unwrap_or(now));
        let (claim_sql, earlier_sql) = (&claim_sql, &earlier_sql);
        // Only a retry can find that an earlier try landed.
        let mut retried = retried;
        let row = self
            .retrying(|| {
                let look_first = std::mem::replace(&mut retried, true);
                async move {
                    if look_first
                        && let Some(row) = sqlx::query(earlier_sql)
                            .bind(token)
                            .fetch_optional(self.pool())
                            .await?
                    {
                        return Ok(Some(row));
                    }
                    let mut query = sqlx::query(claim_sql)
                        .bind(claimant.worker.as_str())
                        .bind(micros(now))
                        .bind(until)
                        .bind(token);
                    for region in regions.unwrap_or_default() {
                        query = query.bind(region.as_str());
                    }
                    query.fetch_optional(self.pool()).await
                }
            })
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Extends the lease of a running attempt to `now + lease`, and says whether the job is
    /// still the attempt's, and whether it is to stop. A lease that ran out is not renewed:
    /// the reaper may have handed the job on already.
    pub async fn renew(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        duration: TimeDelta,
    ) -> Result<Renewal, Error> {
        let until = micros(now.checked_add_signed(duration).unwrap_or(now));
        let sql = format!(
            "UPDATE jobs SET lease_until_us = $4 WHERE {FENCE} \
             RETURNING cancel_requested_at_us"
        );
        let row = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(lease.job.as_str())
                    .bind(lease.attempt)
                    .bind(micros(now))
                    .bind(until)
                    .fetch_optional(self.pool())
            })
            .await?;
        Ok(match row {
            None => Renewal::Lost,
            Some(row) => {
                let requested: Option<i64> = sqlx::Row::try_get(&row, 0)?;
                if requested.is_some() {
                    Renewal::Cancelling
                } else {
                    Renewal::Held
                }
            }
        })
    }

    /// Returns the running jobs whose lease ran out before `now` to the queue, and returns
    /// them as they are now: pending again (one stall more, due at once), dead once a job
    /// stalled more than `max_stalls` times, or cancelled when a cancellation was asked for.
    /// The next claim of a returned job is a new attempt, so the worker that lost it is
    /// fenced off.
    pub async fn reap(&self, now: DateTime<Utc>, max_stalls: i64) -> Result<Vec<Job>, Error> {
        let sql = format!(
            "UPDATE jobs SET \
             status = CASE WHEN cancel_requested_at_us IS NOT NULL THEN 'cancelled' \
                 WHEN stalls + 1 > $2 THEN 'dead' ELSE 'pending' END, \
             finished_at_us = CASE WHEN cancel_requested_at_us IS NOT NULL OR stalls + 1 > $2 \
                 THEN $1 ELSE NULL END, \
             error = CASE WHEN cancel_requested_at_us IS NOT NULL THEN error \
                 ELSE 'worker ' || COALESCE(worker, '?') || ' stopped renewing the lease of attempt ' \
                 || CAST(attempts AS TEXT) END, \
             stalls = stalls + 1, not_before_us = $1, lease_until_us = NULL, claim = NULL \
             WHERE status = 'running' AND lease_until_us < $1 RETURNING {JOB_COLUMNS}"
        );
        let rows = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(micros(now))
                    .bind(max_stalls)
                    .fetch_all(self.pool())
            })
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Ends the running attempt a worker holds and returns the job; a job that will not be
    /// tried again (dead or failed) marks its instance failed with its error, at once.
    ///
    /// Fails with [`Error::Fenced`] when the attempt no longer holds the job (its lease ran
    /// out, it was reaped, or it ended), and with [`Error::Invalid`] when there is no such
    /// job.
    pub async fn finish_job(
        &self,
        lease: &Lease,
        finish: Finish<'_>,
        at: DateTime<Utc>,
    ) -> Result<Job, Error> {
        // One statement: whether a failure is retried depends on the attempts left, which
        // the row knows.
        let (outcome, error) = match finish {
            Finish::Succeeded => ("succeeded", None),
            Finish::Failed(message) => ("retry", Some(message)),
            Finish::Fatal(message) => ("failed", Some(message)),
            Finish::Cancelled => ("cancelled", None),
        };
        let retry_at = at
            .checked_add_signed(retry_delay(self.options().job_backoff, lease.attempt))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let sql = format!(
            "UPDATE jobs SET \
             status = CASE WHEN $4 <> 'retry' THEN $4 WHEN failures + 1 < max_attempts THEN 'pending' \
                 ELSE 'dead' END, \
             not_before_us = CASE WHEN $4 = 'retry' AND failures + 1 < max_attempts THEN $5 \
                 ELSE not_before_us END, \
             finished_at_us = CASE WHEN $4 = 'retry' AND failures + 1 < max_attempts THEN NULL \
                 ELSE $3 END, \
             failures = failures + CASE WHEN $4 = 'retry' OR $4 = 'failed' THEN 1 ELSE 0 END, \
             error = CASE WHEN $4 = 'cancelled' THEN error ELSE $6 END, \
             lease_until_us = NULL, claim = NULL WHERE {FENCE} RETURNING {JOB_COLUMNS}"
        );
        // A job that will not be tried again fails its instance in the same transaction, so
        // no reader sees a dead job beside an instance still active, and no crash between
        // the two writes leaves them so.
        let row = self
            .retrying(|| async {
                let mut transaction = self.pool().begin().await?;
                let row = sqlx::query(&sql)
                    .bind(lease.job.as_str())
                    .bind(lease.attempt)
                    .bind(micros(at))
                    .bind(outcome)
                    .bind(micros(retry_at))
                    .bind(error)
                    .fetch_optional(&mut *transaction)
                    .await?;
                if let Some(row) = &row {
                    let status: String = sqlx::Row::try_get(row, "status")?;
                    if status == "dead" || status == "failed" {
                        let instance: String = sqlx::Row::try_get(row, "instance")?;
                        sqlx::query(
                            "UPDATE instances SET status = 'failed', last_error = $2, updated_at_us = $3 WHERE name = $1",
                        )
                        .bind(instance)
                        .bind(error)
                        .bind(micros(at))
                        .execute(&mut *transaction)
                        .await?;
                    }
                }
                transaction.commit().await?;
                Ok(row)
            })
            .await?;
        match row {
            Some(row) => job_from_row(&row),
            None => Err(self.fenced(lease, at).await),
        }
    }

    /// Marks a step of the attempt a worker holds as running and returns it: recorded
    /// afresh the first time, started once more (one more attempt, its end and error
    /// cleared) when an earlier attempt recorded it, as when a job resumes after a crash. A
    /// start retried within the same attempt counts once.
    ///
    /// Fails with [`Error::Fenced`] when the attempt no longer holds the job, and with
    /// [`Error::Cancelling`] when the job is to stop: no step starts after a cancellation.
    pub async fn start_step(
        &self,
        lease: &Lease,
        position: i64,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<Step, Error> {
        // Selecting from `jobs` inserts nothing unless the fence holds. SQLite needs the
        // WHERE to read `ON CONFLICT` as the upsert's.
        let sql = format!(
            "INSERT INTO job_steps (job_id, position, name, status, attempts, started_at_us, \
             job_attempt) SELECT id, $4, $5, 'running', 1, $3, $2 FROM jobs WHERE {FENCE} \
             AND cancel_requested_at_us IS NULL \
             ON CONFLICT (job_id, position) DO UPDATE SET name = excluded.name, status = 'running', \
             attempts = CASE WHEN job_steps.job_attempt = excluded.job_attempt \
                 THEN job_steps.attempts ELSE job_steps.attempts + 1 END, \
             job_attempt = excluded.job_attempt, started_at_us = excluded.started_at_us, \
             finished_at_us = NULL, error = NULL, output = NULL RETURNING {STEP_COLUMNS}"
        );
        let row = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(lease.job.as_str())
                    .bind(lease.attempt)
                    .bind(micros(at))
                    .bind(position)
                    .bind(name)
                    .fetch_optional(self.pool())
            })
            .await?;
        match row {
            Some(row) => step_from_row(&row),
            None => Err(self.fenced(lease, at).await),
        }
    }

    /// Records the end of a step of the attempt a worker holds, with what it leaves for
    /// later steps, and returns it.
    ///
    /// Fails with [`Error::Invalid`] when `status` is running or this attempt never started
    /// the step, and with [`Error::Fenced`] when the attempt no longer holds the job.
    pub async fn finish_step(
        &self,
        lease: &Lease,
        position: i64,
        status: StepStatus,
        error: Option<&str>,
        output: Option<&serde_json::Value>,
        at: DateTime<Utc>,
    ) -> Result<Step, Error> {
        if status == StepStatus::Running {
            return Err(Error::Invalid(format!(
                "step {position} of job {} cannot finish as running",
                lease.job
            )));
        }
        let output = output.map(serde_json::Value::to_string);
        let sql = format!(
            "UPDATE job_steps SET status = $5, error = $6, finished_at_us = $3, output = $7 \
             WHERE job_id = $1 AND position = $4 AND job_attempt = $2 \
             AND EXISTS (SELECT 1 FROM jobs WHERE {FENCE}) RETURNING {STEP_COLUMNS}"
        );
        let row = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(lease.job.as_str())
                    .bind(lease.attempt)
                    .bind(micros(at))
                    .bind(position)
                    .bind(status.as_str())
                    .bind(error)
                    .bind(output.as_deref())
                    .fetch_optional(self.pool())
            })
            .await?;
        if let Some(row) = row {
            return step_from_row(&row);
        }
        match self.fenced(lease, at).await {
            Error::Cancelling(_) => Err(Error::Invalid(format!(
                "job {} has no step {position} of attempt {}: a step is started before it finishes",
                lease.job, lease.attempt
            ))),
            error => Err(error),
        }
    }

    /// Hands a running attempt's job back to the queue, due at once, as a worker that shuts
    /// down between steps does: the next claim is a new attempt, and no stall is counted.
    /// A job asked to stop is cancelled instead. Fails with [`Error::Fenced`] when the
    /// attempt no longer holds the job.
    pub async fn release(&self, lease: &Lease, at: DateTime<Utc>) -> Result<Job, Error> {
        let sql = format!(
            "UPDATE jobs SET \
             status = CASE WHEN cancel_requested_at_us IS NULL THEN 'pending' ELSE 'cancelled' END, \
             finished_at_us = CASE WHEN cancel_requested_at_us IS NULL THEN NULL ELSE $3 END, \
             not_before_us = $3, lease_until_us = NULL, claim = NULL WHERE {FENCE} \
             RETURNING {JOB_COLUMNS}"
        );
        let row = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(lease.job.as_str())
                    .bind(lease.attempt)
                    .bind(micros(at))
                    .fetch_optional(self.pool())
            })
            .await?;
        match row {
            Some(row) => job_from_row(&row),
            None => Err(self.fenced(lease, at).await),
        }
    }

    /// Marks every step before `position` that ran (succeeded, failed or cut off) as
    /// compensated, once a rollback undid them: the next attempt runs them again. Returns how
    /// many were marked; fails with [`Error::Fenced`] when the attempt no longer holds the
    /// job.
    pub async fn compensate_steps(
        &self,
        lease: &Lease,
        position: i64,
        at: DateTime<Utc>,
    ) -> Result<u64, Error> {
        let sql = format!(
            "UPDATE job_steps SET status = 'compensated', finished_at_us = COALESCE(finished_at_us, $3) \
             WHERE job_id = $1 AND position < $4 AND status IN ('succeeded', 'failed', 'running') \
             AND EXISTS (SELECT 1 FROM jobs WHERE {FENCE})"
        );
        let result = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(lease.job.as_str())
                    .bind(lease.attempt)
                    .bind(micros(at))
                    .bind(position)
                    .execute(self.pool())
            })
            .await?;
        if result.rows_affected() == 0 {
            // Nothing to mark, or fenced off: only the second is an error.
            if let Error::Fenced { .. } = self.fenced(lease, at).await {
                return Err(self.fenced(lease, at).await);
            }
        }
        Ok(result.rows_affected())
    }

    /// The recorded steps of a job, by position.
    pub async fn steps(&self, job_id: &str) -> Result<Vec<Step>, Error> {
        let sql =
            format!("SELECT {STEP_COLUMNS} FROM job_steps WHERE job_id = $1 ORDER BY position");
        let rows = self
            .retrying(|| sqlx::query(&sql).bind(job_id).fetch_all(self.pool()))
            .await?;
        rows.iter().map(step_from_row).collect()
    }

    /// Why a fenced write of `lease` found nothing to write: the job is gone, another
    /// attempt's, ended, out of its lease, or (the fence held) to stop.
    async fn fenced(&self, lease: &Lease, at: DateTime<Utc>) -> Error {
        let job = match self.job(&lease.job).await {
            Ok(Some(job)) => job,
            Ok(None) => return no_job(&lease.job),
            Err(error) => return error,
        };
        let reason = if job.attempts != lease.attempt {
            format!("attempt {} holds it now", job.attempts)
        } else if !matches!(job.status, JobStatus::Running | JobStatus::Cancelling) {
            format!("it is {}", job.status.as_str())
        } else if job.lease_until.is_none_or(|until| until < at) {
            "its lease ran out".to_string()
        } else {
            return Error::Cancelling(lease.job.clone());
        };
        Error::Fenced {
            job: lease.job.clone(),
            attempt: lease.attempt,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        Options,
        jobs::{JobKind, NewJob},
    };

    #[tokio::test]
    async fn a_claim_retried_after_its_first_try_landed_takes_no_second_job() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::open(&url.as_str().into(), Options::default())
            .await
            .expect("a store");
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
        for instance in ["a", "b"] {
            let job = NewJob {
                id: None,
                kind: JobKind::Backup,
                instance: instance.into(),
                region: "r".into(),
                priority: 0,
                max_attempts: 1,
                payload: serde_json::json!({}),
                commit_sha: None,
                reason: "test".into(),
                not_before: now,
            };
            store.enqueue(&job, now).await.expect("a job");
        }
        let claimant = Claimant::new("w");
        let first = store
            .claim_with_token(&claimant, now, "t1", false)
            .await
            .expect("a claim")
            .expect("a job");
        // The statement again, as a retry after a lost reply runs it.
        let again = store
            .claim_with_token(&claimant, now, "t1", true)
            .await
            .expect("a claim")
            .expect("a job");
        assert_eq!((again.id.as_str(), again.attempts), (first.id.as_str(), 1));
        let pending = store
            .list_jobs(
                &crate::store::jobs::JobFilter {
                    status: Some(JobStatus::Pending),
                    instance: None,
                },
                10,
            )
            .await
            .expect("a list");
        assert_eq!(pending.len(), 1, "the other job is still there to claim");
        let other = store
            .claim_with_token(&claimant, now, "t2", true)
            .await
            .expect("a claim")
            .expect("a job");
        assert_ne!(other.id, first.id);
    }
}
