//! Daemon benchmark, two parts, each against a floor measured in the same run.
//!
//! Fifty: commit to converged for 50 new instances: `wakafleet run --once --workers 4` on a
//! git repository whose head adds them (the whole binary: reading, validating, planning,
//! 50 provision jobs of every runbook step, four at a time, and the observation that says
//! they run), against the driver benchmark's floor for the same 50 four at a time (their
//! containers created and started on a network of their own and their databases created,
//! directly), alternating, on one engine and one PostgreSQL server.
//!
//! Ten thousand: on a 10,000-instance fleet recorded as applied in a SQLite store, against a
//! cold read + validate + plan of the fleet: the daemon's pass for a new commit that changes
//! one instance file (the decode cache warm from the commit before: read the commit, validate
//! it, plan against the store, enqueue the one job) and a tick with no new commit (the fleet
//! decoded, the store unchanged; observation aside).
//!
//! `cargo bench --bench daemon [-- --part fifty|tenk --rounds N]`; see bench/README.md.

#[path = "../common/floor.rs"]
mod floor;
#[path = "../load/generate.rs"]
#[allow(dead_code, reason = "this benchmark writes fleets only")]
mod generate;
#[path = "../common/measure.rs"]
#[allow(dead_code, reason = "this benchmark uses only part of the helpers")]
mod measure;
#[path = "../../tests/common/postgres.rs"]
mod postgres;

use std::{collections::HashMap, path::Path, process::Command, sync::Arc, time::Instant};

use bollard::Docker;
use chrono::Utc;

use floor::{IMAGE, LABEL, build_image, clean, floor_all};
use measure::row;
use postgres::Postgres;
use wakafleet::{
    daemon::reconcile::{self, Context, Desired},
    jobs::Payload,
    load::Limits,
    plan,
    queue::{self, Queue},
    source,
    store::{
        self, Store,
        audit::Actor,
        state::{InstanceRecord, InstanceStatus},
    },
    validate,
};

struct Settings {
    part: Option<String>,
    rounds: usize,
    instances: usize,
}

fn settings() -> Settings {
    let mut settings = Settings {
        part: None,
        rounds: 0,
        instances: FIFTY,
    };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        match pair[0].as_str() {
            "--part" => settings.part = Some(pair[1].clone()),
            "--rounds" => settings.rounds = pair[1].parse().expect("a number"),
            "--instances" => settings.instances = pair[1].parse().expect("a number"),
            _ => {}
        }
    }
    settings
}

fn main() {
    let settings = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if settings.part.as_deref() != Some("tenk") {
        let rounds = if settings.rounds == 0 {
            3
        } else {
            settings.rounds
        };
        runtime.block_on(fifty(rounds, settings.instances));
    }
    if settings.part.as_deref() != Some("fifty") {
        let rounds = if settings.rounds == 0 {
            9
        } else {
            settings.rounds
        };
        runtime.block_on(ten_thousand(rounds));
    }
}

const FIFTY: usize = 50;

/// A fleet of `names` at release 1.0.0 of the floor's image, in a git repository at `root`,
/// its region's databases on `postgres` (through `$BENCH_DB`) and its limits the floor's.
fn fifty_fleet(root: &Path, names: &[String]) {
    let write = |path: &str, text: &str| {
        let path = root.join("fleet").join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("a folder");
        std::fs::write(path, text).expect("a fleet file");
    };
    write(
        "fleet.toml",
        "name = \"bench\"\n[regions.local]\ncountry = \"NG\"\ndocker = \"unix:///var/run/docker.sock\"\ndatabase = \"env:BENCH_DB\"\nbackups = \"/tmp/wakafleet-bench-backups\"\ncapacity = { cpu = \"64\", memory = \"256G\", storage = \"4T\" }\n",
    );
    write(
        "releases/1.0.0.toml",
        &format!(
            "version = \"1.0.0\"\nstatus = \"stable\"\nreleased = 2026-01-01\nimage = \"{IMAGE}\"\nmigrations = [\"0001_items_index\"]\n"
        ),
    );
    write(
        "channels/manual.toml",
        "name = \"manual\"\nmode = \"manual-approval\"\n",
    );
    write(
        "partners/p1.toml",
        "id = \"p1\"\nname = \"P\"\nemail = \"ops@p.example\"\n",
    );
    write(
        "tenants/t1.toml",
        "id = \"t1\"\npartner = \"p1\"\nname = \"T\"\n",
    );
    for name in names {
        write(
            &format!("instances/{name}.toml"),
            &format!(
                "name = \"{name}\"\ntype = \"partner-deployed\"\npartner = \"p1\"\ntenant = \"t1\"\nregion = \"local\"\ndata_residency = [\"NG\"]\nsuites = [\"commerce\"]\nresources = {{ cpu = \"0.25\", memory = \"128M\", storage = \"1G\" }}\nchannel = \"manual\"\nversion = \"1.0.0\"\n"
            ),
        );
    }
    let repository = git2::Repository::init(root).expect("git init");
    let mut index = repository.index().expect("the index");
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .expect("git add");
    index.write().expect("the index");
    let tree = repository
        .find_tree(index.write_tree().expect("a tree"))
        .expect("the tree");
    let signature = git2::Signature::now("bench", "bench@example.com").expect("a signature");
    repository
        .commit(
            Some("HEAD"),
            &signature,
            &signature,
            "50 instances",
            &tree,
            &[],
        )
        .expect("a commit");
}

/// `count` new instances (50 by default; a network each, so Docker's default address pools,
/// about 30 bridge networks, cap what one engine holds unless `default-address-pools` is set).
async fn fifty(rounds: usize, count: usize) {
    build_image();
    let postgres = Postgres::start();
    let admin = sqlx::PgPool::connect(&postgres.admin_url("postgres"))
        .await
        .expect("the server");
    let docker = Docker::connect_with_socket_defaults().expect("the engine");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let labels = HashMap::from([(LABEL.to_string(), run_id.clone())]);
    let names: Vec<String> = (0..count).map(|n| format!("dbench-{n:02}")).collect();
    println!(
        "fifty: {count} new instances of {IMAGE}, four at a time, {rounds} rounds after 1 warmup, alternating"
    );
    let (mut floors, mut daemons) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        let mut order = [false, true];
        if round % 2 == 1 {
            order.reverse();
        }
        for daemon in order {
            let started = Instant::now();
            if daemon {
                let repo = tempfile::tempdir().expect("a folder");
                fifty_fleet(repo.path(), &names);
                let store = format!("sqlite://{}", repo.path().join("state.db").display());
                let label = format!("{LABEL}={run_id}");
                let started = Instant::now();
                let output = Command::new(env!("CARGO_BIN_EXE_wakafleet"))
                    .args([
                        "run",
                        "fleet",
                        "--once",
                        "--workers",
                        "4",
                        "--store",
                        &store,
                    ])
                    .args(["--label", &label])
                    .current_dir(repo.path())
                    .env("BENCH_DB", postgres.admin_url("postgres"))
                    .env("WAKAFLEET_SECRETS_KEY", "5a".repeat(32))
                    .env("WAKAFLEET_LOG", "warn")
                    .output()
                    .expect("wakafleet run");
                let took = started.elapsed();
                assert!(
                    output.status.success(),
                    "run --once: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                if round > 0 {
                    daemons.push(took);
                }
            } else {
                floor_all(&docker, &admin, &names, &labels, &postgres, true, 4).await;
                if round > 0 {
                    floors.push(started.elapsed());
                }
            }
            clean(&docker, &admin, &labels, &names).await;
        }
    }
    println!("  {:<58} {:>8} {:>8} {:>8}", "ms", "min", "median", "max");
    let floor = row("floor, four at a time, with networks", &mut floors);
    let daemon = row("wakafleet run --once --workers 4", &mut daemons);
    println!(
        "commit to converged / floor: {:.2} (goal <= 1.3); per instance: floor {:.0} ms, daemon {:.0} ms",
        daemon / floor,
        floor / count as f64,
        daemon / count as f64
    );
}

const INSTANCES: usize = 10_000;

async fn ten_thousand(rounds: usize) {
    let limits = Limits::default();
    let temp = tempfile::Builder::new()
        .prefix("wakafleet-daemon-bench-")
        .tempdir()
        .expect("a temporary folder");
    let dir = temp.path().to_path_buf();
    let shape = generate::Shape::for_instances(INSTANCES);
    let summary = generate::write(&dir, &shape);
    // One commit per round (and the warmup), each changing one more instance file.
    let instances: Vec<String> = {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("instances"))
            .expect("the instances")
            .map(|entry| {
                entry
                    .expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".toml"))
            .collect();
        names.sort();
        names
    };
    let mut commits = Vec::new();
    for (round, file) in instances.iter().take(rounds + 1).enumerate() {
        let path = dir.join("instances").join(file);
        let text = std::fs::read_to_string(&path).expect("an instance file");
        let changed = if text.contains("ssl = true") {
            text.replacen("ssl = true", "ssl = false", 1)
        } else {
            text.replacen("ssl = false", "ssl = true", 1)
        };
        assert_ne!(text, changed, "{file} has an ssl line");
        std::fs::write(&path, changed).expect("an instance file");
        commits.push(generate::commit_and_repack(
            &dir,
            1_767_225_600 + 60 * (round as i64 + 1),
            &format!("Toggle ssl in {file}"),
        ));
    }

    // The store records the first commit as applied.
    let store_dir = tempfile::tempdir().expect("a folder");
    let url = format!("sqlite://{}", store_dir.path().join("state.db").display());
    let store = Arc::new(
        Store::open(&url.as_str().into(), store::Options::default())
            .await
            .expect("a store"),
    );
    let base = validate::check(
        source::read_commit(&dir, &summary.commit, &limits)
            .expect("the first commit")
            .inputs,
        &limits,
    )
    .take_valid()
    .expect("a valid fleet");
    let snapshot = plan::snapshot::from_actual(&plan::converged_base(base.fleet()));
    store
        .import(&snapshot, Utc::now())
        .await
        .expect("the import");
    let term = store.begin_term("bench", Utc::now()).await.expect("a term");
    let ctx = Context {
        store: Arc::clone(&store),
        queue: Arc::new(
            Queue::open("local", queue::Options::default())
                .await
                .expect("a queue"),
        ),
        drivers: Arc::default(),
        epoch: term.epoch,
        max_attempts: 3,
        actor: Actor::system("bench"),
    };
    println!(
        "ten thousand: {} files, {INSTANCES} instances recorded as applied; {rounds} rounds after 1 warmup, each a new commit changing one instance file",
        summary.files
    );

    let mut cache = validate::Cache::default();
    let mut memo = reconcile::Memo::default();
    let first = source::read_commit_cached(&dir, &summary.commit, &limits, &cache)
        .expect("the first commit");
    validate::check_cached(first.inputs, &limits, &mut cache);
    // The new commit's pass split: the cached read, the validation, the reconcile pass.
    let mut new_parts: [Vec<std::time::Duration>; 3] = Default::default();
    let (mut colds, mut news, mut ticks, mut decoded) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut first_ticks = Vec::new();
    for (round, commit) in commits.iter().enumerate() {
        // Cold: as a daemon that starts, or `plan` against the store.
        let started = Instant::now();
        let inputs = source::read_commit(&dir, commit, &limits)
            .expect("the commit")
            .inputs;
        let mut validation = validate::check(inputs, &limits);
        let fleet = validation.take_valid().expect("valid");
        let actual = store.actual().await.expect("the state");
        let cold_plan = plan::compute(&fleet, &validation.sources, &actual, Utc::now());
        let cold = started.elapsed();
        drop(cold_plan);

        // The pass for the new commit, its files decoded once per blob.
        let before = cache.stats();
        let started = Instant::now();
        let snapshot =
            source::read_commit_cached(&dir, commit, &limits, &cache).expect("the commit");
        let read = started.elapsed();
        let mut validation = validate::check_cached(snapshot.inputs, &limits, &mut cache);
        let validated = started.elapsed();
        let desired = Desired {
            fleet: validation.take_valid().expect("valid"),
            sources: std::mem::take(&mut validation.sources),
            revision: commit.clone(),
            commit: None,
            approver: Actor::system("bench"),
        };
        let outcome = reconcile::reconcile(&ctx, &desired, Utc::now(), &mut memo)
            .await
            .expect("a pass");
        let new = started.elapsed();
        assert_eq!(outcome.enqueued.len(), 1, "one configure job per commit");
        let after = cache.stats();
        assert_eq!(
            after.revised - before.revised,
            1,
            "the validation before revised"
        );

        // The job's work done, as its last step records it; the job itself set aside.
        let job = &outcome.enqueued[0];
        let payload = Payload::decode(&job.payload).expect("a payload");
        let spec = payload.spec.expect("a spec");
        let record = InstanceRecord {
            name: job.instance.clone(),
            status: InstanceStatus::Active,
            version: Some(spec.version.clone()),
            config_hash: payload.target.map(|target| target.config_hash),
            spec: Some(spec),
            health: None,
            last_error: None,
            updated_at: Utc::now(),
        };
        store.put_instance(&record).await.expect("the record");
        store
            .cancel(&job.id, Utc::now())
            .await
            .expect("the job set aside");

        // The first tick after: the record moved, so the state is read and planned again.
        let started = Instant::now();
        let outcome = reconcile::reconcile(&ctx, &desired, Utc::now(), &mut memo)
            .await
            .expect("a pass");
        let first_tick = started.elapsed();
        assert!(
            outcome.enqueued.is_empty() && outcome.converged(),
            "{:?}",
            outcome.waiting
        );

        // A tick: the same commit, the store as it was.
        let started = Instant::now();
        let outcome = reconcile::reconcile(&ctx, &desired, Utc::now(), &mut memo)
            .await
            .expect("a pass");
        let tick = started.elapsed();
        assert!(outcome.enqueued.is_empty());
        if round > 0 {
            colds.push(cold);
            news.push(new);
            new_parts[0].push(read);
            new_parts[1].push(validated - read);
            new_parts[2].push(new - validated);
            ticks.push(tick);
            first_ticks.push(first_tick);
            decoded.push(after.decoded - before.decoded);
        }
    }
    println!("  {:<58} {:>8} {:>8} {:>8}", "ms", "min", "median", "max");
    let cold = row("cold: read + validate + plan against the store", &mut colds);
    let new = row(
        "new commit: cached read + validate + reconcile pass",
        &mut news,
    );
    let [reads, validations, passes] = &mut new_parts;
    row("  of which the cached read of the commit", reads);
    row("  of which the validation (check_cached)", validations);
    row(
        "  of which the reconcile pass (state, plan, enqueue)",
        passes,
    );
    let first_tick = row(
        "first tick after the job: state read again, planned",
        &mut first_ticks,
    );
    let tick = row(
        "tick: reconcile pass, no new commit, state unchanged",
        &mut ticks,
    );
    let planned = memo.plan_stats();
    println!(
        "instances planned again over all passes: {} (reused {}); validations revised: {}",
        planned.planned,
        planned.reused,
        cache.stats().revised
    );
    println!(
        "files decoded per new commit: {:?}; new commit / cold {:.3} (goal <= 0.10), tick / cold {:.3} (goal <= 0.05), first tick after a job / cold {:.3}",
        decoded,
        new / cold,
        tick / cold,
        first_tick / cold
    );
    store.close().await;
}
