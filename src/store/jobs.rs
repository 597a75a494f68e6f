//! Jobs, their steps, and schedules, as the store records them.
//!
//! A job is one kind of work on one instance: it waits as pending until it is ready, a worker
//! claims it (running), and it ends succeeded, dead after its last failed attempt, or
//! cancelled. A failed attempt with attempts left goes back to pending after a backoff. At
//! most one job per instance is active (pending or running); the database enforces it with
//! the unique partial index `jobs_one_active_per_instance`. Each job records its steps, so a
//! job resumed after a crash knows what was done.
//!
//! This module only records: what each job kind does, and when a schedule runs next (its cron
//! expression in its time zone), belong to the jobs module and the daemon.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{Row, any::AnyRow};

use crate::store::{Backend, Error, Store, micros, time};

/// What a job does to its instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobKind {
    Provision,
    Configure,
    Upgrade,
    Suspend,
    Resume,
    Terminate,
    Backup,
    Restore,
    Scale,
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobStatus {
    /// Waiting to be claimed once `not_before` has passed.
    Pending,
    /// Claimed by a worker.
    Running,
    Succeeded,
    /// Ended with an error and not to be retried; [`Store::finish_job`] never sets it (it
    /// retries or dead-letters), it is kept for jobs given up on by other means.
    Failed,
    /// Failed on its last allowed attempt: dead-lettered, with the error.
    Dead,
    Cancelled,
}

/// A job to enqueue.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub kind: JobKind,
    /// The instance's name.
    pub instance: String,
    /// Higher runs first.
    pub priority: i64,
    /// How many attempts before the job is dead; at least 1.
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
    /// A UUID (version 4).
    pub id: String,
    pub kind: JobKind,
    pub instance: String,
    pub status: JobStatus,
    /// Higher runs first.
    pub priority: i64,
    /// The attempts started so far, this one included while running.
    pub attempts: i64,
    pub max_attempts: i64,
    pub payload: serde_json::Value,
    pub commit_sha: Option<String>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    /// The job is not claimed before this time; after a failed attempt, the retry's time.
    pub not_before: DateTime<Utc>,
    /// When the last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job ended (succeeded, dead or cancelled).
    pub finished_at: Option<DateTime<Utc>>,
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
    /// When it was last started.
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// Work that recurs: a job enqueued on a cron schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Unique among schedules.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone the cron expression is read in.
    pub timezone: String,
    /// The kind of job it enqueues.
    pub job_kind: JobKind,
    /// The instance the job is for; none for a schedule over the whole fleet.
    pub instance: Option<String>,
    /// The payload of the jobs it enqueues.
    pub payload: serde_json::Value,
    pub enabled: bool,
    pub last_run_at: Option<DateTime<Utc>>,
    /// When it is due next.
    pub next_run_at: DateTime<Utc>,
}

/// How long a job waits after its failed attempt number `attempts` (counted from 1): 30 s,
/// doubling with each attempt, at most one hour.
pub fn backoff(attempts: i64) -> TimeDelta {
    const FIRST_SECONDS: i64 = 30;
    const MAX_SECONDS: i64 = 60 * 60;
    // 30 s × 2^7 is past the cap already; clamping keeps the shift in range.
    let doublings = attempts.saturating_sub(1).clamp(0, 7);
    TimeDelta::seconds((FIRST_SECONDS << doublings).min(MAX_SECONDS))
}

impl JobKind {
    pub const ALL: &[JobKind] = &[
        JobKind::Provision,
        JobKind::Configure,
        JobKind::Upgrade,
        JobKind::Suspend,
        JobKind::Resume,
        JobKind::Terminate,
        JobKind::Backup,
        JobKind::Restore,
        JobKind::Scale,
    ];

    /// The kind's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Provision => "provision",
            JobKind::Configure => "configure",
            JobKind::Upgrade => "upgrade",
            JobKind::Suspend => "suspend",
            JobKind::Resume => "resume",
            JobKind::Terminate => "terminate",
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
            JobKind::Scale => "scale",
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
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Dead,
        JobStatus::Cancelled,
    ];

    /// The status's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
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

    /// Whether a job with this status is active: pending or running.
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Pending | JobStatus::Running)
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
     commit_sha, reason, created_at_us, not_before_us, started_at_us, finished_at_us, worker, error";
const STEP_COLUMNS: &str =
    "job_id, position, name, status, attempts, started_at_us, finished_at_us, error";
const SCHEDULE_COLUMNS: &str = "name, cron, timezone, job_kind, instance, payload, enabled, \
     last_run_at_us, next_run_at_us";

impl Store {
    /// Records a new pending job and returns it.
    ///
    /// Fails with [`Error::Invalid`] when `max_attempts` is below 1 or when the instance
    /// already has an active job, naming that job.
    pub async fn enqueue(&self, job: &NewJob, at: DateTime<Utc>) -> Result<Job, Error> {
        if job.max_attempts < 1 {
            return Err(Error::Invalid(format!(
                "a job needs at least 1 attempt, not {}",
                job.max_attempts
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let sql = format!(
            "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, 'pending', $4, 0, $5, $6, $7, $8, \
             $9, $10, NULL, NULL, NULL, NULL) RETURNING {JOB_COLUMNS}"
        );
        let payload = job.payload.to_string();
        // The active job that stops this one may end between the insert and the look-up;
        // then the insert is worth another try.
        for _ in 0..3 {
            let inserted = self
                .retrying(|| {
                    sqlx::query(&sql)
                        .bind(id.as_str())
                        .bind(job.kind.as_str())
                        .bind(job.instance.as_str())
                        .bind(job.priority)
                        .bind(job.max_attempts)
                        .bind(payload.as_str())
                        .bind(job.commit_sha.as_deref())
                        .bind(job.reason.as_str())
                        .bind(micros(at))
                        .bind(micros(job.not_before))
                        .fetch_one(self.pool())
                })
                .await;
            let error = match inserted {
                Ok(row) => return job_from_row(&row),
                Err(Error::Sql(sqlx::Error::Database(error))) if error.is_unique_violation() => {
                    error
                }
                Err(error) => return Err(error),
            };
            match self.active_job(&job.instance).await? {
                // A retried insert whose first try had landed.
                Some(active) if active.id == id => return Ok(active),
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
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE instance = $1 ORDER BY created_at_us DESC, id DESC"
        );
        let rows = self
            .retrying(|| sqlx::query(&sql).bind(instance).fetch_all(self.pool()))
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// The instance's active (pending or running) job, if it has one.
    pub async fn active_job(&self, instance: &str) -> Result<Option<Job>, Error> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE instance = $1 AND status IN ('pending', 'running')"
        );
        let row = self
            .retrying(|| sqlx::query(&sql).bind(instance).fetch_optional(self.pool()))
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Takes the ready job (pending, `not_before` passed) with the highest priority, the
    /// oldest first among equals, and marks it running for `worker`: one more attempt,
    /// started now. None when no job is ready.
    ///
    /// Several workers may claim at once; each job goes to one of them.
    pub async fn claim(&self, worker: &str, now: DateTime<Utc>) -> Result<Option<Job>, Error> {
        // PostgreSQL lets concurrent claimers pass over each other's row instead of waiting
        // for it; SQLite has one writer at a time, so the statement alone is atomic.
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at_us = $2, \
             worker = $1 WHERE id = (SELECT id FROM jobs WHERE status = 'pending' \
             AND not_before_us <= $2 ORDER BY priority DESC, created_at_us, id LIMIT 1{lock}) \
             RETURNING {JOB_COLUMNS}"
        );
        let row = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(worker)
                    .bind(micros(now))
                    .fetch_optional(self.pool())
            })
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Ends the running attempt of a job and returns the job.
    ///
    /// `Ok(())` makes it succeeded. `Err(message)` sends it back to pending, ready after
    /// [`backoff`], while it has attempts left, and otherwise makes it dead; either way it
    /// keeps the message as its error. Fails with [`Error::Invalid`] when there is no such
    /// job or it is not running (a cancelled job, for one).
    pub async fn finish_job(
        &self,
        job_id: &str,
        outcome: Result<(), &str>,
        at: DateTime<Utc>,
    ) -> Result<Job, Error> {
        let job = self.running_job(job_id).await?;
        let (status, not_before, finished_at, error) = match outcome {
            Ok(()) => (JobStatus::Succeeded, job.not_before, Some(at), None),
            Err(message) if job.attempts < job.max_attempts => {
                let retry_at = at
                    .checked_add_signed(backoff(job.attempts))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                (JobStatus::Pending, retry_at, None, Some(message))
            }
            Err(message) => (JobStatus::Dead, job.not_before, Some(at), Some(message)),
        };
        // The attempt count pins the update to the attempt read above.
        let sql = format!(
            "UPDATE jobs SET status = $3, not_before_us = $4, finished_at_us = $5, error = $6 \
             WHERE id = $1 AND status = 'running' AND attempts = $2 RETURNING {JOB_COLUMNS}"
        );
        let row = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(job_id)
                    .bind(job.attempts)
                    .bind(status.as_str())
                    .bind(micros(not_before))
                    .bind(finished_at.map(micros))
                    .bind(error)
                    .fetch_optional(self.pool())
            })
            .await?;
        match row {
            Some(row) => job_from_row(&row),
            None => {
                let now = self.job(job_id).await?.map(|job| job.status);
                Err(Error::Invalid(format!(
                    "job {job_id} changed while it was being finished; it is now {}",
                    now.map_or("gone", JobStatus::as_str)
                )))
            }
        }
    }

    /// Cancels a pending or running job and returns it. A running job's worker learns of it
    /// when it next starts a step or finishes the job.
    ///
    /// Fails with [`Error::Invalid`] when there is no such job or it has ended.
    pub async fn cancel(&self, job_id: &str, at: DateTime<Utc>) -> Result<Job, Error> {
        let sql = format!(
            "UPDATE jobs SET status = 'cancelled', finished_at_us = $2 \
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

    /// Marks a step of a running job as running and returns it: recorded afresh the first
    /// time, started once more (one more attempt, its end and error cleared) when it was
    /// recorded before, as when a job resumes after a crash.
    ///
    /// Fails with [`Error::Invalid`] when there is no such job or it is not running.
    pub async fn start_step(
        &self,
        job_id: &str,
        position: i64,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<Step, Error> {
        // Selecting from `jobs` inserts nothing unless the job runs. SQLite needs the WHERE
        // to read `ON CONFLICT` as the upsert's.
        let sql = format!(
            "INSERT INTO job_steps (job_id, position, name, status, attempts, started_at_us) \
             SELECT id, $2, $3, 'running', 1, $4 FROM jobs WHERE id = $1 AND status = 'running' \
             ON CONFLICT (job_id, position) DO UPDATE SET name = excluded.name, status = 'running', \
             attempts = job_steps.attempts + 1, started_at_us = excluded.started_at_us, \
             finished_at_us = NULL, error = NULL RETURNING {STEP_COLUMNS}"
        );
        let row = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(job_id)
                    .bind(position)
                    .bind(name)
                    .bind(micros(at))
                    .fetch_optional(self.pool())
            })
            .await?;
        match row {
            Some(row) => step_from_row(&row),
            None => match self.running_job(job_id).await {
                Err(error) => Err(error),
                // It was not running at the insert and runs again now.
                Ok(_) => Err(Error::Invalid(format!(
                    "job {job_id} changed while step {position} was starting"
                ))),
            },
        }
    }

    /// Records the end of a step and returns it.
    ///
    /// Fails with [`Error::Invalid`] when `status` is running or the step was never started.
    pub async fn finish_step(
        &self,
        job_id: &str,
        position: i64,
        status: StepStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Step, Error> {
        if status == StepStatus::Running {
            return Err(Error::Invalid(format!(
                "step {position} of job {job_id} cannot finish as running"
            )));
        }
        let sql = format!(
            "UPDATE job_steps SET status = $3, error = $4, finished_at_us = $5 \
             WHERE job_id = $1 AND position = $2 RETURNING {STEP_COLUMNS}"
        );
        let row = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(job_id)
                    .bind(position)
                    .bind(status.as_str())
                    .bind(error)
                    .bind(micros(at))
                    .fetch_optional(self.pool())
            })
            .await?;
        match row {
            Some(row) => step_from_row(&row),
            None => Err(Error::Invalid(format!(
                "job {job_id} has no step {position}: a step is started before it finishes"
            ))),
        }
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

    /// Records a schedule, replacing the one of the same name.
    pub async fn put_schedule(&self, schedule: &Schedule) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, timezone = excluded.timezone, \
             job_kind = excluded.job_kind, instance = excluded.instance, payload = excluded.payload, \
             enabled = excluded.enabled, last_run_at_us = excluded.last_run_at_us, \
             next_run_at_us = excluded.next_run_at_us"
        );
        let payload = schedule.payload.to_string();
        self.retrying(|| {
            sqlx::query(&sql)
                .bind(schedule.name.as_str())
                .bind(schedule.cron.as_str())
                .bind(schedule.timezone.as_str())
                .bind(schedule.job_kind.as_str())
                .bind(schedule.instance.as_deref())
                .bind(payload.as_str())
                .bind(i64::from(schedule.enabled))
                .bind(schedule.last_run_at.map(micros))
                .bind(micros(schedule.next_run_at))
                .execute(self.pool())
        })
        .await?;
        Ok(())
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<Schedule>, Error> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name");
        let rows = self
            .retrying(|| sqlx::query(&sql).fetch_all(self.pool()))
            .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// The enabled schedules due at `now` (`next_run_at` passed), the longest due first.
    pub async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<Schedule>, Error> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE enabled = 1 AND next_run_at_us <= $1 \
             ORDER BY next_run_at_us, name"
        );
        let rows = self
            .retrying(|| sqlx::query(&sql).bind(micros(now)).fetch_all(self.pool()))
            .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Records that a schedule ran and when it is due next; false when there is no such
    /// schedule.
    pub async fn mark_schedule_ran(
        &self,
        name: &str,
        ran_at: DateTime<Utc>,
        next_run_at: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let result = self
            .retrying(|| {
                sqlx::query(
                    "UPDATE schedules SET last_run_at_us = $2, next_run_at_us = $3 WHERE name = $1",
                )
                .bind(name)
                .bind(micros(ran_at))
                .bind(micros(next_run_at))
                .execute(self.pool())
            })
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// The job, when it exists and is running; otherwise the error that says why not.
    async fn running_job(&self, job_id: &str) -> Result<Job, Error> {
        match self.job(job_id).await? {
            None => Err(no_job(job_id)),
            Some(job) if job.status == JobStatus::Running => Ok(job),
            Some(job) => Err(Error::Invalid(format!(
                "job {job_id} is {}, not running",
                job.status.as_str()
            ))),
        }
    }
}

fn no_job(job_id: &str) -> Error {
    Error::Invalid(format!("there is no job {job_id}"))
}

fn payload_from(text: &str, what: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(text).map_err(|error| Error::Stored(format!("{what}: {error}")))
}

fn job_from_row(row: &AnyRow) -> Result<Job, Error> {
    let id: String = row.try_get(0)?;
    let kind: String = row.try_get(1)?;
    let status: String = row.try_get(3)?;
    let payload: String = row.try_get(7)?;
    let started_at: Option<i64> = row.try_get(12)?;
    let finished_at: Option<i64> = row.try_get(13)?;
    Ok(Job {
        kind: JobKind::parse(&kind)
            .ok_or_else(|| Error::Stored(format!("job {id} has the unknown kind `{kind}`")))?,
        instance: row.try_get(2)?,
        status: JobStatus::parse(&status)
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
        job_id,
        position,
    })
}

fn schedule_from_row(row: &AnyRow) -> Result<Schedule, Error> {
    let name: String = row.try_get(0)?;
    let job_kind: String = row.try_get(3)?;
    let payload: String = row.try_get(5)?;
    let last_run_at: Option<i64> = row.try_get(7)?;
    Ok(Schedule {
        cron: row.try_get(1)?,
        timezone: row.try_get(2)?,
        job_kind: JobKind::parse(&job_kind).ok_or_else(|| {
            Error::Stored(format!(
                "schedule `{name}` has the unknown job kind `{job_kind}`"
            ))
        })?,
        instance: row.try_get(4)?,
        payload: payload_from(&payload, &format!("the payload of schedule `{name}`"))?,
        enabled: row.try_get::<i64, _>(6)? != 0,
        last_run_at: last_run_at.map(time).transpose()?,
        next_run_at: time(row.try_get(8)?)?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Options;

    async fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::open(&url.as_str().into(), Options::default())
            .await
            .expect("a store");
        (dir, store)
    }

    /// A time, `seconds` after a fixed origin.
    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a time")
    }

    fn new_job(instance: &str, priority: i64, not_before: DateTime<Utc>) -> NewJob {
        NewJob {
            kind: JobKind::Provision,
            instance: instance.to_string(),
            priority,
            max_attempts: 3,
            payload: serde_json::json!({ "version": "1.2.0" }),
            commit_sha: Some("abc123".to_string()),
            reason: "new instance".to_string(),
            not_before,
        }
    }

    fn invalid<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
        match result {
            Err(Error::Invalid(message)) => message,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

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
    }

    #[tokio::test]
    async fn an_instance_has_one_active_job_at_a_time() {
        let (_dir, store) = open().await;
        let first = store
            .enqueue(&new_job("i1", 0, at(0)), at(0))
            .await
            .expect("the first job");
        assert_eq!(first.status, JobStatus::Pending);
        assert_eq!(first.attempts, 0);
        assert_eq!(first.payload, serde_json::json!({ "version": "1.2.0" }));
        assert_eq!(first.commit_sha.as_deref(), Some("abc123"));
        assert_eq!(
            store.job(&first.id).await.expect("a job"),
            Some(first.clone())
        );
        assert!(uuid::Uuid::parse_str(&first.id).is_ok());

        let message = invalid(store.enqueue(&new_job("i1", 5, at(1)), at(1)).await);
        assert_eq!(
            message,
            format!("instance `i1` already has an active job {}", first.id)
        );
        // Other instances are free.
        store
            .enqueue(&new_job("i2", 0, at(1)), at(1))
            .await
            .expect("a job on another instance");

        // Running is active too.
        let claimed = store.claim("w", at(2)).await.expect("a claim");
        assert_eq!(claimed.map(|job| job.id), Some(first.id.clone()));
        assert!(
            store
                .enqueue(&new_job("i1", 0, at(3)), at(3))
                .await
                .is_err()
        );
        assert_eq!(
            store
                .active_job("i1")
                .await
                .expect("a job")
                .map(|job| job.status),
            Some(JobStatus::Running)
        );

        store
            .finish_job(&first.id, Ok(()), at(4))
            .await
            .expect("finished");
        assert_eq!(store.active_job("i1").await.expect("no job"), None);
        let second = store
            .enqueue(&new_job("i1", 0, at(5)), at(5))
            .await
            .expect("a new job once the first is done");
        let ids: Vec<String> = store
            .jobs_of("i1")
            .await
            .expect("jobs")
            .into_iter()
            .map(|job| job.id)
            .collect();
        assert_eq!(ids, [second.id, first.id]);
    }

    #[tokio::test]
    async fn claims_take_the_highest_priority_then_the_oldest_ready_job() {
        let (_dir, store) = open().await;
        let low = store.enqueue(&new_job("low", 1, at(0)), at(0)).await;
        let high_old = store.enqueue(&new_job("high-old", 5, at(0)), at(1)).await;
        let high_new = store.enqueue(&new_job("high-new", 5, at(0)), at(2)).await;
        let later = store.enqueue(&new_job("later", 9, at(100)), at(3)).await;
        let ids = [low, high_old, high_new, later].map(|job| job.expect("a job").id);

        let mut claimed = Vec::new();
        while let Some(job) = store.claim("w1", at(10)).await.expect("a claim") {
            assert_eq!(job.status, JobStatus::Running);
            assert_eq!(job.attempts, 1);
            assert_eq!(job.started_at, Some(at(10)));
            assert_eq!(job.worker.as_deref(), Some("w1"));
            claimed.push(job.id);
        }
        assert_eq!(claimed, [&*ids[1], &*ids[2], &*ids[0]]);
        // Not before its time, then first despite being the newest.
        let job = store.claim("w2", at(100)).await.expect("a claim");
        assert_eq!(job.map(|job| job.id), Some(ids[3].clone()));
        assert_eq!(store.claim("w2", at(1_000)).await.expect("a claim"), None);
    }

    #[tokio::test]
    async fn failed_jobs_retry_with_backoff_then_are_dead() {
        let (_dir, store) = open().await;
        let job = store
            .enqueue(&new_job("i1", 0, at(0)), at(0))
            .await
            .expect("a job");
        store.claim("w", at(0)).await.expect("a claim");
        let retried = store
            .finish_job(&job.id, Err("boom"), at(10))
            .await
            .expect("retried");
        assert_eq!(retried.status, JobStatus::Pending);
        assert_eq!(retried.not_before, at(40));
        assert_eq!(retried.error.as_deref(), Some("boom"));
        assert_eq!(retried.finished_at, None);
        // Still the instance's active job while it waits.
        assert!(
            store
                .enqueue(&new_job("i1", 0, at(11)), at(11))
                .await
                .is_err()
        );

        assert_eq!(store.claim("w", at(39)).await.expect("a claim"), None);
        let second = store.claim("w", at(40)).await.expect("a claim");
        assert_eq!(second.map(|job| job.attempts), Some(2));
        let retried = store
            .finish_job(&job.id, Err("boom again"), at(50))
            .await
            .expect("retried");
        assert_eq!(retried.not_before, at(110));

        let third = store.claim("w", at(110)).await.expect("a claim");
        assert_eq!(third.map(|job| job.attempts), Some(3));
        let dead = store
            .finish_job(&job.id, Err("gave up"), at(120))
            .await
            .expect("dead");
        assert_eq!(dead.status, JobStatus::Dead);
        assert_eq!(dead.error.as_deref(), Some("gave up"));
        assert_eq!(dead.finished_at, Some(at(120)));
        assert_eq!(store.claim("w", at(10_000)).await.expect("a claim"), None);
        assert_eq!(
            invalid(store.finish_job(&job.id, Ok(()), at(130)).await),
            format!("job {} is dead, not running", job.id)
        );
        // A dead job is not active.
        store
            .enqueue(&new_job("i1", 0, at(130)), at(130))
            .await
            .expect("a new job after the dead one");
    }

    #[tokio::test]
    async fn only_a_running_job_finishes() {
        let (_dir, store) = open().await;
        let job = store
            .enqueue(&new_job("i1", 0, at(0)), at(0))
            .await
            .expect("a job");
        let message = invalid(store.finish_job(&job.id, Ok(()), at(1)).await);
        assert!(message.contains("is pending"), "{message}");
        let message = invalid(store.finish_job("nope", Ok(()), at(1)).await);
        assert!(message.contains("no job nope"), "{message}");
        assert_eq!(
            store
                .job(&job.id)
                .await
                .expect("a job")
                .map(|job| job.status),
            Some(JobStatus::Pending)
        );
    }

    #[tokio::test]
    async fn steps_are_resumed_and_counted() {
        let (_dir, store) = open().await;
        let job = store
            .enqueue(&new_job("i1", 0, at(0)), at(0))
            .await
            .expect("a job");
        let message = invalid(store.start_step(&job.id, 0, "validate", at(0)).await);
        assert!(message.contains("is pending"), "{message}");
        assert!(
            store
                .start_step("nope", 0, "validate", at(0))
                .await
                .is_err()
        );

        store.claim("w", at(1)).await.expect("a claim");
        let step = store
            .start_step(&job.id, 2, "validate", at(1))
            .await
            .expect("a step");
        assert_eq!((step.status, step.attempts), (StepStatus::Running, 1));
        store
            .finish_step(&job.id, 2, StepStatus::Succeeded, None, at(2))
            .await
            .expect("finished");
        store
            .start_step(&job.id, 10, "allocate", at(3))
            .await
            .expect("a step");
        store
            .finish_step(&job.id, 10, StepStatus::Failed, Some("no room"), at(4))
            .await
            .expect("failed");
        // Resumed after a crash: the same step again.
        let resumed = store
            .start_step(&job.id, 10, "allocate", at(5))
            .await
            .expect("resumed");
        assert_eq!(
            resumed,
            Step {
                job_id: job.id.clone(),
                position: 10,
                name: "allocate".to_string(),
                status: StepStatus::Running,
                attempts: 2,
                started_at: at(5),
                finished_at: None,
                error: None,
            }
        );

        let steps = store.steps(&job.id).await.expect("steps");
        let summary: Vec<(i64, &str, StepStatus, i64)> = steps
            .iter()
            .map(|step| {
                (
                    step.position,
                    step.name.as_str(),
                    step.status,
                    step.attempts,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (2, "validate", StepStatus::Succeeded, 1),
                (10, "allocate", StepStatus::Running, 2),
            ]
        );
        assert_eq!(steps[0].finished_at, Some(at(2)));

        assert!(
            store
                .finish_step(&job.id, 10, StepStatus::Running, None, at(6))
                .await
                .is_err()
        );
        let message = invalid(
            store
                .finish_step(&job.id, 3, StepStatus::Succeeded, None, at(6))
                .await,
        );
        assert!(message.contains("no step 3"), "{message}");
    }

    #[tokio::test]
    async fn only_pending_and_running_jobs_are_cancelled() {
        let (_dir, store) = open().await;
        let pending = store
            .enqueue(&new_job("i1", 0, at(0)), at(0))
            .await
            .expect("a job");
        let cancelled = store.cancel(&pending.id, at(1)).await.expect("cancelled");
        assert_eq!(cancelled.status, JobStatus::Cancelled);
        assert_eq!(cancelled.finished_at, Some(at(1)));
        assert_eq!(store.claim("w", at(2)).await.expect("a claim"), None);
        let message = invalid(store.cancel(&pending.id, at(2)).await);
        assert!(message.contains("is cancelled"), "{message}");

        let running = store
            .enqueue(&new_job("i1", 0, at(3)), at(3))
            .await
            .expect("a job once the first is cancelled");
        store.claim("w", at(3)).await.expect("a claim");
        store.cancel(&running.id, at(4)).await.expect("cancelled");
        // Its worker finds out.
        let message = invalid(store.finish_job(&running.id, Ok(()), at(5)).await);
        assert!(message.contains("is cancelled"), "{message}");
        assert!(
            store
                .start_step(&running.id, 0, "validate", at(5))
                .await
                .is_err()
        );

        let done = store
            .enqueue(&new_job("i1", 0, at(6)), at(6))
            .await
            .expect("a job");
        store.claim("w", at(6)).await.expect("a claim");
        store
            .finish_job(&done.id, Ok(()), at(7))
            .await
            .expect("done");
        let message = invalid(store.cancel(&done.id, at(8)).await);
        assert!(message.contains("is succeeded"), "{message}");
        assert!(store.cancel("nope", at(8)).await.is_err());
    }

    #[tokio::test]
    async fn schedules_fall_due_and_are_marked() {
        let (_dir, store) = open().await;
        let schedule = |name: &str, enabled: bool, next_run_at: DateTime<Utc>| Schedule {
            name: name.to_string(),
            cron: "0 3 * * *".to_string(),
            timezone: "Africa/Lagos".to_string(),
            job_kind: JobKind::Backup,
            instance: Some("i1".to_string()),
            payload: serde_json::json!({ "keep": 7 }),
            enabled,
            last_run_at: None,
            next_run_at,
        };
        for put in [
            schedule("b", true, at(20)),
            schedule("a", true, at(10)),
            schedule("off", false, at(0)),
            schedule("later", true, at(1_000)),
        ] {
            store.put_schedule(&put).await.expect("recorded");
        }
        let names = |schedules: Vec<Schedule>| -> Vec<String> {
            schedules
                .into_iter()
                .map(|schedule| schedule.name)
                .collect()
        };
        let due = store.due_schedules(at(20)).await.expect("due");
        assert_eq!(due[0], schedule("a", true, at(10)));
        assert_eq!(names(due), ["a", "b"]);

        assert!(
            store
                .mark_schedule_ran("a", at(21), at(500))
                .await
                .expect("marked")
        );
        assert!(
            !store
                .mark_schedule_ran("nope", at(21), at(500))
                .await
                .expect("none")
        );
        assert_eq!(
            names(store.due_schedules(at(21)).await.expect("due")),
            ["b"]
        );

        // Putting again replaces, by name.
        let mut changed = schedule("b", true, at(900));
        changed.cron = "0 4 * * *".to_string();
        changed.instance = None;
        store.put_schedule(&changed).await.expect("replaced");
        let all = store.schedules().await.expect("schedules");
        assert_eq!(names(all.clone()), ["a", "b", "later", "off"]);
        assert_eq!(all[0].last_run_at, Some(at(21)));
        assert_eq!(all[0].next_run_at, at(500));
        assert_eq!(all[1], changed);
        assert!(!all[3].enabled);
        assert_eq!(
            names(store.due_schedules(at(600)).await.expect("due")),
            ["a"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claimers_never_share_a_job() {
        let (_dir, store) = open().await;
        for round in 0..20 {
            let job = store
                .enqueue(&new_job(&format!("i{round}"), 0, at(0)), at(0))
                .await
                .expect("a job");
            let (first, second) = tokio::join!(store.claim("a", at(1)), store.claim("b", at(1)));
            let claimed: Vec<Job> = [first, second]
                .into_iter()
                .filter_map(|claim| claim.expect("a claim"))
                .collect();
            assert_eq!(claimed.len(), 1, "round {round}: {claimed:?}");
            assert_eq!(claimed[0].id, job.id);
            let stored = store.job(&job.id).await.expect("a job").expect("recorded");
            assert_eq!(stored.attempts, 1);
            assert_eq!(stored.worker, claimed[0].worker);
        }
    }
}
