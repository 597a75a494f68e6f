//! Jobs benchmark: what the job machinery costs per job, against a floor of the same bare
//! statements written by hand, on the same servers in the same run.
//!
//! One PostgreSQL server with its default durability (fsync and synchronous_commit on) and
//! one Redis server (`--save '' --appendonly no`) are started by the benchmark. Each case
//! pushes `--jobs` no-op jobs (one step that does nothing) through 4 workers while a
//! producer enqueues them, and times from the first enqueue until the last job is done:
//!
//! - ours over Redis: `jobs::worker::enqueue` (the store's INSERT, an XADD), a `Pool` of 4
//!   slots with a no-op executor: XREADGROUP, the leased claim, the step's start, audit
//!   record and finish, the job's finish and its audit record, XACK;
//! - the floor over Redis: an INSERT and an XADD per job; 4 consumers doing XREADGROUP, a
//!   `FOR UPDATE SKIP LOCKED` claim, the finishing UPDATE and XACK;
//! - the same two with the in-process queue (ours: `Queue::Local`; the floor: a channel).
//!
//! It prints jobs per second and p50/p99 of enqueue-to-done for each, the ratio of the
//! floor's rate to ours, and whether the goals are met: ours at most 1.5 times the floor's
//! cost per job, and at least 1,000 jobs per second.
//!
//! Run with `cargo bench --bench jobs` (see bench/README.md). Options after `--`:
//! `--jobs N` (10,000), `--rounds R` (1), `--strict` (exit 1 when a goal is not met).

#[path = "../../tests/common/postgres.rs"]
mod postgres;
#[path = "../../tests/common/redis.rs"]
mod redis_server;

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use futures_util::future::BoxFuture;
use redis::AsyncCommands;
use sqlx::{Row, any::AnyPoolOptions};
use tokio_util::sync::CancellationToken;

use postgres::Postgres;
use redis_server::Redis;
use wakafleet::{
    jobs::{
        Context, Executor, StepDef, StepError,
        worker::{self, Options as PoolOptions, Pool},
    },
    queue::{self, Queue},
    store::{
        Options as StoreOptions, Store,
        jobs::{Job, JobFilter, JobKind, JobStatus, NewJob},
    },
};

const WORKERS: usize = 4;
/// Tasks enqueueing at once, as a daemon enqueueing a plan's actions does.
const PRODUCERS: usize = 4;
const GOAL_RATIO: f64 = 1.5;
const GOAL_RATE: f64 = 1_000.0;

/// One step that does nothing.
struct NoOp;

impl Executor for NoOp {
    fn workflow(&self, _job: &Job) -> Result<Vec<StepDef>, StepError> {
        Ok(vec![StepDef::new("noop", Duration::from_secs(10))])
    }

    fn run<'a>(
        &'a self,
        _step: &'a StepDef,
        _context: Context<'a>,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, StepError>> {
        Box::pin(async { Ok(None) })
    }

    fn undo<'a>(
        &'a self,
        _step: &'a StepDef,
        _context: Context<'a>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async { Ok(()) })
    }
}

/// What one case measured.
struct Figures {
    seconds: f64,
    /// Enqueue-to-done of each job, in milliseconds, sorted.
    latencies: Vec<f64>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(index).copied().unwrap_or(f64::NAN)
    }

    fn print(&self, label: &str) {
        println!(
            "  {label:<34} {:>9.0} jobs/s {:>9.1} ms p50 {:>9.1} ms p99 {:>7.2} s",
            self.rate(),
            self.percentile(0.5),
            self.percentile(0.99),
            self.seconds
        );
    }
}

fn main() -> ExitCode {
    let mut jobs = 10_000_usize;
    let mut rounds = 1_usize;
    let mut strict = false;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> usize {
            args.next()
                .and_then(|value| value.replace(['_', ','], "").parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--jobs" => jobs = number("--jobs").max(WORKERS),
            "--rounds" => rounds = number("--rounds").max(1),
            "--strict" => strict = true,
            "--only" => only = args.next(),
            _ => {}
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let postgres = Postgres::start_with(&[]);
    let redis = Redis::start();
    println!(
        "{jobs} no-op jobs, {WORKERS} workers, PostgreSQL with fsync on, Redis without persistence; {rounds} round(s)"
    );
    let mut met = true;
    for round in 0..rounds {
        println!("round {}", round + 1);
        for (name, redis_url) in [("Redis", Some(redis.url())), ("in-process", None)] {
            if only.as_deref().is_some_and(|only| only != name) {
                continue;
            }
            let floor = runtime.block_on(async {
                let url = postgres.admin_url(
                    &postgres
                        .create_database(&format!("floor{round}{}", redis_url.is_some()))
                        .await,
                );
                floor_case(&url, redis_url.as_deref(), jobs).await
            });
            let ours = runtime.block_on(async {
                let url = postgres.admin_url(
                    &postgres
                        .create_database(&format!("ours{round}{}", redis_url.is_some()))
                        .await,
                );
                ours_case(&url, redis_url.as_deref(), jobs, round).await
            });
            floor.print(&format!("floor over {name}"));
            ours.print(&format!("wakafleet over {name}"));
            let ratio = floor.rate() / ours.rate();
            let ratio_met = ratio <= GOAL_RATIO;
            let rate_met = ours.rate() >= GOAL_RATE;
            met &= ratio_met && rate_met;
            println!(
                "  cost per job, ours / floor: {ratio:.2} (goal at most {GOAL_RATIO}: {}); rate {:.0} jobs/s (goal at least {GOAL_RATE}: {})",
                if ratio_met { "met" } else { "missed" },
                ours.rate(),
                if rate_met { "met" } else { "missed" }
            );
        }
    }
    if strict && !met {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// wakafleet's own path: enqueue through the store and the queue, a pool of 4 slots.
async fn ours_case(url: &str, redis: Option<&str>, jobs: usize, round: usize) -> Figures {
    let store = Arc::new(
        Store::open(&url.into(), StoreOptions::default())
            .await
            .expect("a store"),
    );
    let queue_url = redis.unwrap_or("local");
    let queue = Arc::new(
        Queue::open(
            queue_url,
            queue::Options {
                prefix: format!("bench{round}"),
                ..queue::Options::default()
            },
        )
        .await
        .expect("a queue"),
    );
    let stop = CancellationToken::new();
    let pool = Pool {
        store: Arc::clone(&store),
        queue: Arc::clone(&queue),
        executor: Arc::new(NoOp),
        scheduler: None,
        options: PoolOptions::new("bench", WORKERS),
    };
    let running = tokio::spawn(pool.run(stop.clone()));
    let started = Instant::now();
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let (store, queue) = (Arc::clone(&store), Arc::clone(&queue));
        producers.push(tokio::spawn(async move {
            for index in (producer..jobs).step_by(PRODUCERS) {
                let job = NewJob {
                    id: None,
                    kind: JobKind::Health,
                    instance: format!("i{index}"),
                    region: "ng-lagos".into(),
                    priority: 0,
                    max_attempts: 3,
                    payload: serde_json::json!({}),
                    commit_sha: None,
                    reason: "bench".into(),
                    not_before: Utc::now(),
                };
                worker::enqueue(&store, &queue, &job)
                    .await
                    .expect("enqueued");
            }
        }));
    }
    for producer in producers {
        producer.await.expect("a producer");
    }
    loop {
        let counts = store.job_counts().await.expect("counts");
        let done: i64 = counts
            .iter()
            .filter(|(status, _)| *status == JobStatus::Succeeded)
            .map(|(_, count)| count)
            .sum();
        if done as usize >= jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    running.await.expect("the pool");
    let finished = store
        .list_jobs(
            &JobFilter {
                status: Some(JobStatus::Succeeded),
                instance: None,
            },
            i64::MAX,
        )
        .await
        .expect("the jobs");
    let mut latencies: Vec<f64> = finished
        .iter()
        .filter_map(|job| {
            let done = job.finished_at?;
            Some((done - job.created_at).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    if std::env::var_os("BENCH_DEBUG").is_some() {
        let mut slow: Vec<&Job> = finished.iter().collect();
        slow.sort_by_key(|job| job.finished_at.map(|at| at - job.created_at));
        for job in slow.iter().rev().take(3) {
            eprintln!(
                "slow: {} created {} started {:?} finished {:?} attempts {}",
                job.instance, job.created_at, job.started_at, job.finished_at, job.attempts
            );
        }
        eprintln!("measured {seconds} s; done {}", finished.len());
    }
    store.close().await;
    Figures { seconds, latencies }
}

const FLOOR_TABLE: &str = "CREATE TABLE floor_jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, \
     priority BIGINT NOT NULL, created_us BIGINT NOT NULL, finished_us BIGINT); \
     CREATE INDEX floor_ready ON floor_jobs (status, priority, created_us)";

/// The floor: the bare statements by hand.
async fn floor_case(url: &str, redis: Option<&str>, jobs: usize) -> Figures {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(StoreOptions::default().max_connections)
        .connect(url)
        .await
        .expect("the floor's pool");
    sqlx::raw_sql(FLOOR_TABLE)
        .execute(&pool)
        .await
        .expect("the floor's table");
    let (sender, receiver) = async_channel();
    let client = redis.map(|url| redis::Client::open(url).expect("a Redis client"));
    if let Some(client) = &client {
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("a Redis connection");
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("floor")
            .arg("g")
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await
            .expect("a group");
    }
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let mut consumers = Vec::new();
    for consumer in 0..WORKERS {
        let (pool, client, receiver, done, all_done) = (
            pool.clone(),
            client.clone(),
            receiver.clone(),
            Arc::clone(&done),
            Arc::clone(&all_done),
        );
        consumers.push(tokio::spawn(async move {
            let mut blocking = match &client {
                Some(client) => Some(
                    client
                        .get_multiplexed_async_connection_with_config(
                            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
                        )
                        .await
                        .expect("a blocking connection"),
                ),
                None => None,
            };
            loop {
                if done.load(std::sync::atomic::Ordering::SeqCst) >= jobs {
                    return;
                }
                // A delivery.
                let entry = match &mut blocking {
                    Some(connection) => {
                        let reply: redis::streams::StreamReadReply = connection
                            .xread_options(
                                &["floor"],
                                &[">"],
                                &redis::streams::StreamReadOptions::default()
                                    .group("g", format!("c{consumer}"))
                                    .count(1)
                                    .block(200),
                            )
                            .await
                            .expect("XREADGROUP");
                        reply
                            .keys
                            .into_iter()
                            .flat_map(|key| key.ids)
                            .next()
                            .map(|entry| entry.id)
                    }
                    None => {
                        match tokio::time::timeout(Duration::from_millis(200), receiver.recv())
                            .await
                        {
                            Ok(Some(())) => Some(String::new()),
                            _ => None,
                        }
                    }
                };
                let Some(entry) = entry else { continue };
                let now = micros();
                // As the pool does: a claim that finds nothing is tried again a little later.
                let claim = || {
                    sqlx::query(
                        "UPDATE floor_jobs SET status = 'running' WHERE id = (SELECT id FROM floor_jobs \
                         WHERE status = 'pending' ORDER BY priority DESC, created_us LIMIT 1 \
                         FOR UPDATE SKIP LOCKED) RETURNING id",
                    )
                    .fetch_optional(&pool)
                };
                let mut claimed = claim().await.expect("a claim");
                for wait in [2, 10, 50] {
                    if claimed.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    claimed = claim().await.expect("a claim");
                }
                if let Some(connection) = &mut blocking {
                    let _: i64 = connection
                        .xack("floor", "g", &[&entry])
                        .await
                        .expect("XACK");
                }
                let Some(row) = claimed else {
                    if std::env::var_os("BENCH_DEBUG").is_some() {
                        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM floor_jobs WHERE status = 'pending'")
                            .fetch_one(&pool)
                            .await
                            .expect("a count");
                        eprintln!("floor: an empty claim with {pending} pending");
                    }
                    continue;
                };
                let id: String = row.try_get(0).expect("an id");
                sqlx::query("UPDATE floor_jobs SET status = 'done', finished_us = $2 WHERE id = $1")
                    .bind(id)
                    .bind(micros().max(now))
                    .execute(&pool)
                    .await
                    .expect("the finish");
                if done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= jobs {
                    all_done.notify_one();
                }
            }
        }));
    }
    let started = Instant::now();
    let sender = Arc::new(sender);
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let (pool, client, sender) = (pool.clone(), client.clone(), Arc::clone(&sender));
        producers.push(tokio::spawn(async move {
            let mut publisher = match &client {
                Some(client) => Some(
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .expect("a Redis connection"),
                ),
                None => None,
            };
            for index in (producer..jobs).step_by(PRODUCERS) {
                let id = format!("job-{index}");
                sqlx::query(
                    "INSERT INTO floor_jobs (id, status, priority, created_us) VALUES ($1, 'pending', 0, $2)",
                )
                .bind(id.as_str())
                .bind(micros())
                .execute(&pool)
                .await
                .expect("an insert");
                match &mut publisher {
                    Some(connection) => {
                        let _: String = connection
                            .xadd("floor", "*", &[("job", id.as_str())])
                            .await
                            .expect("XADD");
                    }
                    None => sender.send(()),
                }
            }
        }));
    }
    for producer in producers {
        producer.await.expect("a producer");
    }
    all_done.notified().await;
    let seconds = started.elapsed().as_secs_f64();
    for consumer in consumers {
        consumer.await.expect("a consumer");
    }
    let rows = sqlx::query("SELECT finished_us - created_us FROM floor_jobs")
        .fetch_all(&pool)
        .await
        .expect("the floor's rows");
    let mut latencies: Vec<f64> = rows
        .iter()
        .map(|row| row.try_get::<i64, _>(0).expect("a latency") as f64 / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    pool.close().await;
    Figures { seconds, latencies }
}

fn micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// An unbounded multi-consumer channel of wake-ups for the in-process floor.
fn async_channel() -> (Sender, Receiver) {
    let shared = Arc::new((std::sync::Mutex::new(0_usize), tokio::sync::Notify::new()));
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

type Shared = Arc<(std::sync::Mutex<usize>, tokio::sync::Notify)>;

struct Sender(Shared);

impl Sender {
    fn send(&self, (): ()) {
        *self.0.0.lock().expect("the count") += 1;
        self.0.1.notify_one();
    }
}

#[derive(Clone)]
struct Receiver(Shared);

impl Receiver {
    async fn recv(&self) -> Option<()> {
        loop {
            {
                let mut count = self.0.0.lock().expect("the count");
                if *count > 0 {
                    *count -= 1;
                    return Some(());
                }
            }
            self.0.1.notified().await;
        }
    }
}
