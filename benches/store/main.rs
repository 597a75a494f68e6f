//! Store benchmark: what chaining the audit log costs on PostgreSQL, and how fast a long
//! chain is verified.
//!
//! One PostgreSQL server, started by the benchmark with PostgreSQL's default durability
//! settings (fsync and synchronous_commit on), holds two databases. In the first, chained
//! appends through the store (`Store::append_one`, `Store::append`) are compared with plain
//! INSERTs into `audit_plain`, an unchained table of the same shape, through a pool of the
//! same size: one appender, eight appenders, and batches of 100 records. In the second, an
//! audit log of 1,000,000 records is verified with `Store::audit_verify` at three page sizes.
//!
//! Run with `cargo bench --bench store` (see bench/README.md). Options after `--`:
//! `--appends N` (3000), `--batches B` (100), `--records N` (1,000,000), `--rounds R` (5),
//! `--warmups W` (1), `--strict` (exit 1 when a goal is not met). `--once open URL` and
//! `--once verify URL PAGE [N]` are the child modes used to measure peak memory; with N the
//! verify is repeated N times, which is handy under `perf record`. `--once fill URL RECORDS`
//! appends that many records to the store at URL, to prepare one for profiling.

#[path = "../common/measure.rs"]
mod measure;
#[path = "../../tests/common/postgres.rs"]
mod postgres;

use std::{
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use postgres::Postgres;
use serde::Serialize;
use serde_json::json;
use sqlx::{
    AnyPool, PgPool,
    any::{AnyPoolOptions, AnyQueryResult},
    postgres::{PgPoolCopyExt, PgPoolOptions},
};
use tokio::{runtime::Runtime, task::JoinSet};
use wakafleet::store::{
    Options as StoreOptions, Store,
    audit::{Actor, Record, Verifier},
};

/// The goals of the requirement.
const GOAL_ONE_RATIO: f64 = 0.75;
const GOAL_EIGHT_RATE: f64 = 3_000.0;
const GOAL_BATCH_RATIO: f64 = 0.8;
const GOAL_VERIFY_RATE: f64 = 1_000_000.0;

/// Appenders of the concurrent comparison, and connections of both pools.
const APPENDERS: usize = 8;
/// Records per batch: one plan's actions.
const BATCH: usize = 100;
/// Records per `Store::append` while filling the verify database.
const FILL_BATCH: usize = 1_000;
/// Page sizes of the verify.
const PAGES: [i64; 3] = [1_000, 10_000, 50_000];
/// The page size of the verify's breakdown.
const BREAKDOWN_PAGE: i64 = 10_000;

/// The columns of `audit_log` and `audit_plain` that a record without an idempotency key
/// fills (its `idempotency_key` stays NULL).
const COLUMNS: &str = "seq, id, at_us, actor_kind, actor_id, actor_email, action, resource, commit_sha, result, body, prev_hash, hash";

/// `audit_plain`: the columns, types and indexes of `audit_log` (migrations/postgres/
/// 0001_store.sql and 0003_audit_keys.sql), without the chain. The append-only triggers of
/// `audit_log` fire on UPDATE, DELETE and TRUNCATE only, so they cost an INSERT nothing and
/// are left out.
const PLAIN_TABLE: &str = "
CREATE TABLE audit_plain (
    seq         BIGINT PRIMARY KEY CHECK (seq > 0),
    id          TEXT NOT NULL UNIQUE,
    at_us       BIGINT NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    actor_email TEXT,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    commit_sha  TEXT,
    result      TEXT NOT NULL,
    body        TEXT NOT NULL,
    prev_hash   BYTEA NOT NULL,
    hash        BYTEA NOT NULL,
    idempotency_key TEXT
);
CREATE UNIQUE INDEX audit_plain_idempotency_key ON audit_plain (idempotency_key);
CREATE INDEX audit_plain_at ON audit_plain (at_us);
CREATE INDEX audit_plain_action ON audit_plain (action);
CREATE INDEX audit_plain_resource ON audit_plain (resource);
CREATE INDEX audit_plain_commit ON audit_plain (commit_sha);
CREATE INDEX audit_plain_actor ON audit_plain (actor_id);
";

struct Options {
    appends: usize,
    batches: usize,
    records: usize,
    rounds: usize,
    warmups: usize,
    strict: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|arg| arg == "--once") {
        once(&args[at + 1..]);
        return ExitCode::SUCCESS;
    }
    let mut options = Options {
        appends: 3_000,
        batches: 100,
        records: 1_000_000,
        rounds: 5,
        warmups: 1,
        strict: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> usize {
            args.next()
                .and_then(|value| value.replace(['_', ','], "").parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--appends" => options.appends = number("--appends").max(APPENDERS),
            "--batches" => options.batches = number("--batches").max(1),
            "--records" => options.records = number("--records").max(1),
            "--rounds" => options.rounds = number("--rounds").max(1),
            "--warmups" => options.warmups = number("--warmups"),
            "--strict" => options.strict = true,
            // cargo bench passes --bench; anything else is a filter we do not use.
            _ => {}
        }
    }
    run(&options)
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Opens the store as the daemon does: the default options, a pool of 8 connections.
async fn open(url: &str) -> Store {
    Store::open(&url.into(), StoreOptions::default())
        .await
        .unwrap_or_else(|error| panic!("opening the store at {url}: {error}"))
}

fn run(options: &Options) -> ExitCode {
    let started = Instant::now();
    // The server shares the machine with the benchmark: other load shows in the figures.
    let start_load = load_average();
    let runtime = runtime();
    // PostgreSQL's defaults: no setting is changed, so every commit waits for its WAL flush.
    let postgres = Postgres::start_with(&[]);
    let (append_url, verify_url) = runtime.block_on(async {
        let append = postgres.create_database("append").await;
        let verify = postgres.create_database("verify").await;
        (postgres.admin_url(&append), postgres.admin_url(&verify))
    });
    let admin = runtime.block_on(async {
        PgPoolOptions::new()
            .max_connections(1)
            .connect(&append_url)
            .await
            .expect("an administrative connection")
    });
    print_server(&runtime, &admin);

    let store = Arc::new(runtime.block_on(open(&append_url)));
    runtime.block_on(async {
        sqlx::raw_sql(PLAIN_TABLE)
            .execute(&admin)
            .await
            .expect("creating audit_plain");
    });
    sqlx::any::install_default_drivers();
    let plain = runtime.block_on(async {
        AnyPoolOptions::new()
            .max_connections(StoreOptions::default().max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&append_url)
            .await
            .expect("the plain INSERTs' pool")
    });
    println!(
        "both sides use a sqlx AnyPool of {} connections; {} warmup and {} measured rounds \
         per comparison, alternating which side goes first",
        StoreOptions::default().max_connections,
        options.warmups,
        options.rounds
    );
    let bench = Bench {
        runtime: &runtime,
        store,
        plain,
        seq: Arc::new(AtomicI64::new(1)),
        next_record: 0,
        options,
    };
    let mut goals = Vec::new();
    let bench = one_appender(bench, &mut goals);
    let bench = eight_appenders(bench, &mut goals);
    let bench = batches(bench, &mut goals);
    check_append_database(&bench, &admin);
    drop(bench);

    verify(&runtime, &postgres, &verify_url, options, &mut goals);

    println!("\ngoals:");
    let verdict = |met: bool| if met { "met" } else { "NOT MET" };
    for (goal, met) in &goals {
        println!("  {goal}: {}", verdict(*met));
    }
    println!(
        "\nthe whole run took {:.1} s; load average at the start {start_load}, at the end {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    if options.strict && goals.iter().any(|(_, met)| !met) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The load averages over 1, 5 and 15 minutes, as /proc/loadavg has them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Prints the server's version and the settings that decide what a commit costs.
fn print_server(runtime: &Runtime, admin: &PgPool) {
    runtime.block_on(async {
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(admin)
            .await
            .expect("the server's version");
        let mut settings = Vec::new();
        for name in [
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "full_page_writes",
            "commit_delay",
            "shared_buffers",
        ] {
            let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
                .fetch_one(admin)
                .await
                .unwrap_or_else(|error| panic!("SHOW {name}: {error}"));
            settings.push(format!("{name}={value}"));
        }
        println!(
            "PostgreSQL {version} on 127.0.0.1 (TCP, password), default settings: {}",
            settings.join(" ")
        );
    });
}

/// What the comparisons share: the runtime, the store and the plain pool of the append
/// database, the next `seq` of `audit_plain`, and the number of the next record made.
struct Bench<'a> {
    runtime: &'a Runtime,
    store: Arc<Store>,
    plain: AnyPool,
    seq: Arc<AtomicI64>,
    next_record: u64,
    options: &'a Options,
}

impl Bench<'_> {
    /// The `seq` of the newest chained record.
    fn head(&self) -> i64 {
        self.runtime
            .block_on(self.store.audit_head())
            .expect("the audit log's head")
            .seq
    }

    /// `count` new records, numbered on from the last ones made.
    fn records(&mut self, count: usize) -> Vec<Record> {
        let first = self.next_record;
        self.next_record += count as u64;
        (first..self.next_record).map(record).collect()
    }

    /// Runs the warmups and rounds of one comparison, chained and plain alternating which
    /// goes first, and returns the rates (things per second) of the measured rounds in
    /// order. Each side makes its records untimed and returns its own wall time.
    fn alternate(
        &mut self,
        things: usize,
        mut chained: impl FnMut(&mut Self) -> Duration,
        mut plain: impl FnMut(&mut Self) -> Duration,
    ) -> Comparison {
        let mut comparison = Comparison::default();
        let started = Instant::now();
        for round in 0..self.options.warmups + self.options.rounds {
            let measured = round >= self.options.warmups;
            for step in 0..2 {
                let rate = |time: Duration| things as f64 / time.as_secs_f64();
                if (round + step) % 2 == 0 {
                    let rate = rate(chained(self));
                    if measured {
                        comparison.chained.push(rate);
                    }
                } else {
                    let rate = rate(plain(self));
                    if measured {
                        comparison.plain.push(rate);
                    }
                }
            }
        }
        comparison.seconds = started.elapsed().as_secs_f64();
        comparison
    }
}

/// The rates of the measured rounds of a comparison, in round order.
#[derive(Default)]
struct Comparison {
    chained: Vec<f64>,
    plain: Vec<f64>,
    seconds: f64,
}

/// Medians of a comparison.
struct Medians {
    chained: f64,
    ratio: f64,
}

impl Comparison {
    /// Prints both sides' rates and the ratio chained/plain within each round and of the
    /// medians.
    fn report(&self, title: &str, unit: &str, chained: &str, plain: &str) -> Medians {
        println!(
            "\n{title}: {} rounds, {:.1} s; {unit}/s (higher is better):",
            self.chained.len(),
            self.seconds
        );
        println!("  {:<58} {:>10} {:>10} {:>10}", "", "min", "median", "max");
        let chained_median = rate_row(chained, &self.chained);
        let plain_median = rate_row(plain, &self.plain);
        // Within a round both sides see the same state of the machine and the server.
        let mut paired: Vec<f64> = self
            .chained
            .iter()
            .zip(&self.plain)
            .map(|(chained, plain)| chained / plain)
            .collect();
        paired.sort_by(f64::total_cmp);
        let ratio = chained_median / plain_median;
        println!(
            "  ratio chained/plain within each round: min {:.2}, median {:.2}, max {:.2}; \
             of the medians: {ratio:.2}",
            paired[0],
            paired[paired.len() / 2],
            paired[paired.len() - 1],
        );
        Medians {
            chained: chained_median,
            ratio,
        }
    }
}

/// Prints min, median and max of `rates` and returns the median.
fn rate_row(label: &str, rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "  {label:<58} {:>10.0} {median:>10.0} {:>10.0}",
        sorted[0],
        sorted[sorted.len() - 1]
    );
    median
}

/// Comparison 1, one appender: `append_one` against single-row INSERTs, one after the other.
fn one_appender<'a>(mut bench: Bench<'a>, goals: &mut Vec<(String, bool)>) -> Bench<'a> {
    let appends = bench.options.appends;
    let comparison = bench.alternate(
        appends,
        |bench| {
            let records = bench.records(appends);
            let store = &bench.store;
            measure::timed(|| {
                bench.runtime.block_on(async {
                    for record in records {
                        store.append_one(record).await.expect("a chained append");
                    }
                })
            })
            .0
        },
        |bench| {
            let records = bench.records(appends);
            let (plain, seq) = (&bench.plain, &bench.seq);
            measure::timed(|| bench.runtime.block_on(insert_each(plain, seq, records))).0
        },
    );
    let medians = comparison.report(
        &format!("1. one appender, {appends} appends, each its own transaction"),
        "appends",
        "chained: store.append_one",
        "plain: single-row INSERT into audit_plain",
    );
    goals.push((
        format!(
            "one appender: chained/plain {:.2} (goal >= {GOAL_ONE_RATIO})",
            medians.ratio
        ),
        medians.ratio >= GOAL_ONE_RATIO,
    ));
    bench
}

/// Comparison 2, eight appenders: eight tasks sharing one store against eight tasks
/// sharing the plain pool, `appends` in total. Also prints how many records the store's
/// group commit put in each statement.
fn eight_appenders<'a>(mut bench: Bench<'a>, goals: &mut Vec<(String, bool)>) -> Bench<'a> {
    let appends = bench.options.appends;
    let first = bench.head();
    let comparison = bench.alternate(
        appends,
        |bench| {
            let shares = split(bench.records(appends), APPENDERS);
            let store = &bench.store;
            measure::timed(|| {
                bench.runtime.block_on(async {
                    let mut tasks = JoinSet::new();
                    for share in shares {
                        let store = Arc::clone(store);
                        tasks.spawn(async move {
                            for record in share {
                                store.append_one(record).await.expect("a chained append");
                            }
                        });
                    }
                    while let Some(done) = tasks.join_next().await {
                        done.expect("a chained appender");
                    }
                })
            })
            .0
        },
        |bench| {
            let shares = split(bench.records(appends), APPENDERS);
            let (plain, seq) = (&bench.plain, &bench.seq);
            measure::timed(|| {
                bench.runtime.block_on(async {
                    let mut tasks = JoinSet::new();
                    for share in shares {
                        let (plain, seq) = (plain.clone(), Arc::clone(seq));
                        tasks.spawn(async move { insert_each(&plain, &seq, share).await });
                    }
                    while let Some(done) = tasks.join_next().await {
                        done.expect("a plain appender");
                    }
                })
            })
            .0
        },
    );
    let medians = comparison.report(
        &format!("2. {APPENDERS} appenders, {appends} appends in total"),
        "appends",
        "chained: store.append_one, one shared store",
        "plain: single-row INSERT, one shared pool",
    );
    // Each statement the store writes stamps its rows with one time: rows per distinct time
    // is the size of its group commits.
    let last = bench.head();
    let per_statement: f64 = bench.runtime.block_on(async {
        sqlx::query_scalar(
            "SELECT count(*)::float8 / count(DISTINCT at_us)::float8 FROM audit_log \
             WHERE seq > $1 AND seq <= $2",
        )
        .bind(first)
        .bind(last)
        .fetch_one(&bench.plain)
        .await
        .expect("the group commits' size")
    });
    println!(
        "  chained records per INSERT statement (group commit), all rounds: {per_statement:.2}"
    );
    goals.push((
        format!(
            "{APPENDERS} appenders: chained {:.0} appends/s (goal >= {GOAL_EIGHT_RATE:.0})",
            medians.chained
        ),
        medians.chained >= GOAL_EIGHT_RATE,
    ));
    bench
}

/// Comparison 3, batches of 100 records, one plan's actions: `append` against one
/// multi-row INSERT.
fn batches<'a>(mut bench: Bench<'a>, goals: &mut Vec<(String, bool)>) -> Bench<'a> {
    let batches = bench.options.batches;
    let comparison = bench.alternate(
        batches * BATCH,
        |bench| {
            let batches: Vec<Vec<Record>> = (0..batches).map(|_| bench.records(BATCH)).collect();
            let store = &bench.store;
            measure::timed(|| {
                bench.runtime.block_on(async {
                    for batch in batches {
                        store.append(batch).await.expect("a chained batch");
                    }
                })
            })
            .0
        },
        |bench| {
            let batches: Vec<Vec<Record>> = (0..batches).map(|_| bench.records(BATCH)).collect();
            let (plain, seq) = (&bench.plain, &bench.seq);
            measure::timed(|| {
                bench.runtime.block_on(async {
                    for batch in &batches {
                        let rows: Vec<PlainRow> = batch
                            .iter()
                            .map(|record| PlainRow::of(seq.fetch_add(1, Ordering::Relaxed), record))
                            .collect();
                        insert_many(plain, &rows).await.expect("a plain batch");
                    }
                })
            })
            .0
        },
    );
    let medians = comparison.report(
        &format!("3. {batches} batches of {BATCH} records, one after the other"),
        "records",
        "chained: store.append(100 records)",
        "plain: one 100-row INSERT into audit_plain",
    );
    goals.push((
        format!(
            "batches: chained/plain {:.2} (goal >= {GOAL_BATCH_RATIO})",
            medians.ratio
        ),
        medians.ratio >= GOAL_BATCH_RATIO,
    ));
    bench
}

/// Checks that the chained appends made a valid chain of the expected length, that the
/// plain table holds as many rows, and prints their average sizes (like for like).
fn check_append_database(bench: &Bench, admin: &PgPool) {
    let options = bench.options;
    let rounds = (options.warmups + options.rounds) as i64;
    let expected = rounds * (2 * options.appends + options.batches * BATCH) as i64;
    bench.runtime.block_on(async {
        let verification = bench
            .store
            .audit_verify(&[], 10_000)
            .await
            .expect("verifying the append database");
        let head = verification
            .outcome
            .unwrap_or_else(|problem| panic!("the chained appends broke the chain: {problem}"));
        assert_eq!(head.seq, expected, "chained records");
        let plain: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_plain")
            .fetch_one(admin)
            .await
            .expect("counting audit_plain");
        assert_eq!(plain, expected, "plain rows");
        let sizes: (f64, f64) = sqlx::query_as(
            "SELECT (SELECT avg(length(body))::float8 FROM audit_log), \
                    (SELECT avg(length(body))::float8 FROM audit_plain)",
        )
        .fetch_one(admin)
        .await
        .expect("the bodies' sizes");
        println!(
            "\nappend database: audit_log holds {expected} records, verified as a valid chain; \
             audit_plain holds {plain} rows; average body {:.0} bytes chained, {:.0} plain",
            sizes.0, sizes.1
        );
    });
}

/// Part 4, verify: a log of `options.records` records verified at each page size, its
/// breakdown, and the peak memory of a process that verifies it once.
fn verify(
    runtime: &Runtime,
    postgres: &Postgres,
    url: &str,
    options: &Options,
    goals: &mut Vec<(String, bool)>,
) {
    let records = options.records;
    let store = runtime.block_on(open(url));
    let native = runtime.block_on(async {
        PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .expect("a native connection to the verify database")
    });

    let (fill, ()) = measure::timed(|| runtime.block_on(fill_log(&store, records)));
    // What autovacuum would do to a log this size in production, done now so that it does
    // not run during the measurement; and the hint bits are set.
    runtime.block_on(async {
        for statement in ["VACUUM (ANALYZE) audit_log", "CHECKPOINT"] {
            postgres
                .execute("verify", statement)
                .await
                .unwrap_or_else(|error| panic!("{statement}: {error}"));
        }
    });
    let (table, total): (String, String) = runtime.block_on(async {
        sqlx::query_as(
            "SELECT pg_size_pretty(pg_relation_size('audit_log')), \
                    pg_size_pretty(pg_total_relation_size('audit_log'))",
        )
        .fetch_one(&native)
        .await
        .expect("the audit log's size")
    });
    println!(
        "\n4. verify: filled the verify database with {records} records in {:.1} s \
         ({:.0} records/s, store.append of {FILL_BATCH}); the table takes {table}, \
         {total} with its indexes; vacuumed and checkpointed",
        fill.as_secs_f64(),
        records as f64 / fill.as_secs_f64(),
    );

    // The page sizes in a rotating order each round.
    let mut rates: [Vec<f64>; PAGES.len()] = Default::default();
    let started = Instant::now();
    for round in 0..options.warmups + options.rounds {
        for step in 0..PAGES.len() {
            let index = (round + step) % PAGES.len();
            let (time, verification) =
                measure::timed(|| runtime.block_on(store.audit_verify(&[], PAGES[index])));
            let verification = verification.expect("verifying the audit log");
            assert_eq!(verification.records, records as u64, "records verified");
            let head = verification
                .outcome
                .unwrap_or_else(|problem| panic!("the filled chain is not valid: {problem}"));
            assert_eq!(head.seq, records as i64, "the chain's head");
            if round >= options.warmups {
                rates[index].push(records as f64 / time.as_secs_f64());
            }
        }
    }
    println!(
        "store.audit_verify(&[], page) of {records} records, each reporting {records} records \
         and a valid chain: {} rounds, {:.1} s; records/s:",
        options.rounds,
        started.elapsed().as_secs_f64()
    );
    println!("  {:<58} {:>10} {:>10} {:>10}", "", "min", "median", "max");
    for (page, rates) in PAGES.iter().zip(&rates) {
        let median = rate_row(&format!("page {page}"), rates);
        goals.push((
            format!("verify, page {page}: {median:.0} records/s (goal >= {GOAL_VERIFY_RATE:.0})"),
            median >= GOAL_VERIFY_RATE,
        ));
    }

    breakdown(runtime, &store, &native, records);
    runtime.block_on(store.close());
    peak_memory(url);
}

/// Appends `records` records as fast as the store appends: batches of 1,000, one statement
/// each.
async fn fill_log(store: &Store, records: usize) {
    let mut made = 0;
    while made < records {
        let count = FILL_BATCH.min(records - made);
        let batch: Vec<Record> = (made..made + count).map(|n| record(n as u64)).collect();
        store.append(batch).await.expect("filling the audit log");
        made += count;
    }
}

/// Where a verify's time goes, for information: the same walk as `audit_verify` with the
/// fetch of each page (`Store::audit_rows`) and the check of its rows (`Verifier::check`,
/// mostly SHA-256) timed apart; as a floor for the fetch, the same pages read through a
/// native `PgPool` into tuples of owned values; and as the server's floor, the whole log
/// sent by `COPY` and discarded.
fn breakdown(runtime: &Runtime, store: &Store, native: &PgPool, records: usize) {
    let page = BREAKDOWN_PAGE;
    let rounds = 3;
    let mut fetch_times = Vec::new();
    let mut check_times = Vec::new();
    let mut native_times = Vec::new();
    let mut copy_times = Vec::new();
    let mut copy_bytes = 0;
    for _ in 0..rounds {
        let (fetch, check) = runtime.block_on(async {
            let mut verifier = Verifier::new(&[]);
            let (mut fetch, mut check) = (Duration::ZERO, Duration::ZERO);
            let mut after = 0;
            loop {
                let start = Instant::now();
                let rows = store.audit_rows(after, page).await.expect("a page of rows");
                let fetched = Instant::now();
                for row in &rows {
                    verifier.check(row).expect("a valid chain");
                }
                check += fetched.elapsed();
                fetch += fetched - start;
                match rows.last() {
                    Some(last) if rows.len() as i64 == page => after = last.seq,
                    _ => break,
                }
            }
            let head = verifier.finish().expect("a valid chain");
            assert_eq!(head.seq, records as i64);
            (fetch, check)
        });
        fetch_times.push(fetch);
        check_times.push(check);
        let (time, count) = measure::timed(|| runtime.block_on(native_walk(native, page)));
        assert_eq!(count, records);
        native_times.push(time);
        let (time, bytes) = measure::timed(|| runtime.block_on(copy_out(native)));
        copy_times.push(time);
        copy_bytes = bytes;
    }
    println!(
        "where the verify's time goes, page {page}, {rounds} rounds, ms for all {records} \
         records (info):"
    );
    println!("  {:<58} {:>8} {:>8} {:>8}", "", "min", "median", "max");
    measure::row(
        "fetch: store.audit_rows (Any driver, StoredRow)",
        &mut fetch_times,
    );
    measure::row(
        "check: Verifier::check (SHA-256 of each row)",
        &mut check_times,
    );
    measure::row(
        "floor of the fetch: native PgPool into tuples",
        &mut native_times,
    );
    measure::row(
        &format!(
            "floor of the server: COPY TO STDOUT, binary, {} MiB",
            copy_bytes >> 20
        ),
        &mut copy_times,
    );
}

/// The server's part alone: the whole log, in `seq` order, sent with `COPY ... TO STDOUT`
/// in PostgreSQL's binary format and discarded as it arrives; returns the bytes received.
async fn copy_out(native: &PgPool) -> usize {
    use futures_util::TryStreamExt;
    let sql =
        format!("COPY (SELECT {COLUMNS} FROM audit_log ORDER BY seq) TO STDOUT (FORMAT binary)");
    let mut stream = native.copy_out_raw(&sql).await.expect("COPY TO STDOUT");
    let mut bytes = 0;
    while let Some(chunk) = stream.try_next().await.expect("a chunk of COPY") {
        bytes += chunk.len();
    }
    bytes
}

/// All the rows of the audit log, `page` at a time, as `audit_rows` reads them but through
/// the native PostgreSQL driver; returns how many.
async fn native_walk(native: &PgPool, page: i64) -> usize {
    type Row = (
        i64,
        String,
        i64,
        String,
        String,
        Option<String>,
        String,
        String,
        Option<String>,
        String,
        String,
        Vec<u8>,
        Vec<u8>,
    );
    let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
    let mut after = 0;
    let mut count = 0;
    loop {
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(after)
            .bind(page)
            .fetch_all(native)
            .await
            .expect("a native page");
        count += rows.len();
        match rows.last() {
            Some(last) if rows.len() as i64 == page => after = last.0,
            _ => return count,
        }
    }
}

/// Peak memory of a fresh process that opens the store, and of one that also verifies it.
fn peak_memory(url: &str) {
    println!("peak memory (VmHWM) of a fresh process:");
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let child = |args: &[&str]| -> (u64, String) {
        let output = Command::new(&exe)
            .arg("--once")
            .args(args)
            .output()
            .expect("running the benchmark as a child");
        assert!(
            output.status.success(),
            "child `--once {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        let hwm = report
            .split_whitespace()
            .find_map(|word| word.strip_prefix("hwm_kb=")?.parse().ok())
            .unwrap_or_else(|| panic!("child `--once {}` printed no hwm_kb: {report}", args[0]));
        (hwm, report)
    };
    let mib = |kb: u64| kb as f64 / 1024.0;
    let (open_kb, _) = child(&["open", url]);
    println!(
        "  {:<34} VmHWM {:>7.1} MiB",
        "opens the store",
        mib(open_kb)
    );
    for page in PAGES {
        let (kb, report) = child(&["verify", url, &page.to_string()]);
        let seconds = report
            .split_whitespace()
            .find_map(|word| word.strip_prefix("seconds="))
            .unwrap_or("?");
        println!(
            "  {:<34} VmHWM {:>7.1} MiB, {:>6.1} MiB above opening (its verify took {seconds} s)",
            format!("opens and verifies, page {page}"),
            mib(kb),
            mib(kb.saturating_sub(open_kb)),
        );
    }
    export_memory(url);
}

/// The real `wakafleet audit export` of the whole log to /dev/null in each format, under GNU
/// time: its wall time and peak resident set, which must not grow with the log.
fn export_memory(url: &str) {
    if !std::path::Path::new("/usr/bin/time").is_file() {
        println!("  (audit export not measured: /usr/bin/time is missing)");
        return;
    }
    for format in ["ndjson", "csv"] {
        let started = Instant::now();
        let output = Command::new("/usr/bin/time")
            .args(["-f", "maxrss_kb=%M"])
            .arg(env!("CARGO_BIN_EXE_wakafleet"))
            .args([
                "audit",
                "export",
                "--format",
                format,
                "--out",
                "/dev/null",
                "--store",
                url,
            ])
            .output()
            .expect("running wakafleet audit export");
        let seconds = started.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "audit export failed: {stderr}");
        let kb: u64 = stderr
            .split_whitespace()
            .find_map(|word| word.strip_prefix("maxrss_kb=")?.parse().ok())
            .unwrap_or(0);
        println!(
            "  {:<34} maxRSS {:>6.1} MiB (the whole command, {seconds:.1} s)",
            format!("wakafleet audit export --format {format}"),
            kb as f64 / 1024.0
        );
    }
}

/// Child mode: `open URL` or `verify URL PAGE [N]`, then the peak resident set size; or,
/// to prepare a store for profiling the verify, `fill URL RECORDS`.
fn once(args: &[String]) {
    const USAGE: &str = "--once open URL | verify URL PAGE [N] | fill URL RECORDS";
    let what = args.first().expect(USAGE);
    let url = args.get(1).expect(USAGE);
    let runtime = runtime();
    let store = runtime.block_on(open(url));
    let mut report = format!("what={what}");
    match what.as_str() {
        "open" => {}
        "fill" => {
            let records = args
                .get(2)
                .and_then(|records| records.replace(['_', ','], "").parse().ok())
                .expect(USAGE);
            let (time, ()) = measure::timed(|| runtime.block_on(fill_log(&store, records)));
            report = format!(
                "what=fill records={records} seconds={:.2}",
                time.as_secs_f64()
            );
        }
        "verify" => {
            let page: i64 = args.get(2).and_then(|page| page.parse().ok()).expect(USAGE);
            // An optional count repeats the verify, for profiling (`perf record`).
            let repeat = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1);
            for _ in 0..repeat {
                let (time, verification) =
                    measure::timed(|| runtime.block_on(store.audit_verify(&[], page)));
                let verification = verification.expect("verifying the audit log");
                report = format!(
                    "what=verify page={page} records={} valid={} seconds={:.2}",
                    verification.records,
                    verification.outcome.is_ok(),
                    time.as_secs_f64()
                );
            }
        }
        other => panic!("{USAGE}, not {other}"),
    }
    println!("{report} hwm_kb={}", measure::status_kb("VmHWM:"));
}

/// A realistic audit record: a step of an upgrade of one of 2,000 instances, as a worker
/// appends it while it applies a plan; `n` numbers it.
fn record(n: u64) -> Record {
    const STEPS: [&str; 4] = ["backup", "migrate", "switch", "health"];
    let step = STEPS[(n % 4) as usize];
    let tenant = n / 4 % 2_000;
    let mut record = Record::new(
        Actor::system("worker-eu-west-2"),
        &format!("instance.upgrade.step.{step}"),
        &format!("instance/tenant-{tenant:04}-prod"),
    );
    record.region = Some("eu-west".to_string());
    record.host = Some(format!("docker-{:02}.eu-west.internal", tenant % 16));
    record.reason = Some(format!(
        "release 3.5.0 replaces 3.4.2 on channel stable (approved in 9f2c41e); step {step}"
    ));
    record.job = Some(format!("job-{:08}", n / 4));
    record.before = Some(json!({"version": "3.4.2", "status": "active", "ssl": true}));
    record.after = Some(json!({"version": "3.5.0", "status": "active", "ssl": true, "step": step}));
    record
}

/// `records` dealt out to `count` appenders.
fn split(records: Vec<Record>, count: usize) -> Vec<Vec<Record>> {
    let mut shares: Vec<Vec<Record>> = (0..count).map(|_| Vec::new()).collect();
    for (index, record) in records.into_iter().enumerate() {
        shares[index % count].push(record);
    }
    shares
}

/// The JSON body of a plain row: the same fields, in the same order, as the store writes.
#[derive(Serialize)]
struct PlainBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<&'a serde_json::Value>,
}

/// A row of `audit_plain`: the values the store would write, with random bytes for the
/// hashes, so only the chaining differs.
struct PlainRow {
    seq: i64,
    id: String,
    at_us: i64,
    actor_kind: &'static str,
    actor_id: String,
    actor_email: Option<String>,
    action: String,
    resource: String,
    commit_sha: Option<String>,
    result: &'static str,
    body: String,
    prev_hash: [u8; 32],
    hash: [u8; 32],
}

impl PlainRow {
    /// The row of `record`, made as the store makes its rows (a JSON body, a UUID, the time
    /// now) but without reading or computing a chain.
    fn of(seq: i64, record: &Record) -> PlainRow {
        let body = PlainBody {
            region: record.region.as_deref(),
            host: record.host.as_deref(),
            reason: record.reason.as_deref(),
            job: record.job.as_deref(),
            before: record.before.as_ref(),
            after: record.after.as_ref(),
        };
        let mut hashes = [0; 64];
        getrandom::fill(&mut hashes).expect("random bytes from the operating system");
        let (prev_hash, hash) = hashes.split_at(32);
        PlainRow {
            seq,
            id: uuid::Uuid::new_v4().to_string(),
            at_us: chrono::Utc::now().timestamp_micros(),
            actor_kind: record.actor.kind.as_str(),
            actor_id: record.actor.id.clone(),
            actor_email: record.actor.email.clone(),
            action: record.action.clone(),
            resource: record.resource.clone(),
            commit_sha: record.commit.as_ref().map(|commit| commit.sha.clone()),
            result: record.result.as_str(),
            body: serde_json::to_string(&body).expect("a JSON body"),
            prev_hash: prev_hash.try_into().expect("32 bytes"),
            hash: hash.try_into().expect("32 bytes"),
        }
    }
}

/// `rows.len()` rows of `(…13 placeholders…)`, numbered `$1`, `$2`, … as PostgreSQL reads
/// them (sqlx's `QueryBuilder` would write `?` for the `Any` driver).
fn insert_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO audit_plain ({COLUMNS}) VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..13 {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * 13 + column + 1));
        }
        sql.push(')');
    }
    sql
}

/// Inserts `rows` with one statement through the `Any` driver, as the store does.
async fn insert_many(pool: &AnyPool, rows: &[PlainRow]) -> Result<AnyQueryResult, sqlx::Error> {
    let sql = insert_sql(rows.len());
    let mut query = sqlx::query(&sql);
    for row in rows {
        query = query
            .bind(row.seq)
            .bind(row.id.as_str())
            .bind(row.at_us)
            .bind(row.actor_kind)
            .bind(row.actor_id.as_str())
            .bind(row.actor_email.as_deref())
            .bind(row.action.as_str())
            .bind(row.resource.as_str())
            .bind(row.commit_sha.as_deref())
            .bind(row.result)
            .bind(row.body.as_str())
            .bind(row.prev_hash.as_slice())
            .bind(row.hash.as_slice());
    }
    query.execute(pool).await
}

/// One single-row INSERT per record, each its own transaction (autocommit).
async fn insert_each(pool: &AnyPool, seq: &AtomicI64, records: Vec<Record>) {
    for record in &records {
        let row = PlainRow::of(seq.fetch_add(1, Ordering::Relaxed), record);
        insert_many(pool, std::slice::from_ref(&row))
            .await
            .expect("a plain INSERT");
    }
}
