//! Workers: a pool of runners fed by a queue, and the upkeep that keeps the queue honest.
//!
//! Each of a pool's slots waits for a delivery, claims the most urgent ready job of its
//! regions from the store (not necessarily the one delivered: a delivery says that there is
//! work, the store says which), acknowledges the delivery and runs the job. The store is
//! the system of record, so a queue that loses its messages loses no job: every pool's
//! upkeep, every few seconds, returns jobs whose lease ran out to the queue (the reaper),
//! marks the instances of jobs that stalled too often as failed, publishes a delivery for
//! every due job the queue no longer holds one for, and fires due schedules.
//!
//! A pool stops when asked: no slot claims again, and running jobs are handed back at
//! their next step boundary (or finish, if that comes first).

use std::{sync::Arc, time::Duration};

use chrono::{TimeDelta, Utc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    jobs::{Executor, runner::Runner, schedule::Scheduler},
    queue::{Message, Queue},
    store::{
        Error, Store,
        audit::{Actor, Outcome, Record},
        jobs::{Claimant, Job, JobStatus, LEASE, NewJob},
        state::InstanceStatus,
    },
};

/// How a pool works.
#[derive(Clone, Debug)]
pub struct Options {
    /// The worker's name, unique among workers: recorded on jobs and in the audit log.
    pub name: String,
    /// The host it runs on, for the audit log.
    pub host: Option<String>,
    /// How many jobs run at once.
    pub concurrency: usize,
    /// Only jobs of these regions; all when none.
    pub regions: Option<Vec<String>>,
    /// How long a claim holds a job unless renewed.
    pub lease: TimeDelta,
    /// How often a job may stall (its worker gone) before it is dead.
    pub max_stalls: i64,
    /// How often the upkeep runs.
    pub upkeep_every: Duration,
    /// How long a slot waits for a delivery before it looks at `stop` again.
    pub receive_wait: Duration,
    /// Told each time a job run of the pool ends (the daemon of the same process plans the
    /// instance's next action at once).
    pub ended: Option<Arc<tokio::sync::Notify>>,
}

impl Options {
    /// A pool of `concurrency` slots named `name`, with the standard lease (30 s), three
    /// stalls allowed and upkeep every 5 s.
    pub fn new(name: &str, concurrency: usize) -> Options {
        Options {
            name: name.to_string(),
            host: None,
            concurrency,
            regions: None,
            lease: LEASE,
            max_stalls: 3,
            upkeep_every: Duration::from_secs(5),
            receive_wait: Duration::from_secs(1),
            ended: None,
        }
    }
}

/// A pool of workers.
pub struct Pool {
    pub store: Arc<Store>,
    pub queue: Arc<Queue>,
    pub executor: Arc<dyn Executor>,
    pub scheduler: Option<Arc<Scheduler>>,
    pub options: Options,
}

/// Records a job and tells the queue, when it is due already; a job due later is published
/// by the upkeep once it is due.
pub async fn enqueue(store: &Store, queue: &Queue, job: &NewJob) -> Result<Job, Error> {
    let now = Utc::now();
    let recorded = store.enqueue(job, now).await?;
    if recorded.status == JobStatus::Pending && recorded.not_before <= now {
        let message = Message {
            job: recorded.id.clone(),
            region: recorded.region.clone(),
        };
        // The job is recorded: a queue that cannot be told now is told by the upkeep.
        if let Err(error) = queue.publish(&message).await {
            tracing::warn!(job = %recorded.id, %error, "the queue was not told of the job; the upkeep will tell it");
        }
    }
    Ok(recorded)
}

impl Pool {
    /// Runs the pool until `stop` is cancelled, then waits for its running jobs to finish
    /// their step and be handed back.
    pub async fn run(self, stop: CancellationToken) {
        let pool = Arc::new(self);
        let tasks = TaskTracker::new();
        for slot in 0..pool.options.concurrency.max(1) {
            let (pool, stop) = (Arc::clone(&pool), stop.clone());
            tasks.spawn(async move { pool.slot(slot, stop).await });
        }
        {
            let (pool, stop) = (Arc::clone(&pool), stop.clone());
            tasks.spawn(async move { pool.upkeep_loop(stop).await });
        }
        tasks.close();
        tasks.wait().await;
    }

    fn runner(&self) -> Runner {
        Runner {
            store: Arc::clone(&self.store),
            executor: Arc::clone(&self.executor),
            worker: self.options.name.clone(),
            host: self.options.host.clone(),
            lease: self.options.lease,
        }
    }

    /// One slot: deliveries in, jobs run, until `stop`.
    async fn slot(&self, slot: usize, stop: CancellationToken) {
        let consumer = format!("{}-{slot}", self.options.name);
        let claimant = Claimant {
            worker: self.options.name.clone(),
            regions: self.options.regions.clone(),
            lease: self.options.lease,
        };
        let runner = self.runner();
        let mut failures = 0_u32;
        while !stop.is_cancelled() {
            let received = tokio::select! {
                () = stop.cancelled() => break,
                received = self.queue.receive(
                    &consumer,
                    self.options.regions.as_deref(),
                    self.options.receive_wait,
                ) => received,
            };
            let delivery = match received {
                Ok(Some(delivery)) => delivery,
                Ok(None) => continue,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%consumer, %error, "the queue failed; trying again");
                    pause(&stop, failures).await;
                    continue;
                }
            };
            // Under concurrent claims, `SKIP LOCKED` can pass over every ready row while the
            // claims that locked them are still deciding: a delivery whose claim finds nothing
            // tries again a little later before it is given up.
            let mut claimed = self.store.claim(&claimant, Utc::now()).await;
            for wait in EMPTY_CLAIM_RETRIES {
                if !matches!(claimed, Ok(None)) {
                    break;
                }
                tokio::time::sleep(wait).await;
                claimed = self.store.claim(&claimant, Utc::now()).await;
            }
            // The store decides now: the delivery has done its work whatever came of it.
            if let Err(error) = self.queue.ack(&delivery).await {
                tracing::warn!(%consumer, %error, "a delivery could not be acknowledged");
            }
            let job = match claimed {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%consumer, %error, "the store failed a claim; trying again");
                    pause(&stop, failures).await;
                    continue;
                }
            };
            failures = 0;
            let (id, kind, instance) = (job.id.clone(), job.kind, job.instance.clone());
            match runner.run(job, &stop).await {
                Ok(ended) => {
                    tracing::info!(job = %id, kind = kind.as_str(), %instance, ?ended, "job run ended");
                }
                Err(error) => {
                    tracing::warn!(job = %id, %error, "the store failed during a job; its lease will run out and the job return");
                }
            }
            if let Some(ended) = &self.options.ended {
                ended.notify_one();
            }
        }
    }

    async fn upkeep_loop(&self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.options.upkeep_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(error) = self.upkeep().await {
                tracing::warn!(%error, "upkeep failed; trying again at the next tick");
            }
        }
    }

    /// Reaps, republishes and fires schedules once.
    pub async fn upkeep(&self) -> Result<Upkeep, UpkeepError> {
        let now = Utc::now();
        let reaped = self.store.reap(now, self.options.max_stalls).await?;
        let mut report = Upkeep {
            reaped: reaped.len(),
            ..Upkeep::default()
        };
        for job in &reaped {
            let mut record = Record::new(
                Actor::system(&self.options.name),
                &format!("instance.{}.stalled", job.kind.as_str()),
                &format!("instance/{}", job.instance),
            );
            record.job = Some(job.id.clone());
            record.error = job.error.clone();
            record.key = Some(format!("job/{}/stalled/{}", job.id, job.stalls));
            record
                .metadata
                .insert("status".into(), serde_json::json!(job.status.as_str()));
            record
                .metadata
                .insert("stalls".into(), serde_json::json!(job.stalls));
            if job.status == JobStatus::Dead {
                record.result = Outcome::Failure;
                self.store
                    .set_instance_status(
                        &job.instance,
                        InstanceStatus::Failed,
                        job.error.as_deref(),
                        now,
                    )
                    .await?;
            }
            self.store.append_one(record).await?;
        }
        if let Some(scheduler) = &self.scheduler {
            report.fired = scheduler.tick(&self.queue, now).await?;
        }
        report.published = self.republish(now).await?;
        Ok(report)
    }

    /// Publishes a delivery for each due job beyond those the queue still holds: after a
    /// queue lost its messages, or for jobs that fell due since they were enqueued.
    async fn republish(&self, now: chrono::DateTime<Utc>) -> Result<usize, UpkeepError> {
        const PAGE: i64 = 10_000;
        let due = self.store.due_jobs(now, PAGE).await?;
        let held = usize::try_from(self.queue.depth().await?).unwrap_or(usize::MAX);
        let missing = due.len().saturating_sub(held);
        for job in due.iter().take(missing) {
            self.queue
                .publish(&Message {
                    job: job.id.clone(),
                    region: job.region.clone(),
                })
                .await?;
        }
        Ok(missing)
    }
}

/// What one upkeep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Upkeep {
    /// Jobs whose lease ran out, returned to the queue or dead.
    pub reaped: usize,
    /// Deliveries published for due jobs the queue did not hold.
    pub published: usize,
    /// Schedule firings enqueued.
    pub fired: usize,
}

/// Why an upkeep failed.
#[derive(Debug, thiserror::Error)]
pub enum UpkeepError {
    #[error(transparent)]
    Store(#[from] Error),
    #[error(transparent)]
    Queue(#[from] crate::queue::Error),
}

/// How long a slot waits before it claims again after a claim that found nothing.
const EMPTY_CLAIM_RETRIES: [Duration; 3] = [
    Duration::from_millis(2),
    Duration::from_millis(10),
    Duration::from_millis(50),
];

/// Waits a little longer after each failure in a row, at most 5 s, unless stopped.
async fn pause(stop: &CancellationToken, failures: u32) {
    let wait = Duration::from_millis(100 * 2_u64.pow(failures.min(6))).min(Duration::from_secs(5));
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(wait) => {}
    }
}
