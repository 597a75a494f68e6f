//! The job runner and the worker pool on real stores and real queues, with executors of the
//! tests' own whose steps record what they did: steps run once each and are audited once
//! per attempt, rollbacks undo what ran, takeovers resume, cancellation and shutdown stop at
//! step boundaries, poison jobs are dead-lettered, and the pool loses no job when Redis is
//! flushed or restarted or PostgreSQL restarts. The lifecycle workflows against Docker are
//! in `jobs_docker.rs`.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{TimeDelta, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use common::{postgres::Postgres, redis::Redis};
use wakafleet::{
    jobs::{
        Context, Executor, StepDef, StepError,
        runner::{Ended, Runner},
        schedule::Scheduler,
        worker::{self, Options, Pool},
    },
    queue::{self, Queue},
    store::{
        self, Store,
        audit::{Commit, Filter, Person},
        jobs::{Claimant, Job, JobKind, JobStatus, NewJob, Schedule, StepStatus},
        state::{InstanceRecord, InstanceStatus},
    },
};

/// An executor whose jobs say in their payload what their steps do:
/// `{"steps": ["a", "b"], "undo": ["a"], "fail": {"b": 2}, "fail_undo": ["a"],
///   "block": "b"}` — steps `a` and `b`, `a` with an undo, `b` failing its first two runs,
/// `a`'s undo failing, and `b` waiting for the test's go-ahead (`release`) every time.
#[derive(Default)]
struct Scripted {
    log: Mutex<Vec<String>>,
    runs: Mutex<BTreeMap<String, u32>>,
    /// Told when a blocking step has started.
    started: Notify,
    /// Lets a blocking step go on.
    release: Notify,
}

impl Scripted {
    fn log(&self) -> Vec<String> {
        self.log.lock().expect("the log").clone()
    }

    fn note(&self, entry: String) {
        self.log.lock().expect("the log").push(entry);
    }
}

/// Notes when a step's future is dropped before it finished.
struct DropNote<'a>(&'a Scripted, String, bool);

impl Drop for DropNote<'_> {
    fn drop(&mut self) {
        if !self.2 {
            self.0.note(format!("dropped {}", self.1));
        }
    }
}

fn script(job: &Job) -> serde_json::Value {
    job.payload.clone()
}

fn listed(value: &serde_json::Value, field: &str, name: &str) -> bool {
    value[field]
        .as_array()
        .is_some_and(|names| names.iter().any(|listed| listed == name))
}

impl Executor for Scripted {
    fn workflow(&self, job: &Job) -> Result<Vec<StepDef>, StepError> {
        let script = script(job);
        let steps = script["steps"]
            .as_array()
            .ok_or_else(|| StepError::Fatal("no steps".into()))?;
        Ok(steps
            .iter()
            .map(|name| {
                let name: &'static str =
                    Box::leak(name.as_str().unwrap_or("?").to_string().into_boxed_str());
                StepDef {
                    name,
                    timeout: Duration::from_secs(script["timeout"].as_u64().unwrap_or(30)),
                    undo: listed(&script, "undo", name),
                }
            })
            .collect())
    }

    fn run<'a>(
        &'a self,
        step: &'a StepDef,
        context: Context<'a>,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, StepError>> {
        Box::pin(async move {
            let script = script(context.job);
            let name = step.name;
            let mut guard = DropNote(self, name.to_string(), false);
            if script["block"] == name {
                self.started.notify_one();
                self.release.notified().await;
            }
            let run = {
                let mut runs = self.runs.lock().expect("the runs");
                let run = runs.entry(name.to_string()).or_default();
                *run += 1;
                *run
            };
            guard.2 = true;
            self.note(format!("run {name}"));
            let failures = script["fail"][name].as_u64().unwrap_or(0);
            if u64::from(run) <= failures {
                return Err(StepError::Failed(format!("{name} failed (run {run})")));
            }
            if listed(&script, "fatal", name) {
                return Err(StepError::Fatal(format!("{name} cannot work")));
            }
            Ok(Some(serde_json::json!({ "run": run })))
        })
    }

    fn undo<'a>(
        &'a self,
        step: &'a StepDef,
        context: Context<'a>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            self.note(format!("undo {}", step.name));
            if listed(&script(context.job), "fail_undo", step.name) {
                return Err(StepError::Failed(format!("undoing {} broke", step.name)));
            }
            Ok(())
        })
    }
}

async fn sqlite(folder: &tempfile::TempDir) -> Arc<Store> {
    let url = format!("sqlite://{}", folder.path().join("store.db").display());
    let options = store::Options {
        job_backoff: TimeDelta::milliseconds(50),
        ..store::Options::default()
    };
    Arc::new(
        Store::open(&url.as_str().into(), options)
            .await
            .expect("a store"),
    )
}

fn origin() -> Commit {
    let person = |name: &str| Person {
        name: name.into(),
        email: format!("{name}@example.com"),
    };
    Commit {
        sha: "c0ffee".repeat(6) + "c0ff",
        author: person("ada"),
        committer: person("grace"),
        approved_by: vec!["Linus <linus@example.com>".into()],
        reviewed_by: Vec::new(),
    }
}

fn new_job(instance: &str, mut script: serde_json::Value, max_attempts: i64) -> NewJob {
    script["origin"] = serde_json::to_value(origin()).expect("JSON");
    NewJob {
        id: None,
        kind: JobKind::Configure,
        instance: instance.into(),
        region: "ng-lagos".into(),
        priority: 0,
        max_attempts,
        payload: script,
        commit_sha: Some(origin().sha),
        reason: "the test asked".into(),
        not_before: Utc::now(),
    }
}

fn runner(store: &Arc<Store>, executor: &Arc<Scripted>, worker: &str) -> Runner {
    Runner {
        store: Arc::clone(store),
        executor: Arc::clone(executor) as Arc<dyn Executor>,
        worker: worker.into(),
        host: Some("test-host".into()),
        lease: TimeDelta::seconds(30),
    }
}

async fn claim(store: &Store, worker: &str) -> Job {
    claim_at(store, worker, Utc::now()).await
}

async fn claim_at(store: &Store, worker: &str, at: chrono::DateTime<Utc>) -> Job {
    store
        .claim(&Claimant::new(worker), at)
        .await
        .expect("a claim")
        .expect("a ready job")
}

/// The audit records of a job, oldest first.
async fn audit_of(store: &Store, job: &str) -> Vec<wakafleet::store::audit::Record> {
    store
        .audit_query(&Filter::default(), 10_000)
        .await
        .expect("the audit")
        .into_iter()
        .map(|row| row.entry().expect("an entry").record)
        .filter(|record| record.job.as_deref() == Some(job))
        .collect()
}

/// Enqueues `count` jobs of `script` on instances `<prefix>0`, `<prefix>1`, … and tells
/// the queue.
async fn enqueue_many(
    store: &Store,
    queue: &Queue,
    prefix: &str,
    count: usize,
    script: serde_json::Value,
    max_attempts: i64,
) {
    for index in 0..count {
        let job = new_job(&format!("{prefix}{index}"), script.clone(), max_attempts);
        worker::enqueue(store, queue, &job).await.expect("a job");
    }
}

/// How many audit records have the action `action`.
async fn audited(store: &Store, action: &str) -> usize {
    let filter = Filter {
        action: Some(action.into()),
        ..Filter::default()
    };
    store
        .audit_query(&filter, 1_000)
        .await
        .expect("the audit")
        .len()
}

async fn put_instance(store: &Store, name: &str) {
    store
        .put_instance(&InstanceRecord {
            name: name.into(),
            status: InstanceStatus::Active,
            version: Some("1.0.0".into()),
            config_hash: None,
            spec: None,
            health: None,
            last_error: None,
            updated_at: Utc::now(),
        })
        .await
        .expect("an instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_each_step_once_and_audits_each_with_its_commit() {
    let folder = tempfile::tempdir().expect("a folder");
    let store = sqlite(&folder).await;
    let executor = Arc::new(Scripted::default());
    let job = store
        .enqueue(
            &new_job("web", serde_json::json!({"steps": ["a", "b", "c"]}), 3),
            Utc::now(),
        )
        .await
        .expect("a job");
    let claimed = claim(&store, "w1").await;
    let ended = runner(&store, &executor, "w1")
        .run(claimed, &CancellationToken::new())
        .await
        .expect("a run");
    assert_eq!(ended, Ended::Succeeded);
    assert_eq!(executor.log(), ["run a", "run b", "run c"]);
    let steps = store.steps(&job.id).await.expect("steps");
    assert!(
        steps
            .iter()
            .all(|step| step.status == StepStatus::Succeeded),
        "{steps:?}"
    );
    assert_eq!(steps[1].output.as_deref(), Some(r#"{"run":1}"#));
    let records = audit_of(&store, &job.id).await;
    let actions: Vec<&str> = records
        .iter()
        .map(|record| record.action.as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "instance.configure.step.a",
            "instance.configure.step.b",
            "instance.configure.step.c",
            "instance.configure.end"
        ]
    );
    for record in &records {
        assert_eq!(record.commit.as_ref(), Some(&origin()), "{record:?}");
        assert_eq!(record.metadata["worker"], "w1");
        assert_eq!(record.metadata["attempt"], 1);
        assert_eq!(record.host.as_deref(), Some("test-host"));
        assert_eq!(record.reason.as_deref(), Some("the test asked"));
    }
    assert_eq!(
        records[0].key.as_deref(),
        Some(format!("job/{}/step/a/attempt/1", job.id).as_str())
    );
    assert!(records[0].metadata.contains_key("duration_ms"));
    assert_eq!(
        store
            .job(&job.id)
            .await
            .expect("a read")
            .map(|job| job.status),
        Some(JobStatus::Succeeded)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_rolls_back_what_ran_newest_first_then_retries_then_dies() {
    let folder = tempfile::tempdir().expect("a folder");
    let store = sqlite(&folder).await;
    put_instance(&store, "web").await;
    let executor = Arc::new(Scripted::default());
    let script = serde_json::json!({
        "steps": ["a", "b", "c", "d"],
        "undo": ["a", "c"],
        "fail": {"c": 99}
    });
    let job = store
        .enqueue(&new_job("web", script, 2), Utc::now())
        .await
        .expect("a job");
    let first = runner(&store, &executor, "w1")
        .run(claim(&store, "w1").await, &CancellationToken::new())
        .await
        .expect("a run");
    assert_eq!(first, Ended::Retrying);
    // The failed step was cut off half-way as far as anyone knows: it is undone too.
    assert_eq!(
        executor.log(),
        ["run a", "run b", "run c", "undo c", "undo a"]
    );
    let steps = store.steps(&job.id).await.expect("steps");
    let statuses: Vec<(&str, StepStatus)> = steps
        .iter()
        .map(|step| (step.name.as_str(), step.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("a", StepStatus::Compensated),
            ("b", StepStatus::Compensated),
            ("c", StepStatus::Compensated),
            ("rollback", StepStatus::Succeeded)
        ]
    );
    let pending = store.job(&job.id).await.expect("a read").expect("the job");
    assert_eq!(pending.status, JobStatus::Pending);
    assert_eq!(
        pending.error.as_deref(),
        Some("c failed (run 1); rolled back: c, a")
    );

    // The retry runs every step again, fails again, and is the last attempt.
    let retry = loop {
        if let Some(job) = store
            .claim(&Claimant::new("w2"), Utc::now())
            .await
            .expect("a claim")
        {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retry.attempts, 2);
    let second = runner(&store, &executor, "w2")
        .run(retry, &CancellationToken::new())
        .await
        .expect("a run");
    assert_eq!(second, Ended::Dead);
    assert_eq!(executor.log().len(), 10, "{:?}", executor.log());
    let instance = store
        .instance("web")
        .await
        .expect("a read")
        .expect("recorded");
    assert_eq!(instance.status, InstanceStatus::Failed);
    assert_eq!(
        instance.last_error.as_deref(),
        Some("c failed (run 2); rolled back: c, a")
    );
    let records = audit_of(&store, &job.id).await;
    let undone: Vec<&str> = records
        .iter()
        .filter(|record| record.action.starts_with("instance.configure.rollback."))
        .map(|record| record.action.as_str())
        .collect();
    assert_eq!(undone.len(), 4, "{undone:?}");
    let last = records.last().expect("records");
    assert_eq!(last.action, "instance.configure.end");
    assert_eq!(last.metadata["status"], "dead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_undo_keeps_the_cause_and_the_job_waits_for_an_operator() {
    let folder = tempfile::tempdir().expect("a folder");
    let store = sqlite(&folder).await;
    put_instance(&store, "web").await;
    let executor = Arc::new(Scripted::default());
    let script = serde_json::json!({
        "steps": ["a", "b", "c"],
        "undo": ["a", "b"],
        "fail": {"c": 99},
        "fail_undo": ["b"]
    });
    let job = store
        .enqueue(&new_job("web", script, 5), Utc::now())
        .await
        .expect("a job");
    let ended = runner(&store, &executor, "w1")
        .run(claim(&store, "w1").await, &CancellationToken::new())
        .await
        .expect("a run");
    assert_eq!(
        ended,
        Ended::Failed,
        "not retried, though attempts are left"
    );
    assert_eq!(executor.log(), ["run a", "run b", "run c", "undo b"]);
    let failed = store.job(&job.id).await.expect("a read").expect("the job");
    assert_eq!(failed.status, JobStatus::Failed);
    let error = failed.error.expect("an error");
    assert!(
        error.starts_with("c failed (run 1); the rollback failed too"),
        "{error}"
    );
    assert!(error.contains("undoing `b`: undoing b broke"), "{error}");
    assert_eq!(
        store
            .instance("web")
            .await
            .expect("a read")
            .map(|i| i.status),
        Some(InstanceStatus::Failed)
    );
    // An operator retries it: every step runs again from the start.
    store.retry(&job.id, Utc::now()).await.expect("retried");
    let again = claim(&store, "w1").await;
    assert_eq!(again.attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_stops_at_once_and_the_next_resumes_after_the_last_finished_step()
 {
    let folder = tempfile::tempdir().expect("a folder");
    let store = sqlite(&folder).await;
    let executor = Arc::new(Scripted::default());
    let script = serde_json::json!({"steps": ["a", "b", "c"], "block": "b"});
    let job = store
        .enqueue(&new_job("web", script, 3), Utc::now())
        .await
        .expect("a job");
    let mut lagging = runner(&store, &executor, "w1");
    // Renewed every second: the loss is seen within one.
    lagging.lease = TimeDelta::seconds(3);
    let first = claim(&store, "w1").await;
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { lagging.run(first, &stop).await }
    });
    executor.started.notified().await;
    // The worker is taken for dead: its job goes back to the queue and to another worker.
    let later = Utc::now() + TimeDelta::hours(1);
    let reaped = store.reap(later, 3).await.expect("reaped");
    assert_eq!(reaped.len(), 1);
    let second = claim_at(&store, "w2", later).await;
    assert_eq!(second.attempts, 2);
    let ended = running.await.expect("the run").expect("a run");
    assert_eq!(ended, Ended::Lost);
    assert_eq!(executor.log(), ["run a", "dropped b"]);

    let taker = tokio::spawn({
        let (store, executor) = (Arc::clone(&store), Arc::clone(&executor));
        async move {
            runner(&store, &executor, "w2")
                .run(second, &CancellationToken::new())
                .await
        }
    });
    executor.started.notified().await;
    executor.release.notify_one();
    assert_eq!(
        taker.await.expect("the run").expect("a run"),
        Ended::Succeeded
    );
    assert_eq!(executor.log(), ["run a", "dropped b", "run b", "run c"]);
    let steps = store.steps(&job.id).await.expect("steps");
    let attempts: Vec<(i64, i64)> = steps
        .iter()
        .map(|step| (step.attempts, step.job_attempt))
        .collect();
    assert_eq!(attempts, [(1, 1), (2, 2), (1, 2)]);
    let records = audit_of(&store, &job.id).await;
    let keys: Vec<&str> = records
        .iter()
        .filter_map(|record| record.key.as_deref())
        .collect();
    assert_eq!(
        keys,
        [
            format!("job/{}/step/a/attempt/1", job.id),
            format!("job/{}/takeover/attempt/2", job.id),
            format!("job/{}/step/b/attempt/2", job.id),
            format!("job/{}/step/c/attempt/2", job.id),
            format!("job/{}/end/attempt/2", job.id),
        ]
    );
    let takeover = &records[1];
    assert_eq!(takeover.action, "instance.configure.takeover");
    assert_eq!(takeover.metadata["cut_off"]["step"], "b");
    assert_eq!(takeover.metadata["cut_off"]["attempt"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_and_stopping_take_effect_at_the_next_step_boundary() {
    let folder = tempfile::tempdir().expect("a folder");
    let store = sqlite(&folder).await;
    let executor = Arc::new(Scripted::default());
    let script = serde_json::json!({"steps": ["a", "b", "c"], "block": "a"});

    // Cancelled while `a` runs: `a` finishes, nothing after it starts.
    let cancelled = store
        .enqueue(&new_job("web", script.clone(), 3), Utc::now())
        .await
        .expect("a job");
    let running = tokio::spawn({
        let (store, executor) = (Arc::clone(&store), Arc::clone(&executor));
        let claimed = claim(&store, "w1").await;
        async move {
            runner(&store, &executor, "w1")
                .run(claimed, &CancellationToken::new())
                .await
        }
    });
    executor.started.notified().await;
    let cancelling = store
        .cancel(&cancelled.id, Utc::now())
        .await
        .expect("cancelled");
    assert_eq!(cancelling.status, JobStatus::Cancelling);
    // Its slot is kept until the worker stops.
    assert!(
        store
            .enqueue(&new_job("web", script.clone(), 3), Utc::now())
            .await
            .is_err()
    );
    executor.release.notify_one();
    assert_eq!(
        running.await.expect("the run").expect("a run"),
        Ended::Cancelled
    );
    assert_eq!(executor.log(), ["run a"]);
    let job = store
        .job(&cancelled.id)
        .await
        .expect("a read")
        .expect("the job");
    assert_eq!(job.status, JobStatus::Cancelled);

    // A worker stopping while `a` runs hands the job back after it; the next runs the rest.
    let handed = store
        .enqueue(&new_job("web", script, 3), Utc::now())
        .await
        .expect("a job");
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (store, executor, stop) = (Arc::clone(&store), Arc::clone(&executor), stop.clone());
        let claimed = claim(&store, "w1").await;
        async move { runner(&store, &executor, "w1").run(claimed, &stop).await }
    });
    executor.started.notified().await;
    stop.cancel();
    executor.release.notify_one();
    assert_eq!(
        running.await.expect("the run").expect("a run"),
        Ended::HandedBack
    );
    let job = store
        .job(&handed.id)
        .await
        .expect("a read")
        .expect("the job");
    assert_eq!((job.status, job.stalls), (JobStatus::Pending, 0));
    let next = claim(&store, "w2").await;
    assert_eq!(next.id, handed.id);
    let script_free = Arc::new(Scripted::default());
    let ended = runner(&store, &script_free, "w2")
        .run(next, &CancellationToken::new())
        .await
        .expect("a run");
    assert_eq!(ended, Ended::Succeeded);
    // `a` finished under the first worker; `b` and `c` ran under the second.
    assert_eq!(script_free.log(), ["run b", "run c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_cannot_run_fails_the_job_at_once() {
    let folder = tempfile::tempdir().expect("a folder");
    let store = sqlite(&folder).await;
    put_instance(&store, "web").await;
    let executor = Arc::new(Scripted::default());
    let job = store
        .enqueue(
            &new_job("web", serde_json::json!({"nothing": true}), 3),
            Utc::now(),
        )
        .await
        .expect("a job");
    let ended = runner(&store, &executor, "w1")
        .run(claim(&store, "w1").await, &CancellationToken::new())
        .await
        .expect("a run");
    assert_eq!(ended, Ended::Failed);
    let job = store.job(&job.id).await.expect("a read").expect("the job");
    assert_eq!(
        (job.status, job.error.as_deref()),
        (JobStatus::Failed, Some("no steps"))
    );
}

/// A pool of `concurrency` slots over `store` and `queue`, upkeep every 100 ms.
fn pool(
    store: &Arc<Store>,
    queue: &Arc<Queue>,
    executor: Arc<dyn Executor>,
    name: &str,
    concurrency: usize,
) -> Pool {
    Pool {
        store: Arc::clone(store),
        queue: Arc::clone(queue),
        executor,
        scheduler: Some(Arc::new(Scheduler {
            store: Arc::clone(store),
            max_attempts: 2,
        })),
        options: Options {
            upkeep_every: Duration::from_millis(100),
            receive_wait: Duration::from_millis(200),
            lease: TimeDelta::seconds(3),
            ..Options::new(name, concurrency)
        },
    }
}

/// Waits until no job is active, failing after `within`.
async fn drained(store: &Store, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let counts = store.job_counts().await.expect("counts");
        if counts.iter().all(|(status, _)| !status.is_active()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs still active after {within:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_is_dead_lettered_while_the_others_go_on_and_a_retry_brings_it_back() {
    let folder = tempfile::tempdir().expect("a folder");
    let store = sqlite(&folder).await;
    let queue = Arc::new(
        Queue::open("local", queue::Options::default())
            .await
            .expect("a queue"),
    );
    put_instance(&store, "poison").await;
    let executor = Arc::new(Scripted::default());
    let poison = worker::enqueue(
        &store,
        &queue,
        &new_job(
            "poison",
            serde_json::json!({"steps": ["p"], "fail": {"p": 1000}}),
            3,
        ),
    )
    .await
    .expect("a job");
    enqueue_many(
        &store,
        &queue,
        "good",
        20,
        serde_json::json!({"steps": ["g"]}),
        3,
    )
    .await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool(&store, &queue, executor.clone(), "w", 3).run(stop.clone()));
    drained(&store, Duration::from_secs(30)).await;
    let poisoned = store
        .job(&poison.id)
        .await
        .expect("a read")
        .expect("the job");
    assert_eq!((poisoned.status, poisoned.attempts), (JobStatus::Dead, 3));
    assert_eq!(poisoned.error.as_deref(), Some("p failed (run 3)"));
    assert_eq!(
        store.job_counts().await.expect("counts"),
        [(JobStatus::Succeeded, 20), (JobStatus::Dead, 1)]
    );
    assert_eq!(
        store
            .instance("poison")
            .await
            .expect("a read")
            .map(|i| i.status),
        Some(InstanceStatus::Failed)
    );

    // `jobs retry`, as an operator runs it, brings it back; it is dead again after three.
    let url = format!("sqlite://{}", folder.path().join("store.db").display());
    let output = common::wakafleet(
        folder.path(),
        &["jobs", "retry", &poison.id, "--store", &url],
    );
    let said = common::stdout_of_success(&output);
    assert!(said.contains("is pending again"), "{said}");
    drained(&store, Duration::from_secs(30)).await;
    let again = store
        .job(&poison.id)
        .await
        .expect("a read")
        .expect("the job");
    assert_eq!((again.status, again.attempts), (JobStatus::Dead, 3));
    assert_eq!(executor.log().iter().filter(|e| *e == "run p").count(), 6);
    assert_eq!(audited(&store, "job.retry").await, 1);
    stop.cancel();
    running.await.expect("the pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_fire_a_schedule_once() {
    let postgres = Postgres::start();
    let url = postgres.admin_url(&postgres.create_database("store").await);
    let open = || async {
        Arc::new(
            Store::open(&url.as_str().into(), store::Options::default())
                .await
                .expect("a store"),
        )
    };
    let (one, two) = (open().await, open().await);
    let queue = Queue::open("local", queue::Options::default())
        .await
        .expect("a queue");
    let due = Utc::now() - TimeDelta::seconds(1);
    one.put_schedule(&Schedule {
        name: "backup/web".into(),
        cron: "0 2 * * *".into(),
        timezone: "Africa/Lagos".into(),
        job_kind: JobKind::Backup,
        instance: Some("web".into()),
        region: "ng-lagos".into(),
        payload: serde_json::json!({"retain": 7}),
        enabled: true,
        last_run_at: None,
        next_run_at: due,
    })
    .await
    .expect("a schedule");
    let scheduler = |store: &Arc<Store>| Scheduler {
        store: Arc::clone(store),
        max_attempts: 3,
    };
    let (scheduler_one, scheduler_two) = (scheduler(&one), scheduler(&two));
    let (first, second) = tokio::join!(
        scheduler_one.tick(&queue, Utc::now()),
        scheduler_two.tick(&queue, Utc::now())
    );
    assert_eq!(
        first.expect("a tick") + second.expect("a tick"),
        1,
        "one firing, one job"
    );
    let jobs = one.jobs_of("web").await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].kind, JobKind::Backup);
    assert_eq!(jobs[0].payload, serde_json::json!({"retain": 7}));
    let schedule = &one.schedules().await.expect("schedules")[0];
    assert!(schedule.next_run_at > Utc::now(), "{schedule:?}");
    // Ticking again before the next time fires nothing.
    assert_eq!(
        scheduler_two
            .tick(&queue, Utc::now())
            .await
            .expect("a tick"),
        0
    );
    one.close().await;
    two.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_finishes_though_postgresql_restarts_mid_run() {
    let mut postgres = Postgres::start();
    let url = postgres.admin_url(&postgres.create_database("store").await);
    let options = store::Options {
        job_backoff: TimeDelta::milliseconds(50),
        retry_for: Duration::from_secs(60),
        ..store::Options::default()
    };
    let store = Arc::new(
        Store::open(&url.as_str().into(), options)
            .await
            .expect("a store"),
    );
    let queue = Arc::new(
        Queue::open("local", queue::Options::default())
            .await
            .expect("a queue"),
    );
    let executor = Arc::new(Scripted::default());
    enqueue_many(
        &store,
        &queue,
        "i",
        40,
        serde_json::json!({"steps": ["a", "b"]}),
        5,
    )
    .await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool(&store, &queue, executor.clone(), "w", 4).run(stop.clone()));
    // Once some work is done, the server goes away and comes back.
    while executor.log().len() < 10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    postgres.stop();
    postgres.start_again();
    drained(&store, Duration::from_secs(90)).await;
    assert_eq!(
        store.job_counts().await.expect("counts"),
        [(JobStatus::Succeeded, 40)]
    );
    stop.cancel();
    running.await.expect("the pool");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_finishes_though_redis_is_flushed_and_then_restarted_mid_run() {
    let postgres = Postgres::start();
    let url = postgres.admin_url(&postgres.create_database("store").await);
    let mut redis = Redis::start();
    let options = store::Options {
        job_backoff: TimeDelta::milliseconds(50),
        ..store::Options::default()
    };
    let store = Arc::new(
        Store::open(&url.as_str().into(), options)
            .await
            .expect("a store"),
    );
    // Two hosts, each with its own queue client and pool.
    let queue = |_: u8| async {
        Arc::new(
            Queue::open(&redis.url(), queue::Options::default())
                .await
                .expect("a queue"),
        )
    };
    let (first_queue, second_queue) = (queue(1).await, queue(2).await);
    let executor = Arc::new(Scripted::default());
    enqueue_many(
        &store,
        &first_queue,
        "i",
        60,
        serde_json::json!({"steps": ["a", "b"]}),
        5,
    )
    .await;
    let stop = CancellationToken::new();
    let first =
        tokio::spawn(pool(&store, &first_queue, executor.clone(), "host-a", 2).run(stop.clone()));
    let second =
        tokio::spawn(pool(&store, &second_queue, executor.clone(), "host-b", 2).run(stop.clone()));
    let ran = |count: usize| {
        let executor = Arc::clone(&executor);
        async move {
            while executor.log().len() < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    ran(20).await;
    // Every delivery the queue held is gone: the store's scan publishes the due jobs again.
    redis.flushall();
    ran(60).await;
    redis.restart();
    drained(&store, Duration::from_secs(60)).await;
    assert_eq!(
        store.job_counts().await.expect("counts"),
        [(JobStatus::Succeeded, 60)]
    );
    let runs = executor.log();
    for step in ["a", "b"] {
        let count = runs
            .iter()
            .filter(|entry| **entry == format!("run {step}"))
            .count();
        assert_eq!(count, 60, "each job's step {step} ran once");
    }
    stop.cancel();
    first.await.expect("a pool");
    second.await.expect("a pool");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_patches_go_first_and_the_jobs_command_lists_shows_and_cancels() {
    let folder = tempfile::tempdir().expect("a folder");
    let store = sqlite(&folder).await;
    let url = format!("sqlite://{}", folder.path().join("store.db").display());
    let mut ids = Vec::new();
    for (instance, kind, security) in [
        ("a", JobKind::Configure, false),
        ("b", JobKind::Upgrade, false),
        ("c", JobKind::Upgrade, true),
        ("d", JobKind::Configure, false),
    ] {
        let mut job = new_job(instance, serde_json::json!({"steps": ["x"]}), 3);
        job.kind = kind;
        job.priority = wakafleet::jobs::priority(kind, security);
        ids.push(store.enqueue(&job, Utc::now()).await.expect("a job").id);
    }
    // The security patch first, then the order they came in.
    let mut order = Vec::new();
    for _ in 0..2 {
        order.push(claim(&store, "w").await.instance);
    }
    assert_eq!(order, ["c", "a"]);

    let listed = common::stdout_of_success(&common::wakafleet(
        folder.path(),
        &["jobs", "list", "--store", &url, "--format", "json"],
    ));
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    let jobs = listed["jobs"].as_array().expect("a list");
    assert_eq!(jobs.len(), 4);
    let c = jobs
        .iter()
        .find(|job| job["instance"] == "c")
        .expect("job c");
    let fields: Vec<&str> = c
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "attempts",
            "commit",
            "id",
            "instance",
            "kind",
            "last_error",
            "not_before",
            "priority",
            "status",
            "step"
        ]
    );
    assert_eq!(
        (
            &c["status"],
            &c["kind"],
            &c["priority"],
            &c["attempts"],
            &c["commit"]
        ),
        (
            &serde_json::json!("running"),
            &serde_json::json!("upgrade"),
            &serde_json::json!(100),
            &serde_json::json!(1),
            &serde_json::json!(origin().sha)
        )
    );
    let pending = common::stdout_of_success(&common::wakafleet(
        folder.path(),
        &[
            "jobs", "list", "--store", &url, "--status", "pending", "--format", "json",
        ],
    ));
    let pending: serde_json::Value = serde_json::from_str(&pending).expect("JSON");
    assert_eq!(pending["jobs"].as_array().map(Vec::len), Some(2));

    // Cancelling a running job says it is cancelling; a pending one is cancelled at once.
    let said = common::stdout_of_success(&common::wakafleet(
        folder.path(),
        &["jobs", "cancel", &ids[2], "--store", &url],
    ));
    assert!(said.contains("is cancelling"), "{said}");
    let said = common::stdout_of_success(&common::wakafleet(
        folder.path(),
        &["jobs", "cancel", &ids[3], "--store", &url],
    ));
    assert!(said.ends_with("is cancelled\n"), "{said}");
    let refused = common::wakafleet(folder.path(), &["jobs", "cancel", &ids[3], "--store", &url]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("only a pending or running job can be cancelled"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let shown = common::stdout_of_success(&common::wakafleet(
        folder.path(),
        &["jobs", "show", &ids[2], "--store", &url],
    ));
    assert!(shown.contains("status     cancelling"), "{shown}");
    assert_eq!(
        audited(&store, "job.cancel").await,
        3,
        "the refused one too"
    );
}
