//! Chaos benchmark: jobs through worker processes that are killed at random, and a Redis
//! that is flushed once, on real PostgreSQL and Redis servers.
//!
//! The benchmark starts 4 worker processes (itself, in `--once worker` mode: a `Pool` of 2
//! slots over Redis with a 2 s lease and upkeep every 500 ms), enqueues `--jobs` jobs and,
//! while they run, SIGKILLs a random worker every few hundred milliseconds and starts a new
//! one in its place, and flushes Redis once a third of the jobs are done. Each job has one
//! step that waits 5 to 50 ms, records an execution (`chaos_executions`, one row per run
//! of the step) and then, checking first, its side effect (`chaos_effects`, one row per
//! job if all is well).
//!
//! It reports the jobs lost (not succeeded at the end: must be 0), duplicate side effects
//! (must be 0), duplicate executions (steps run again after a kill: reported), the kills,
//! and the time until all jobs were done.
//!
//! Run with `cargo bench --bench chaos` (see bench/README.md). Options after `--`:
//! `--jobs N` (1,000), `--strict` (exit 1 when a job was lost or a side effect doubled).

#[path = "../../tests/common/postgres.rs"]
mod postgres;
#[path = "../../tests/common/redis.rs"]
mod redis_server;

use std::{
    process::{Child, Command, ExitCode, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{TimeDelta, Utc};
use futures_util::future::BoxFuture;
use sqlx::PgPool;
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
        jobs::{Job, JobKind, JobStatus, NewJob},
    },
};

const WORKERS: usize = 4;
const SLOTS: usize = 2;

/// The step: a short wait, an execution recorded, the side effect made unless made already.
struct Effect {
    pool: PgPool,
}

impl Executor for Effect {
    fn workflow(&self, _job: &Job) -> Result<Vec<StepDef>, StepError> {
        Ok(vec![StepDef::new("effect", Duration::from_secs(10))])
    }

    fn run<'a>(
        &'a self,
        _step: &'a StepDef,
        context: Context<'a>,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, StepError>> {
        Box::pin(async move {
            let wait = 5 + random() % 46;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let failed = |error: sqlx::Error| StepError::Failed(error.to_string());
            sqlx::query("INSERT INTO chaos_executions (job, attempt) VALUES ($1, $2)")
                .bind(&context.job.id)
                .bind(context.job.attempts)
                .execute(&self.pool)
                .await
                .map_err(failed)?;
            sqlx::query(
                "INSERT INTO chaos_effects (job) SELECT $1 WHERE NOT EXISTS \
                 (SELECT 1 FROM chaos_effects WHERE job = $1)",
            )
            .bind(&context.job.id)
            .execute(&self.pool)
            .await
            .map_err(failed)?;
            Ok(None)
        })
    }

    fn undo<'a>(
        &'a self,
        _step: &'a StepDef,
        _context: Context<'a>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A small random number (xorshift, seeded from the clock and the process).
fn random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            (Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64) ^ (u64::from(std::process::id()) << 32) | 1
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--once") {
        return worker_process(&args[1..]);
    }
    let mut jobs = 1_000_usize;
    let mut strict = false;
    let mut rest = args.into_iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--jobs" => {
                jobs = rest
                    .next()
                    .and_then(|value| value.replace(['_', ','], "").parse().ok())
                    .expect("--jobs takes a number")
            }
            "--strict" => strict = true,
            _ => {}
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let postgres = Postgres::start_with(&[]);
    let redis = Redis::start();
    let url =
        runtime.block_on(async { postgres.admin_url(&postgres.create_database("chaos").await) });
    let report = runtime.block_on(orchestrate(&url, &redis, jobs));
    println!(
        "{jobs} jobs, {WORKERS} worker processes of {SLOTS} slots, {} SIGKILLs, one FLUSHALL",
        report.kills
    );
    println!("  jobs lost:                 {} (must be 0)", report.lost);
    println!(
        "  duplicate side effects:    {} (must be 0)",
        report.duplicate_effects
    );
    println!(
        "  duplicate executions:      {}",
        report.duplicate_executions
    );
    println!("  time until all were done:  {:.1} s", report.seconds);
    if strict && (report.lost > 0 || report.duplicate_effects > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

struct Report {
    kills: usize,
    lost: i64,
    duplicate_effects: i64,
    duplicate_executions: i64,
    seconds: f64,
}

async fn orchestrate(url: &str, redis: &Redis, jobs: usize) -> Report {
    let store = Store::open(&url.into(), StoreOptions::default())
        .await
        .expect("a store");
    let pool = PgPool::connect(url).await.expect("a pool");
    sqlx::raw_sql(
        "CREATE TABLE chaos_executions (job TEXT NOT NULL, attempt BIGINT NOT NULL); \
         CREATE TABLE chaos_effects (job TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("the tables");
    let queue = Queue::open(&redis.url(), queue::Options::default())
        .await
        .expect("a queue");
    let spawn = |index: usize| -> Child {
        Command::new(std::env::current_exe().expect("this program"))
            .args(["--once", url, &redis.url(), &format!("worker-{index}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("a worker process")
    };
    let mut workers: Vec<Child> = (0..WORKERS).map(spawn).collect();
    let mut spawned = WORKERS;
    let started = Instant::now();
    for index in 0..jobs {
        let job = NewJob {
            id: None,
            kind: JobKind::Health,
            instance: format!("i{index}"),
            region: "ng-lagos".into(),
            priority: 0,
            max_attempts: 10,
            payload: serde_json::json!({}),
            commit_sha: None,
            reason: "chaos".into(),
            not_before: Utc::now(),
        };
        worker::enqueue(&store, &queue, &job)
            .await
            .expect("enqueued");
    }
    let mut kills = 0;
    let mut flushed = false;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = store.job_counts().await.expect("counts");
        let active: i64 = counts
            .iter()
            .filter(|(status, _)| status.is_active())
            .map(|(_, count)| count)
            .sum();
        if active == 0 || Instant::now() > deadline {
            break;
        }
        let done = jobs as i64 - active;
        if !flushed && done * 3 >= jobs as i64 {
            redis.flushall();
            flushed = true;
        }
        // Kill a random worker now and then, while work is left.
        tokio::time::sleep(Duration::from_millis(150 + random() % 300)).await;
        if random().is_multiple_of(2) {
            let victim = (random() as usize) % workers.len();
            let _ = workers[victim].kill();
            let _ = workers[victim].wait();
            kills += 1;
            workers[victim] = spawn(spawned);
            spawned += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .expect("a count")
        }
    };
    let succeeded = store
        .job_counts()
        .await
        .expect("counts")
        .iter()
        .filter(|(status, _)| *status == JobStatus::Succeeded)
        .map(|(_, count)| *count)
        .sum::<i64>();
    let report = Report {
        kills,
        lost: jobs as i64 - succeeded,
        duplicate_effects: count(
            "SELECT COALESCE(SUM(n - 1), 0)::BIGINT FROM (SELECT COUNT(*) AS n FROM chaos_effects GROUP BY job) AS c",
        )
        .await,
        duplicate_executions: count("SELECT COUNT(*) FROM chaos_executions").await
            - count("SELECT COUNT(DISTINCT job) FROM chaos_executions").await,
        seconds,
    };
    store.close().await;
    report
}

/// A worker process: a pool over the store and Redis until killed.
fn worker_process(args: &[String]) -> ExitCode {
    let [url, redis, name] = args else {
        eprintln!("--once STORE_URL REDIS_URL NAME");
        return ExitCode::FAILURE;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let store = Arc::new(
            Store::open(&url.as_str().into(), StoreOptions::default())
                .await
                .expect("a store"),
        );
        let queue = Arc::new(
            Queue::open(redis, queue::Options::default())
                .await
                .expect("a queue"),
        );
        let effects = PgPool::connect(url).await.expect("a pool");
        Pool {
            store,
            queue,
            executor: Arc::new(Effect { pool: effects }),
            scheduler: None,
            options: PoolOptions {
                lease: TimeDelta::seconds(2),
                upkeep_every: Duration::from_millis(500),
                max_stalls: 100,
                ..PoolOptions::new(name, SLOTS)
            },
        }
        .run(CancellationToken::new())
        .await;
    });
    ExitCode::SUCCESS
}
