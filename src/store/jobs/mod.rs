//! Jobs, their steps, and schedules, as the store records them: the system of record of all
//! work. A queue only tells workers that there is work; what there is, who holds it and how
//! far it got is here.
//!
//! A job is one kind of work on one instance. It waits as pending until `not_before`; a
//! worker claims it (running) with a lease it renews while it works; it ends succeeded, dead
//! after its last failed attempt, failed when retrying cannot help, or cancelled. A failed
//! attempt with attempts left goes back to pending after a backoff with jitter. A running
//! job whose worker stops renewing is returned to pending by [`Store::reap`] (a stall), and
//! is dead after too many stalls. At most one job per instance is active (pending, running
//! or cancelling); the database enforces it with the unique partial index
//! `jobs_one_active_per_instance`.
//!
//! Every write a worker makes for its job is fenced by the job and the attempt it claimed
//! (a [`Lease`]): once the job was reaped, or claimed again by another worker, the first
//! worker can neither start nor finish a step, nor finish the job.
//!
//! This module records only; what each job kind does, and when a schedule runs next (its
//! cron expression in its time zone), belong to `jobs`.

mod lease;
mod schedules;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{
    Any, Row,
    any::{AnyArguments, AnyRow},
    query::Query,
};

use crate::store::{Error, Store, micros, time};

pub use lease::{Claimant, Finish, LEASE, Lease, Renewal};

/// What a job does to its instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobKind {
    Provision,
    Configure,
    Upgrade,
    Downgrade,
    Suspend,
    Resume,
    Terminate,
    Backup,
    Restore,
    Scale,
    /// A look at the real instance: what drifted from what was applied.
    Health,
    /// The parts of an instance that drifted made again as applied.
    Repair,
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobStatus {
    /// Waiting to be claimed once `not_before` has passed.
    Pending,
    /// Claimed by a worker, which holds its lease.
    Running,
    /// Running, and asked to stop: its worker stops at the next step boundary. The job keeps
    /// its instance's slot until then.
    Cancelling,
    Succeeded,
    /// Ended with an error that retrying cannot mend.
    Failed,
    /// Failed on its last allowed attempt, or stalled too often: dead-lettered, with the error.
    Dead,
    Cancelled,
}

/// A job to enqueue.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    /// The job's id; a new UUID when none. A job enqueued under an id already recorded is
    /// that job: enqueuing it again records nothing (a schedule's firing, enqueued by two
    /// schedulers, is one job).
    pub id: Option<String>,
    pub kind: JobKind,
    /// The instance's name.
    pub instance: String,
    /// The region of the instance, so that workers of one region take only its jobs.
    pub region: String,
    /// Higher runs first.
    pub priority: i64,
    /// How many failed attempts make the job dead; at least 1. Attempts cut off by a stall or
    /// handed back do not count.
    pub max_attempts: i64,
    /// What the job kind needs to know, as JSON.
    pub payload: serde_json::Value,
    /// The fleet commit that asked for the job, if one did.
    pub commit_sha: Option<String>,
    /// Why, in words (the plan action's reason).
    pub reason: String,
    /// The job is not claimed before this time.
    pub not_before: DateTime<Utc>,
}

/// A job as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// A UUID (version 4), or the id it was enqueued under.
    pub id: String,
    pub kind: JobKind,
    pub instance: String,
    pub region: String,
    pub status: JobStatus,
    /// Higher runs first.
    pub priority: i64,
    /// The attempts started so far, this one included while running: with the id, the fence
    /// of every write its worker makes.
    pub attempts: i64,
    pub max_attempts: i64,
    /// The attempts that failed: the job is dead when they reach `max_attempts`.
    pub failures: i64,
    /// How often a worker stopped renewing its lease.
    pub stalls: i64,
    pub payload: serde_json::Value,
    pub commit_sha: Option<String>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    /// The job is not claimed before this time; after a failed attempt, the retry's time.
    pub not_before: DateTime<Utc>,
    /// When the last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job ended (succeeded, failed, dead or cancelled).
    pub finished_at: Option<DateTime<Utc>>,
    /// Until when the running attempt's worker holds the job.
    pub lease_until: Option<DateTime<Utc>>,
    /// The worker that claimed it last.
    pub worker: Option<String>,
    /// The error of the last failed attempt.
    pub error: Option<String>,
}

/// Where a step of a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StepStatus {
    Running,
    Succeeded,
    Failed,
    /// Not needed this time (already done, or not applicable).
    Skipped,
    /// Undone after a later step failed.
    Compensated,
}

/// One step of a job, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub job_id: String,
    /// The step's place in its job, from 0.
    pub position: i64,
    pub name: String,
    pub status: StepStatus,
    /// How many times it was started: more than 1 when a job resumed it.
    pub attempts: i64,
    /// The job's attempt that started it last.
    pub job_attempt: i64,
    /// When it was last started.
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// What the step left for later steps, as JSON text.
    pub output: Option<String>,
}

/// Which jobs [`Store::list_jobs`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub instance: Option<String>,
}

/// A pending job that is due, for the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub id: String,
    pub region: String,
}

pub use schedules::Schedule;

/// How long a job waits after its failed attempt number `attempts` (counted from 1) at the
/// least, by default: 30 s, doubling with each attempt, at most one hour.
pub fn backoff(attempts: i64) -> TimeDelta {
    backoff_from(TimeDelta::seconds(30), attempts)
}

/// How long a job waits after its failed attempt number `attempts` at the least, the first
/// wait being `first`: doubling with each attempt, at most one hour (or `first`, if longer).
pub fn backoff_from(first: TimeDelta, attempts: i64) -> TimeDelta {
    let cap = TimeDelta::hours(1).max(first);
    // Past 2^22 every wait of a millisecond or more is over the cap.
    let doublings = attempts.saturating_sub(1).clamp(0, 22);
    let factor = 1_i32 << doublings;
    first.checked_mul(factor).unwrap_or(cap).min(cap)
}

/// How long a job waits after its failed attempt number `attempts`: [`backoff_from`] with a
/// random jitter of up to as much again (backon's), so jobs that failed together do not
/// come back together.
pub fn retry_delay(first: TimeDelta, attempts: i64) -> TimeDelta {
    use backon::BackoffBuilder;
    let base = backoff_from(first, attempts);
    let base_std = base.to_std().unwrap_or_default();
    // One step of an exponential backoff that starts and ends at `base`: `base` plus jitter.
    let delay = backon::ExponentialBuilder::default()
        .with_min_delay(base_std)
        .with_max_delay(base_std)
        .with_jitter()
        .build()
        .next()
        .unwrap_or(base_std);
    TimeDelta::from_std(delay).unwrap_or(base)
}

impl JobKind {
    pub const ALL: &[JobKind] = &[
        JobKind::Provision,
        JobKind::Configure,
        JobKind::Upgrade,
        JobKind::Downgrade,
        JobKind::Suspend,
        JobKind::Resume,
        JobKind::Terminate,
        JobKind::Backup,
        JobKind::Restore,
        JobKind::Scale,
        JobKind::Health,
        JobKind::Repair,
    ];

    /// The kind's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Provision => "provision",
            JobKind::Configure => "configure",
            JobKind::Upgrade => "upgrade",
            JobKind::Downgrade => "downgrade",
            JobKind::Suspend => "suspend",
            JobKind::Resume => "resume",
            JobKind::Terminate => "terminate",
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
            JobKind::Scale => "scale",
            JobKind::Health => "health",
            JobKind::Repair => "repair",
        }
    }

    /// The kind named `text`, if any.
    pub fn parse(text: &str) -> Option<JobKind> {
        JobKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == text)
    }
}

impl JobStatus {
    pub const ALL: &[JobStatus] = &[
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Cancelling,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Dead,
        JobStatus::Cancelled,
    ];

    /// The status's name, as shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Cancelling => "cancelling",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Dead => "dead",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `text`, if any.
    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL
            .iter()
            .copied()
            .find(|status| status.as_str() == text)
    }

    /// Whether a job with this status is active: pending, running or cancelling.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobStatus::Pending | JobStatus::Running | JobStatus::Cancelling
        )
    }

    /// The condition on the `status` and `cancel_requested_at_us` columns that selects it:
    /// cancelling is stored as running with a cancellation asked for.
    fn condition(self) -> &'static str {
        match self {
            JobStatus::Pending => "status = 'pending'",
            JobStatus::Running => "status = 'running' AND cancel_requested_at_us IS NULL",
            JobStatus::Cancelling => "status = 'running' AND cancel_requested_at_us IS NOT NULL",
            JobStatus::Succeeded => "status = 'succeeded'",
            JobStatus::Failed => "status = 'failed'",
            JobStatus::Dead => "status = 'dead'",
            JobStatus::Cancelled => "status = 'cancelled'",
        }
    }
}

impl StepStatus {
    pub const ALL: &[StepStatus] = &[
        StepStatus::Running,
        StepStatus::Succeeded,
        StepStatus::Failed,
        StepStatus::Skipped,
        StepStatus::Compensated,
    ];

    /// The status's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Compensated => "compensated",
        }
    }

    /// The status named `text`, if any.
    pub fn parse(text: &str) -> Option<StepStatus> {
        StepStatus::ALL
            .iter()
            .copied()
            .find(|status| status.as_str() == text)
    }
}

const JOB_COLUMNS: &str = "id, kind, instance, status, priority, attempts, max_attempts, payload, \
     commit_sha, reason, created_at_us, not_before_us, started_at_us, finished_at_us, worker, \
     error, region, stalls, lease_until_us, cancel_requested_at_us, failures";
const STEP_COLUMNS: &str = "job_id, position, name, status, attempts, started_at_us, \
     finished_at_us, error, job_attempt, output";

impl Store {
    /// Records a new pending job and returns it.
    ///
    /// Fails with [`Error::Invalid`] when `max_attempts` is below 1 or when the instance
    /// already has another active job, naming that job. A job whose id is recorded already
    /// is returned as recorded.
    pub async fn enqueue(&self, job: &NewJob, at: DateTime<Utc>) -> Result<Job, Error> {
        self.insert_job(job, at, None).await
    }

    /// [`Store::enqueue`], under the leader's fence when `epoch` is given
    /// ([`Store::enqueue_fenced`]).
    pub(crate) async fn insert_job(
        &self,
        job: &NewJob,
        at: DateTime<Utc>,
        epoch: Option<i64>,
    ) -> Result<Job, Error> {
        if job.max_attempts < 1 {
            return Err(Error::Invalid(format!(
                "a job needs at least 1 attempt, not {}",
                job.max_attempts
            )));
        }
        let id = job
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let values = "$1, $2, $3, 'pending', $4, 0, $5, $6, $7, $8, $9, $10, NULL, NULL, NULL, \
             NULL, $11, 0, NULL, NULL, 0";
        let sql = match epoch {
            None => format!(
                "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({values}) RETURNING {JOB_COLUMNS}"
            ),
            Some(_) => format!(
                "INSERT INTO jobs ({JOB_COLUMNS}) SELECT {values} WHERE {} RETURNING {JOB_COLUMNS}",
                self.epoch_fence(12)
            ),
        };
        let payload = job.payload.to_string();
        let bind = |query| bind_job(query, &id, job, &payload, at);
        // The active job that stops this one may end between the insert and the look-up;
        // then the insert is worth another try.
        for _ in 0..3 {
            let inserted = match epoch {
                None => self
                    .retrying(|| bind(sqlx::query(&sql)).fetch_one(self.pool()))
                    .await
                    .map(Some),
                Some(epoch) => self.under_epoch(epoch, &sql, bind).await,
            };
            let error = match inserted {
                Ok(Some(row)) => return job_from_row(&row),
                // The fence held, so an insert of one row that inserted nothing broke no
                // constraint either: that cannot be.
                Ok(None) => {
                    return Err(Error::Stored(format!(
                        "job {id} was neither inserted nor refused"
                    )));
                }
                Err(Error::Sql(sqlx::Error::Database(error))) if error.is_unique_violation() => {
                    error
                }
                Err(error) => return Err(error),
            };
            // Enqueued before under this id, or a retried insert whose first try had landed.
            if let Some(recorded) = self.job(&id).await? {
                return Ok(recorded);
            }
            match self.active_job(&job.instance).await? {
                Some(active) => {
                    return Err(Error::Invalid(format!(
                        "instance `{}` already has an active job {}",
                        job.instance, active.id
                    )));
                }
                None => {
                    tracing::debug!(instance = %job.instance, %error, "the active job ended; enqueuing again")
                }
            }
        }
        Err(Error::Invalid(format!(
            "instance `{}` kept gaining and losing active jobs while a job was enqueued",
            job.instance
        )))
    }

    /// The job with this id, if any.
    pub async fn job(&self, id: &str) -> Result<Option<Job>, Error> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = self
            .retrying(|| sqlx::query(&sql).bind(id).fetch_optional(self.pool()))
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Every job of an instance, newest first.
    pub async fn jobs_of(&self, instance: &str) -> Result<Vec<Job>, Error> {
        self.list_jobs(
            &JobFilter {
                instance: Some(instance.to_string()),
                ..JobFilter::default()
            },
            i64::MAX,
        )
        .await
    }

    /// At most `limit` jobs that pass `filter`, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter, limit: i64) -> Result<Vec<Job>, Error> {
        let mut conditions = vec!["1 = 1"];
        if let Some(status) = filter.status {
            conditions.push(status.condition());
        }
        if filter.instance.is_some() {
            conditions.push("instance = $2");
        }
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE {} ORDER BY created_at_us DESC, id DESC LIMIT $1",
            conditions.join(" AND ")
        );
        let rows = self
            .retrying(|| {
                let mut query = sqlx::query(&sql).bind(limit.max(0));
                if let Some(instance) = &filter.instance {
                    query = query.bind(instance.as_str());
                }
                query.fetch_all(self.pool())
            })
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// The instance's active (pending, running or cancelling) job, if it has one.
    pub async fn active_job(&self, instance: &str) -> Result<Option<Job>, Error> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE instance = $1 AND status IN ('pending', 'running')"
        );
        let row = self
            .retrying(|| sqlx::query(&sql).bind(instance).fetch_optional(self.pool()))
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Every active (pending, running or cancelling) job, at most one per instance.
    pub async fn active_jobs(&self) -> Result<Vec<Job>, Error> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('pending', 'running') ORDER BY instance"
        );
        let rows = self
            .retrying(|| sqlx::query(&sql).fetch_all(self.pool()))
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// How many jobs have each status, by status (those with none left out).
    pub async fn job_counts(&self) -> Result<Vec<(JobStatus, i64)>, Error> {
        let rows = self
            .retrying(|| {
                sqlx::query(
                    "SELECT status, cancel_requested_at_us IS NOT NULL, COUNT(*) FROM jobs \
                     GROUP BY status, cancel_requested_at_us IS NOT NULL",
                )
                .fetch_all(self.pool())
            })
            .await?;
        let mut counts = std::collections::BTreeMap::new();
        for row in &rows {
            let status: String = row.try_get(0)?;
            let cancelling = truthy(row, 1)?;
            let status = stored_status(&status, cancelling)
                .ok_or_else(|| Error::Stored(format!("a job has the unknown status `{status}`")))?;
            *counts.entry(status).or_insert(0) += row.try_get::<i64, _>(2)?;
        }
        Ok(counts.into_iter().collect())
    }

    /// At most `limit` pending jobs due at `now`, the most urgent first: what a queue is to
    /// deliver. Publishing these again now and then is what makes a queue that lost its
    /// messages (a Redis flushed or restarted) lose no job.
    pub async fn due_jobs(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<Due>, Error> {
        let rows = self
            .retrying(|| {
                sqlx::query(
                    "SELECT id, region FROM jobs WHERE status = 'pending' AND not_before_us <= $1 \
                     ORDER BY priority DESC, created_at_us, id LIMIT $2",
                )
                .bind(micros(now))
                .bind(limit.max(0))
                .fetch_all(self.pool())
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Due {
                    id: row.try_get(0)?,
                    region: row.try_get(1)?,
                })
            })
            .collect()
    }

    /// When the earliest pending job that is not yet due falls due, if there is one.
    pub async fn next_due(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, Error> {
        let row = self
            .retrying(|| {
                sqlx::query(
                    "SELECT MIN(not_before_us) FROM jobs WHERE status = 'pending' AND not_before_us > $1",
                )
                .bind(micros(now))
                .fetch_one(self.pool())
            })
            .await?;
        let next: Option<i64> = row.try_get(0)?;
        next.map(time).transpose()
    }

    /// Cancels a job and returns it: a pending one at once; a running one becomes
    /// cancelling, keeping its instance's slot, and its worker ends it as cancelled at the
    /// next step boundary (or the reaper does, if the worker is gone).
    ///
    /// Fails with [`Error::Invalid`] when there is no such job or it has ended.
    pub async fn cancel(&self, job_id: &str, at: DateTime<Utc>) -> Result<Job, Error> {
        let sql = format!(
            "UPDATE jobs SET \
             status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END, \
             finished_at_us = CASE WHEN status = 'pending' THEN $2 ELSE finished_at_us END, \
             cancel_requested_at_us = CASE WHEN status = 'running' \
                 THEN COALESCE(cancel_requested_at_us, $2) ELSE cancel_requested_at_us END \
             WHERE id = $1 AND status IN ('pending', 'running') RETURNING {JOB_COLUMNS}"
        );
        let row = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(job_id)
                    .bind(micros(at))
                    .fetch_optional(self.pool())
            })
            .await?;
        if let Some(row) = row {
            return job_from_row(&row);
        }
        match self.job(job_id).await? {
            None => Err(no_job(job_id)),
            Some(job) => Err(Error::Invalid(format!(
                "job {job_id} is {}: only a pending or running job can be cancelled",
                job.status.as_str()
            ))),
        }
    }

    /// Sends a dead or failed job back to pending, due at `at`, with its attempts, failures
    /// and stalls counted afresh, and returns it.
    ///
    /// Fails with [`Error::Invalid`] when there is no such job, it is neither dead nor
    /// failed, or its instance has another active job by now.
    pub async fn retry(&self, job_id: &str, at: DateTime<Utc>) -> Result<Job, Error> {
        let sql = format!(
            "UPDATE jobs SET status = 'pending', attempts = 0, stalls = 0, failures = 0, not_before_us = $2, \
             finished_at_us = NULL, lease_until_us = NULL, claim = NULL, \
             cancel_requested_at_us = NULL \
             WHERE id = $1 AND status IN ('dead', 'failed') RETURNING {JOB_COLUMNS}"
        );
        let updated = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(job_id)
                    .bind(micros(at))
                    .fetch_optional(self.pool())
            })
            .await;
        match updated {
            Ok(Some(row)) => job_from_row(&row),
            Ok(None) => match self.job(job_id).await? {
                None => Err(no_job(job_id)),
                Some(job) => Err(Error::Invalid(format!(
                    "job {job_id} is {}: only a dead or failed job can be retried",
                    job.status.as_str()
                ))),
            },
            Err(Error::Sql(sqlx::Error::Database(error))) if error.is_unique_violation() => {
                let job = self.job(job_id).await?.ok_or_else(|| no_job(job_id))?;
                let active = self.active_job(&job.instance).await?;
                Err(Error::Invalid(format!(
                    "job {job_id} cannot be retried: instance `{}` has the active job {}",
                    job.instance,
                    active.map_or_else(|| "that just ended".to_string(), |active| active.id)
                )))
            }
            Err(error) => Err(error),
        }
    }
}

/// Binds a new job's values to `query`, an insert into `jobs`, at `$1` to `$11`.
fn bind_job<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    id: &'q str,
    job: &'q NewJob,
    payload: &'q str,
    at: DateTime<Utc>,
) -> Query<'q, Any, AnyArguments<'q>> {
    query
        .bind(id)
        .bind(job.kind.as_str())
        .bind(job.instance.as_str())
        .bind(job.priority)
        .bind(job.max_attempts)
        .bind(payload)
        .bind(job.commit_sha.as_deref())
        .bind(job.reason.as_str())
        .bind(micros(at))
        .bind(micros(job.not_before))
        .bind(job.region.as_str())
}

fn no_job(job_id: &str) -> Error {
    Error::Invalid(format!("there is no job {job_id}"))
}

fn payload_from(text: &str, what: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(text).map_err(|error| Error::Stored(format!("{what}: {error}")))
}

/// A boolean expression's value, which the two backends return as different types.
fn truthy(row: &AnyRow, index: usize) -> Result<bool, Error> {
    match row.try_get::<bool, _>(index) {
        Ok(value) => Ok(value),
        Err(_) => Ok(row.try_get::<i64, _>(index)? != 0),
    }
}

/// The status a stored status means, given whether a cancellation was asked for.
fn stored_status(status: &str, cancel_requested: bool) -> Option<JobStatus> {
    match JobStatus::parse(status)? {
        JobStatus::Running if cancel_requested => Some(JobStatus::Cancelling),
        // Never stored as such.
        JobStatus::Cancelling => None,
        status => Some(status),
    }
}

fn job_from_row(row: &AnyRow) -> Result<Job, Error> {
    let id: String = row.try_get(0)?;
    let kind: String = row.try_get(1)?;
    let status: String = row.try_get(3)?;
    let payload: String = row.try_get(7)?;
    let started_at: Option<i64> = row.try_get(12)?;
    let finished_at: Option<i64> = row.try_get(13)?;
    let lease_until: Option<i64> = row.try_get(18)?;
    let cancel_requested: Option<i64> = row.try_get(19)?;
    Ok(Job {
        kind: JobKind::parse(&kind)
            .ok_or_else(|| Error::Stored(format!("job {id} has the unknown kind `{kind}`")))?,
        instance: row.try_get(2)?,
        status: stored_status(&status, cancel_requested.is_some())
            .ok_or_else(|| Error::Stored(format!("job {id} has the unknown status `{status}`")))?,
        priority: row.try_get(4)?,
        attempts: row.try_get(5)?,
        max_attempts: row.try_get(6)?,
        payload: payload_from(&payload, &format!("the payload of job {id}"))?,
        commit_sha: row.try_get(8)?,
        reason: row.try_get(9)?,
        created_at: time(row.try_get(10)?)?,
        not_before: time(row.try_get(11)?)?,
        started_at: started_at.map(time).transpose()?,
        finished_at: finished_at.map(time).transpose()?,
        worker: row.try_get(14)?,
        error: row.try_get(15)?,
        region: row.try_get(16)?,
        stalls: row.try_get(17)?,
        lease_until: lease_until.map(time).transpose()?,
        failures: row.try_get(20)?,
        id,
    })
}

fn step_from_row(row: &AnyRow) -> Result<Step, Error> {
    let job_id: String = row.try_get(0)?;
    let position: i64 = row.try_get(1)?;
    let status: String = row.try_get(3)?;
    let finished_at: Option<i64> = row.try_get(6)?;
    Ok(Step {
        status: StepStatus::parse(&status).ok_or_else(|| {
            Error::Stored(format!(
                "step {position} of job {job_id} has the unknown status `{status}`"
            ))
        })?,
        name: row.try_get(2)?,
        attempts: row.try_get(4)?,
        started_at: time(row.try_get(5)?)?,
        finished_at: finished_at.map(time).transpose()?,
        error: row.try_get(7)?,
        job_attempt: row.try_get(8)?,
        output: row.try_get(9)?,
        job_id,
        position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_30_seconds_up_to_an_hour() {
        let seconds = |attempts| backoff(attempts).num_seconds();
        assert_eq!(seconds(1), 30);
        assert_eq!(seconds(2), 60);
        assert_eq!(seconds(3), 120);
        assert_eq!(seconds(7), 1_920);
        // 30 s × 2^7 = 3,840 s: capped.
        assert_eq!(seconds(8), 3_600);
        assert_eq!(seconds(1_000), 3_600);
        assert_eq!(seconds(i64::MAX), 3_600);
        assert_eq!(seconds(0), 30);
        assert_eq!(seconds(i64::MIN), 30);
        let fast = |attempts| backoff_from(TimeDelta::milliseconds(100), attempts);
        assert_eq!(fast(3), TimeDelta::milliseconds(400));
        assert_eq!(fast(i64::MAX), TimeDelta::hours(1));
        assert_eq!(
            backoff_from(TimeDelta::hours(2), 5),
            TimeDelta::hours(2),
            "a first wait past the cap is the cap"
        );
    }

    #[test]
    fn retries_wait_the_backoff_and_up_to_as_much_again_and_not_all_alike() {
        for attempts in [1, 2, 5, 9] {
            let delays: Vec<TimeDelta> = (0..50)
                .map(|_| retry_delay(TimeDelta::seconds(30), attempts))
                .collect();
            let base = backoff(attempts);
            for delay in &delays {
                assert!(
                    *delay >= base && *delay < base * 2,
                    "attempt {attempts}: {delay} outside [{base}, {})",
                    base * 2
                );
            }
            assert!(
                delays.iter().any(|delay| *delay != delays[0]),
                "attempt {attempts}: no jitter in {delays:?}"
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for kind in JobKind::ALL {
            assert_eq!(JobKind::parse(kind.as_str()), Some(*kind));
        }
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(*status));
        }
        for status in StepStatus::ALL {
            assert_eq!(StepStatus::parse(status.as_str()), Some(*status));
        }
        assert_eq!(JobKind::parse("Provision"), None);
        assert_eq!(stored_status("running", true), Some(JobStatus::Cancelling));
        assert_eq!(stored_status("cancelling", false), None);
    }
}
