//! Carries one claimed job through its workflow.
//!
//! While the job runs, a heartbeat renews its lease every third of the lease. Each step is
//! recorded as started and finished in the store under the job's lease, so a worker that
//! lost the job (its lease ran out, the reaper handed the job on) writes nothing more: the
//! step it was running is dropped at once, and the store refuses its next write. Before a
//! step finishes in the store, one audit record says how it went, keyed by the job, step
//! and attempt, so a step re-run after a takeover is recorded under its new attempt and a
//! record written twice for one attempt is one record.
//!
//! A job resumed by a new attempt skips the steps that finished; a rollback an earlier
//! attempt began is finished first. A failed step starts the rollback: the undo of every
//! step that ran, newest first, recorded as the job's last step (`rollback`); the steps are
//! then marked compensated, so the retry runs them all again. A failed undo keeps the
//! original cause in the job's error, and the job fails without retrying: an instance in an
//! unknown state waits for an operator.
//!
//! Cancellation and shutdown are looked at between steps only: a step runs to its end.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{TimeDelta, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    jobs::{Context, Executor, StepDef, StepError},
    store::{
        Error, Store,
        audit::{Actor, Commit, Outcome, Record},
        jobs::{Finish, Job, JobStatus, Lease, Renewal, Step, StepStatus},
    },
};

/// The name of the step that records a rollback, after a workflow's own steps.
pub const ROLLBACK: &str = "rollback";

/// How a run of a job ended, for the worker that ran it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Succeeded,
    /// Failed, and due again after a backoff.
    Retrying,
    /// Failed on its last attempt: dead-lettered, its instance marked failed.
    Dead,
    /// Failed in a way retrying cannot mend, its instance marked failed.
    Failed,
    Cancelled,
    /// Given back to the queue at a step boundary, as a worker that shuts down does.
    HandedBack,
    /// The lease was lost: another worker has or will have the job.
    Lost,
}

/// Runs jobs for one worker.
pub struct Runner {
    pub store: Arc<Store>,
    pub executor: Arc<dyn Executor>,
    /// The worker's name, recorded on jobs and in the audit log.
    pub worker: String,
    /// The host the worker runs on, for the audit log.
    pub host: Option<String>,
    /// How long a lease lasts; the heartbeat renews it every third of it.
    pub lease: TimeDelta,
}

/// What one run of a job knows.
struct Run<'a> {
    job: &'a Job,
    lease: Lease,
    origin: Option<Commit>,
    workflow: Vec<StepDef>,
    outputs: BTreeMap<String, serde_json::Value>,
    recorded: BTreeMap<i64, Step>,
    /// Positions of the steps that ran, in an earlier attempt or this one.
    ran: BTreeSet<usize>,
    renewal: watch::Receiver<Renewal>,
    lost: CancellationToken,
    /// When this attempt began, for the duration its end record carries.
    began: Instant,
}

/// What a step came to.
enum Stepped {
    Done,
    Failed(StepError),
    /// The job is to stop; the step did not start.
    Cancelled,
    Lost,
}

impl Runner {
    /// Runs `job`, which this worker has just claimed, until it ends, is handed back, or its
    /// lease is lost. `stop` asks for a hand-back at the next step boundary.
    ///
    /// Fails when the store stays away: the job is then left to its lease, and the reaper
    /// returns it to the queue.
    pub async fn run(&self, job: Job, stop: &CancellationToken) -> Result<Ended, Error> {
        let began = Instant::now();
        let lease = job.lease();
        let (renewals, renewal) = watch::channel(Renewal::Held);
        let lost = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            Arc::clone(&self.store),
            lease.clone(),
            self.lease,
            renewals,
            lost.clone(),
        ));
        let _stop_heartbeat = AbortOnDrop(heartbeat);
        let origin = job
            .payload
            .get("origin")
            .and_then(|origin| serde_json::from_value::<Commit>(origin.clone()).ok());
        let workflow = match self.executor.workflow(&job) {
            Ok(workflow) => workflow,
            Err(error) => {
                let mut run = Run {
                    job: &job,
                    lease,
                    origin,
                    workflow: Vec::new(),
                    outputs: BTreeMap::new(),
                    recorded: BTreeMap::new(),
                    ran: BTreeSet::new(),
                    renewal,
                    lost,
                    began,
                };
                return self.fail(&mut run, &error, None).await;
            }
        };
        // A job on its first attempt that never failed has no steps yet.
        let fresh = job.attempts == 1 && job.stalls == 0 && job.error.is_none();
        let recorded: BTreeMap<i64, Step> = if fresh {
            BTreeMap::new()
        } else {
            self.store
                .steps(&job.id)
                .await?
                .into_iter()
                .map(|step| (step.position, step))
                .collect()
        };
        let mut run = Run {
            job: &job,
            lease,
            origin,
            outputs: BTreeMap::new(),
            ran: BTreeSet::new(),
            workflow,
            recorded,
            renewal,
            lost,
            began,
        };
        for (position, step) in run.workflow.iter().enumerate() {
            let Some(record) = run.recorded.get(&index(position)) else {
                continue;
            };
            if record.name != step.name {
                continue;
            }
            match record.status {
                StepStatus::Succeeded => {
                    run.ran.insert(position);
                    if let Some(output) = &record.output
                        && let Ok(value) = serde_json::from_str(output)
                    {
                        run.outputs.insert(step.name.to_string(), value);
                    }
                }
                StepStatus::Running | StepStatus::Failed => {
                    run.ran.insert(position);
                }
                StepStatus::Skipped | StepStatus::Compensated => {}
            }
        }
        self.audit_takeover(&run).await?;

        let rollback = index(run.workflow.len());
        if run
            .recorded
            .get(&rollback)
            .is_some_and(|step| step.status == StepStatus::Running)
        {
            // An earlier attempt was rolling back when it stopped: finish that first. The
            // cause is the step that failed; the job's error says by now only that its
            // worker stopped renewing the lease.
            let cause = run
                .recorded
                .values()
                .filter(|step| step.status == StepStatus::Failed)
                .find_map(|step| step.error.clone())
                .or_else(|| job.error.clone())
                .unwrap_or_else(|| "an earlier attempt failed".to_string());
            let error = StepError::Failed(cause);
            let last = run.workflow.len().saturating_sub(1);
            return self.fail(&mut run, &error, Some(last)).await;
        }

        for position in 0..run.workflow.len() {
            let step = run.workflow[position].clone();
            let finished = run.recorded.get(&index(position)).is_some_and(|record| {
                record.name == step.name
                    && matches!(record.status, StepStatus::Succeeded | StepStatus::Skipped)
            });
            if finished {
                continue;
            }
            if stop.is_cancelled() {
                return self.hand_back(&run).await;
            }
            if *run.renewal.borrow() == Renewal::Cancelling {
                return self.cancelled(&run).await;
            }
            match self.step(&mut run, position, &step).await? {
                Stepped::Done => {}
                Stepped::Lost => return Ok(Ended::Lost),
                Stepped::Cancelled => return self.cancelled(&run).await,
                Stepped::Failed(error) => return self.fail(&mut run, &error, Some(position)).await,
            }
        }
        self.finish(&run, Finish::Succeeded, None).await
    }

    /// Runs one step: started in the store, run under its timeout while the lease holds,
    /// audited, finished in the store.
    async fn step(
        &self,
        run: &mut Run<'_>,
        position: usize,
        step: &StepDef,
    ) -> Result<Stepped, Error> {
        let at = Utc::now();
        match self
            .store
            .start_step(&run.lease, index(position), step.name, at)
            .await
        {
            Ok(_) => {}
            Err(Error::Fenced { .. }) => return Ok(Stepped::Lost),
            Err(Error::Cancelling(_)) => return Ok(Stepped::Cancelled),
            Err(error) => return Err(error),
        }
        run.ran.insert(position);
        let started = Instant::now();
        let context = Context {
            job: run.job,
            outputs: &run.outputs,
            previous: run.recorded.get(&index(position)),
            worker: &self.worker,
        };
        let outcome = tokio::select! {
            biased;
            () = run.lost.cancelled() => return Ok(Stepped::Lost),
            outcome = tokio::time::timeout(step.timeout, self.executor.run(step, context)) => {
                outcome.unwrap_or_else(|_| Err(StepError::Failed(format!(
                    "step `{}` did not finish within {}",
                    step.name,
                    seconds(step.timeout)
                ))))
            }
        };
        let duration = started.elapsed();
        let (status, error, output) = match &outcome {
            Ok(output) => (StepStatus::Succeeded, None, output.clone()),
            Err(error) => (StepStatus::Failed, Some(error.message().to_string()), None),
        };
        let mut record = self.record(run, &format!("step.{}", step.name), error.as_deref());
        record.key = Some(format!(
            "job/{}/step/{}/attempt/{}",
            run.job.id, step.name, run.lease.attempt
        ));
        record
            .metadata
            .insert("duration_ms".into(), duration_ms(duration));
        record
            .metadata
            .insert("position".into(), serde_json::json!(position));
        self.store.append_one(record).await?;
        match self
            .store
            .finish_step(
                &run.lease,
                index(position),
                status,
                error.as_deref(),
                output.as_ref(),
                Utc::now(),
            )
            .await
        {
            Ok(_) => {}
            Err(Error::Fenced { .. }) => return Ok(Stepped::Lost),
            Err(error) => return Err(error),
        }
        match outcome {
            Ok(output) => {
                if let Some(output) = output {
                    run.outputs.insert(step.name.to_string(), output);
                }
                Ok(Stepped::Done)
            }
            Err(error) => Ok(Stepped::Failed(error)),
        }
    }

    /// After step `failed` failed (or, with none, before any ran): rolls back what ran and
    /// ends the attempt, retrying or giving up.
    async fn fail(
        &self,
        run: &mut Run<'_>,
        error: &StepError,
        failed: Option<usize>,
    ) -> Result<Ended, Error> {
        let mut message = error.message().to_string();
        let mut fatal = matches!(error, StepError::Fatal(_));
        if let Some(failed) = failed {
            match self.roll_back(run, failed).await? {
                RolledBack::Nothing => {}
                RolledBack::Undid(steps) => {
                    message = format!("{message}; rolled back: {}", steps.join(", "));
                }
                RolledBack::Failed(undo) => {
                    message = format!(
                        "{message}; the rollback failed too, so the instance waits for an operator: {undo}"
                    );
                    fatal = true;
                }
                RolledBack::Lost => return Ok(Ended::Lost),
            }
        }
        let finish = if fatal {
            Finish::Fatal(&message)
        } else {
            Finish::Failed(&message)
        };
        self.finish(run, finish, Some(&message)).await
    }

    /// Undoes the steps up to `failed` that ran, newest first, as the step `rollback`.
    async fn roll_back(&self, run: &mut Run<'_>, failed: usize) -> Result<RolledBack, Error> {
        let undoable: Vec<usize> = (0..=failed.min(run.workflow.len().saturating_sub(1)))
            .rev()
            .filter(|position| run.workflow[*position].undo && run.ran.contains(position))
            .collect();
        if undoable.is_empty() {
            return Ok(RolledBack::Nothing);
        }
        let position = index(run.workflow.len());
        match self
            .store
            .start_step(&run.lease, position, ROLLBACK, Utc::now())
            .await
        {
            Ok(_) => {}
            Err(Error::Fenced { .. } | Error::Cancelling(_)) => return Ok(RolledBack::Lost),
            Err(error) => return Err(error),
        }
        let mut undone = Vec::new();
        let mut failure = None;
        for undo in undoable {
            let step = run.workflow[undo].clone();
            let context = Context {
                job: run.job,
                outputs: &run.outputs,
                previous: run.recorded.get(&index(undo)),
                worker: &self.worker,
            };
            let started = Instant::now();
            let outcome = tokio::select! {
                biased;
                () = run.lost.cancelled() => return Ok(RolledBack::Lost),
                outcome = tokio::time::timeout(step.timeout, self.executor.undo(&step, context)) => {
                    outcome.unwrap_or_else(|_| Err(StepError::Failed(format!(
                        "undoing `{}` did not finish within {}",
                        step.name,
                        seconds(step.timeout)
                    ))))
                }
            };
            let error = outcome.as_ref().err().map(StepError::message);
            let mut record = self.record(run, &format!("rollback.{}", step.name), error);
            record.key = Some(format!(
                "job/{}/rollback/{}/attempt/{}",
                run.job.id, step.name, run.lease.attempt
            ));
            record
                .metadata
                .insert("duration_ms".into(), duration_ms(started.elapsed()));
            self.store.append_one(record).await?;
            match outcome {
                Ok(()) => undone.push(step.name),
                Err(error) => {
                    failure = Some(format!("undoing `{}`: {}", step.name, error.message()));
                    break;
                }
            }
        }
        let now = Utc::now();
        let (status, error) = match &failure {
            None => (StepStatus::Succeeded, None),
            Some(failure) => (StepStatus::Failed, Some(failure.as_str())),
        };
        for write in [
            self.store
                .finish_step(&run.lease, position, status, error, None, now)
                .await
                .map(drop),
            self.store
                .compensate_steps(&run.lease, position, now)
                .await
                .map(drop),
        ] {
            match write {
                Ok(()) => {}
                Err(Error::Fenced { .. }) => return Ok(RolledBack::Lost),
                Err(error) => return Err(error),
            }
        }
        Ok(match failure {
            None => RolledBack::Undid(undone),
            Some(failure) => RolledBack::Failed(failure),
        })
    }

    async fn hand_back(&self, run: &Run<'_>) -> Result<Ended, Error> {
        match self.store.release(&run.lease, Utc::now()).await {
            Ok(job) if job.status == JobStatus::Cancelled => {
                let mut record = self.record(run, "end", Some(CANCELLED));
                record.key = Some(format!("job/{}/end/attempt/{}", job.id, run.lease.attempt));
                self.store.append_one(record).await?;
                Ok(Ended::Cancelled)
            }
            Ok(_) => {
                tracing::info!(job = %run.job.id, "handed back at a step boundary");
                Ok(Ended::HandedBack)
            }
            Err(Error::Fenced { .. }) => Ok(Ended::Lost),
            Err(error) => Err(error),
        }
    }

    async fn cancelled(&self, run: &Run<'_>) -> Result<Ended, Error> {
        self.finish(run, Finish::Cancelled, Some(CANCELLED)).await
    }

    /// Ends the attempt in the store (which marks the instance failed when the job will not
    /// be tried again), and audits the job's end.
    async fn finish(
        &self,
        run: &Run<'_>,
        finish: Finish<'_>,
        error: Option<&str>,
    ) -> Result<Ended, Error> {
        let job = match self.store.finish_job(&run.lease, finish, Utc::now()).await {
            Ok(job) => job,
            Err(Error::Fenced { .. }) => return Ok(Ended::Lost),
            Err(error) => return Err(error),
        };
        let ended = match job.status {
            JobStatus::Succeeded => Ended::Succeeded,
            JobStatus::Pending => Ended::Retrying,
            JobStatus::Dead => Ended::Dead,
            JobStatus::Cancelled => Ended::Cancelled,
            _ => Ended::Failed,
        };
        // A dead or failed job's instance was marked failed with it, by `finish_job`.
        let mut record = self.record(run, "end", error);
        record.key = Some(format!("job/{}/end/attempt/{}", job.id, run.lease.attempt));
        record
            .metadata
            .insert("status".into(), serde_json::json!(job.status.as_str()));
        record
            .metadata
            .insert("duration_ms".into(), duration_ms(run.began.elapsed()));
        self.store.append_one(record).await?;
        Ok(ended)
    }

    /// A record that a job was taken over, when it was: a step an earlier attempt started
    /// and did not finish, or a stall.
    async fn audit_takeover(&self, run: &Run<'_>) -> Result<(), Error> {
        let cut_off = run
            .recorded
            .values()
            .find(|step| step.status == StepStatus::Running);
        if run.lease.attempt <= 1 || (cut_off.is_none() && run.job.stalls == 0) {
            return Ok(());
        }
        let mut record = self.record(run, "takeover", None);
        record.key = Some(format!(
            "job/{}/takeover/attempt/{}",
            run.job.id, run.lease.attempt
        ));
        record
            .metadata
            .insert("stalls".into(), serde_json::json!(run.job.stalls));
        if let Some(step) = cut_off {
            record.metadata.insert(
                "cut_off".into(),
                serde_json::json!({"step": step.name, "attempt": step.job_attempt}),
            );
        }
        self.store.append_one(record).await.map(drop)
    }

    /// An audit record of the job: `instance.<kind>.<what>`, with the commit, the worker and
    /// the attempt; a failure when `error` is given.
    fn record(&self, run: &Run<'_>, what: &str, error: Option<&str>) -> Record {
        let job = run.job;
        let mut record = Record::new(
            Actor::system(&self.worker),
            &format!("instance.{}.{what}", job.kind.as_str()),
            &format!("instance/{}", job.instance),
        );
        record.result = if error.is_some() {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        record.error = error.map(str::to_string);
        record.commit = run.origin.clone();
        record.region = (!job.region.is_empty()).then(|| job.region.clone());
        record.host = self.host.clone();
        record.reason = Some(job.reason.clone());
        record.job = Some(job.id.clone());
        record
            .metadata
            .insert("worker".into(), serde_json::json!(self.worker));
        record
            .metadata
            .insert("attempt".into(), serde_json::json!(run.lease.attempt));
        record
    }
}

const CANCELLED: &str = "cancelled by an operator";

enum RolledBack {
    Nothing,
    Undid(Vec<&'static str>),
    Failed(String),
    Lost,
}

/// Renews the lease every third of it until the run ends; says when the job is to stop, and
/// cancels `lost` once the lease cannot be held (lost, or not renewed in time).
async fn heartbeat(
    store: Arc<Store>,
    lease: Lease,
    duration: TimeDelta,
    renewals: watch::Sender<Renewal>,
    lost: CancellationToken,
) {
    let every = (duration / 3).to_std().unwrap_or(Duration::from_secs(10));
    let mut held_until = Utc::now() + duration;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        let now = Utc::now();
        match store.renew(&lease, now, duration).await {
            Ok(Renewal::Lost) => break,
            Ok(renewal) => {
                held_until = now + duration;
                renewals.send_replace(renewal);
            }
            Err(error) if now < held_until => {
                tracing::warn!(job = %lease.job, %error, "the lease could not be renewed; trying again");
            }
            Err(error) => {
                tracing::warn!(job = %lease.job, %error, "the lease ran out before it could be renewed");
                break;
            }
        }
    }
    tracing::warn!(job = %lease.job, attempt = lease.attempt, "lost the lease; stopping");
    lost.cancel();
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn index(position: usize) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}

fn duration_ms(duration: Duration) -> serde_json::Value {
    serde_json::json!(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}
