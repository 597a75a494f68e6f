//! Lifecycle jobs in tests: one region's driver behind the jobs layer, as a worker runs it.
//! Each job is enqueued on a SQLite store of the helper's own, claimed, and run to its end by
//! a `Runner` with the `Lifecycle` executor, so every step is recorded, fenced and audited,
//! and a failed one is rolled back by its undos. Jobs run one at a time unless a caller runs
//! several at once with `run_all`; `cut_off` cuts a worker off inside a chosen step, as a
//! crash would, and lets the next worker take the job over.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::BoxFuture;
use tempfile::TempDir;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wakafleet::{
    driver::{self, Driver, Target},
    jobs::{
        Context, Executor, Payload, StepDef, StepError, WireTarget,
        lifecycle::Lifecycle,
        runner::{Ended, Runner},
    },
    secret::Secret,
    store::{
        self, Store,
        audit::Filter,
        jobs::{Claimant, Job, JobKind, JobStatus, LEASE, NewJob},
        secrets::SecretKey,
    },
};

/// The key that seals instance passwords in the helper's store.
const KEY: [u8; 32] = [7; 32];
/// The worker's name on jobs and in the audit log.
const WORKER: &str = "test-worker";

/// A driver behind the jobs layer, on a store of its own.
pub struct Jobs {
    pub store: Arc<Store>,
    runner: Runner,
    lifecycle: Arc<Lifecycle>,
    watched: Arc<Watched>,
    region: String,
    dir: TempDir,
}

/// Where `Jobs::cut_off` cuts a worker off: `after` the start of `step`, a step of the job's
/// workflow or, as `rollback.<step>`, the undo of one.
#[derive(Clone, Copy, Debug)]
pub struct Cut {
    pub step: &'static str,
    pub after: Duration,
}

/// The lifecycle executor, telling whoever watches for a step when it starts.
struct Watched {
    lifecycle: Arc<Lifecycle>,
    watch: Mutex<Option<(&'static str, Arc<Notify>)>>,
}

impl Jobs {
    /// Jobs for `driver`, registered under `region`, on a new SQLite store in a temporary
    /// folder.
    pub async fn new(driver: Driver, region: &str) -> Jobs {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let options = store::Options {
            // A retried job is claimed at the time it is due, never waited for.
            job_backoff: TimeDelta::milliseconds(10),
            ..store::Options::default()
        };
        let store = Arc::new(
            Store::open(&url.as_str().into(), options)
                .await
                .expect("a store"),
        );
        let lifecycle = Arc::new(Lifecycle {
            store: Arc::clone(&store),
            key: SecretKey::from_bytes(&KEY),
            drivers: BTreeMap::from([(region.to_string(), driver)]),
        });
        let watched = Arc::new(Watched {
            lifecycle: Arc::clone(&lifecycle),
            watch: Mutex::new(None),
        });
        let runner = Runner {
            store: Arc::clone(&store),
            executor: Arc::clone(&watched) as Arc<dyn Executor>,
            worker: WORKER.into(),
            host: None,
            lease: LEASE,
        };
        Jobs {
            store,
            runner,
            lifecycle,
            watched,
            region: region.to_string(),
            dir,
        }
    }

    /// The driver the jobs run on, for the primitives a test calls itself.
    pub fn driver(&self) -> &Driver {
        self.lifecycle
            .drivers
            .get(&self.region)
            .expect("the driver is registered under its region by `Jobs::new`")
    }

    /// The store's database file (SQLite keeps recent writes beside it, in `-wal`).
    pub fn store_file(&self) -> PathBuf {
        self.dir.path().join("jobs.db")
    }

    /// The instance's database password as the jobs keep it in the store (made on first
    /// use), for a test that sets an instance up with the primitives.
    pub async fn password(&self, instance: &str) -> Secret {
        driver::database_password(&self.store, &SecretKey::from_bytes(&KEY), instance)
            .await
            .unwrap_or_else(|error| panic!("the password of `{instance}`: {error}"))
    }

    /// Enqueues a job of `kind` on `instance` with `payload` and up to `max_attempts`
    /// attempts, runs it to its end (claiming a retry at the time it is due), and returns
    /// the finished job when it succeeded; else its status and error as one text,
    /// `<status>: <error>` (`dead: …`, `failed: …`).
    pub async fn run(
        &self,
        kind: JobKind,
        instance: &str,
        payload: Payload,
        max_attempts: i64,
    ) -> Result<Job, String> {
        let job = self.enqueue(kind, instance, payload, max_attempts).await;
        let mut at = Utc::now();
        loop {
            let claimed = self.claim(&job.id, at).await;
            match self.run_claimed(claimed).await {
                Ended::Retrying => at = self.job(&job.id).await.not_before.max(Utc::now()),
                Ended::Succeeded | Ended::Dead | Ended::Failed | Ended::Cancelled => break,
                other => panic!("job {} of `{instance}` did not end: {other:?}", job.id),
            }
        }
        self.ended(&job.id).await
    }

    /// As [`Jobs::run`] with one attempt, but the worker is cut off where `cut` says, as a
    /// crash cuts it: its run is dropped wherever it is and its lease left to run out. The
    /// next worker takes the job over once the reaper has returned it and runs it to its end.
    /// Panics when the job ends before it could be cut off there.
    pub async fn cut_off(
        &self,
        kind: JobKind,
        instance: &str,
        payload: Payload,
        cut: Cut,
    ) -> Result<Job, String> {
        let job = self.enqueue(kind, instance, payload, 1).await;
        let claimed = self.claim(&job.id, Utc::now()).await;
        let started = self.watched.watch(cut.step);
        let never = CancellationToken::new();
        let ended = tokio::select! {
            ended = self.runner.run(claimed, &never) => Some(ended),
            () = async {
                started.notified().await;
                // The moment of the crash within the step, not a wait for anything.
                tokio::time::sleep(cut.after).await;
            } => None,
        };
        self.watched.unwatch();
        if let Some(ended) = ended {
            panic!(
                "job {} of `{instance}` ended ({ended:?}) before it was cut off at {cut:?}: {:?}",
                job.id,
                self.ended(&job.id).await
            );
        }
        // The store is told it is later than the cut-off worker's lease, rather than the
        // test waiting for the lease to run out.
        let later = Utc::now() + LEASE * 2;
        let reaped = self.store.reap(later, 3).await.expect("the reaper");
        assert!(
            reaped.iter().any(|reaped| reaped.id == job.id),
            "the cut-off job {} is reaped: {reaped:?}",
            job.id
        );
        let taken = self.claim(&job.id, later).await;
        let ended = self.run_claimed(taken).await;
        assert!(
            matches!(ended, Ended::Succeeded | Ended::Dead | Ended::Failed),
            "job {} of `{instance}` did not end after the takeover: {ended:?}",
            job.id
        );
        self.ended(&job.id).await
    }

    /// Enqueues a job of `kind` for each `(instance, payload)`, one attempt each, and runs
    /// them with `concurrency` workers at once, each taking the next ready job as a worker
    /// pool's slot does. Returns each job as [`Jobs::run`] does, in the order given.
    pub async fn run_all(
        &self,
        kind: JobKind,
        jobs: Vec<(String, Payload)>,
        concurrency: usize,
    ) -> Vec<Result<Job, String>> {
        let mut ids = Vec::new();
        for (instance, payload) in jobs {
            ids.push(self.enqueue(kind, &instance, payload, 1).await.id);
        }
        let claimant = Claimant::new(WORKER);
        let worker = || async {
            // Every job was enqueued before any worker started: none ready means all taken.
            while let Some(job) = self
                .store
                .claim(&claimant, Utc::now())
                .await
                .expect("a claim")
            {
                self.run_claimed(job).await;
            }
        };
        futures_util::future::join_all((0..concurrency.max(1)).map(|_| worker())).await;
        let mut ended = Vec::new();
        for id in &ids {
            ended.push(self.ended(id).await);
        }
        ended
    }

    /// Provisions `target`.
    pub async fn provision(&self, target: &Target) -> Result<Job, String> {
        self.run(JobKind::Provision, &target.instance, payload(target), 1)
            .await
    }

    /// Applies `target`'s configuration.
    pub async fn configure(&self, target: &Target) -> Result<Job, String> {
        self.run(JobKind::Configure, &target.instance, payload(target), 1)
            .await
    }

    /// Scales the instance to `target`'s resources.
    pub async fn scale(&self, target: &Target) -> Result<Job, String> {
        self.run(JobKind::Scale, &target.instance, payload(target), 1)
            .await
    }

    /// Suspends the instance.
    pub async fn suspend(&self, instance: &str) -> Result<Job, String> {
        self.run(JobKind::Suspend, instance, Payload::default(), 1)
            .await
    }

    /// Resumes the instance as `target`.
    pub async fn resume(&self, target: &Target) -> Result<Job, String> {
        self.run(JobKind::Resume, &target.instance, payload(target), 1)
            .await
    }

    /// Upgrades the instance from `from` to `to`.
    pub async fn upgrade(&self, from: &Target, to: &Target) -> Result<Job, String> {
        self.run(JobKind::Upgrade, &to.instance, change(from, to), 1)
            .await
    }

    /// Downgrades the instance from `from` to `to`.
    pub async fn downgrade(&self, from: &Target, to: &Target) -> Result<Job, String> {
        self.run(JobKind::Downgrade, &to.instance, change(from, to), 1)
            .await
    }

    /// Backs the instance up as `<name>.dump`.
    pub async fn backup(&self, instance: &str, name: &str) -> Result<Job, String> {
        let payload = Payload {
            backup: Some(name.into()),
            ..Payload::default()
        };
        self.run(JobKind::Backup, instance, payload, 1).await
    }

    /// Restores the backup `<name>.dump` under `target`'s containers.
    pub async fn restore(&self, target: &Target, name: &str) -> Result<Job, String> {
        let payload = Payload {
            backup: Some(name.into()),
            ..payload(target)
        };
        self.run(JobKind::Restore, &target.instance, payload, 1)
            .await
    }

    /// Terminates the instance.
    pub async fn terminate(&self, instance: &str) -> Result<Job, String> {
        self.run(JobKind::Terminate, instance, Payload::default(), 1)
            .await
    }

    /// The instance's newest job, as recorded.
    pub async fn latest(&self, instance: &str) -> Job {
        let jobs = self.store.jobs_of(instance).await.expect("the jobs");
        jobs.into_iter()
            .next()
            .unwrap_or_else(|| panic!("`{instance}` has a job"))
    }

    /// What the step `step` of the job left for later steps (kept after a rollback), if it
    /// ran and left something.
    pub async fn output(&self, job: &Job, step: &str) -> Option<serde_json::Value> {
        let steps = self.store.steps(&job.id).await.expect("the steps");
        let output = steps
            .into_iter()
            .find(|recorded| recorded.name == step)?
            .output?;
        Some(serde_json::from_str(&output).expect("a step's output is JSON"))
    }

    /// The file name of the backup the job's `backup` step took or kept, if any.
    pub async fn backup_of(&self, job: &Job) -> Option<String> {
        let output = self.output(job, "backup").await?;
        output["backup"].as_str().map(str::to_string)
    }

    /// Every audit record of the store, as text: actor, action, resource and body.
    pub async fn audit(&self) -> Vec<String> {
        let rows = self
            .store
            .audit_query(&Filter::default(), 100_000)
            .await
            .expect("the audit log");
        rows.iter()
            .map(|row| {
                format!(
                    "{} {} {} {}",
                    row.actor_id, row.action, row.resource, row.body
                )
            })
            .collect()
    }

    async fn enqueue(
        &self,
        kind: JobKind,
        instance: &str,
        payload: Payload,
        max_attempts: i64,
    ) -> Job {
        let job = NewJob {
            id: None,
            kind,
            instance: instance.into(),
            region: self.region.clone(),
            priority: 0,
            max_attempts,
            payload: payload.encode(),
            commit_sha: None,
            reason: "the test asked".into(),
            not_before: Utc::now(),
        };
        self.store
            .enqueue(&job, Utc::now())
            .await
            .unwrap_or_else(|error| panic!("a {} job for `{instance}`: {error}", kind.as_str()))
    }

    /// Claims the job `id` at `at`: the one ready job, since jobs run one at a time.
    async fn claim(&self, id: &str, at: DateTime<Utc>) -> Job {
        let claimed = self
            .store
            .claim(&Claimant::new(WORKER), at)
            .await
            .expect("a claim")
            .unwrap_or_else(|| panic!("job {id} is ready at {at}"));
        assert_eq!(claimed.id, id, "the one ready job is the one enqueued");
        claimed
    }

    async fn run_claimed(&self, job: Job) -> Ended {
        let id = job.id.clone();
        self.runner
            .run(job, &CancellationToken::new())
            .await
            .unwrap_or_else(|error| panic!("job {id}: the store failed: {error}"))
    }

    async fn job(&self, id: &str) -> Job {
        self.store
            .job(id)
            .await
            .expect("a read")
            .unwrap_or_else(|| panic!("job {id} is recorded"))
    }

    async fn ended(&self, id: &str) -> Result<Job, String> {
        let job = self.job(id).await;
        match job.status {
            JobStatus::Succeeded => Ok(job),
            status => Err(format!(
                "{}: {}",
                status.as_str(),
                job.error.as_deref().unwrap_or("no error recorded")
            )),
        }
    }
}

impl Watched {
    /// Tells the returned `Notify` when `step` next starts.
    fn watch(&self, step: &'static str) -> Arc<Notify> {
        let started = Arc::new(Notify::new());
        *self.watch.lock().expect("the watch") = Some((step, Arc::clone(&started)));
        started
    }

    fn unwatch(&self) {
        *self.watch.lock().expect("the watch") = None;
    }

    fn started(&self, step: &str) {
        if let Some((watched, started)) = &*self.watch.lock().expect("the watch")
            && *watched == step
        {
            // A permit is kept when nobody waits yet.
            started.notify_one();
        }
    }
}

impl Executor for Watched {
    fn workflow(&self, job: &Job) -> Result<Vec<StepDef>, StepError> {
        self.lifecycle.workflow(job)
    }

    fn run<'a>(
        &'a self,
        step: &'a StepDef,
        context: Context<'a>,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, StepError>> {
        self.started(step.name);
        self.lifecycle.run(step, context)
    }

    fn undo<'a>(
        &'a self,
        step: &'a StepDef,
        context: Context<'a>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        self.started(&format!("rollback.{}", step.name));
        self.lifecycle.undo(step, context)
    }
}

/// The payload of a job that makes the instance `target`.
pub fn payload(target: &Target) -> Payload {
    Payload {
        target: Some(WireTarget::of(target)),
        ..Payload::default()
    }
}

/// The payload of a version change from `from` to `to`.
pub fn change(from: &Target, to: &Target) -> Payload {
    Payload {
        target: Some(WireTarget::of(to)),
        from: Some(WireTarget::of(from)),
        ..Payload::default()
    }
}
