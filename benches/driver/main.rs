//! Provisioning benchmark: 20 instances provisioned by provision jobs serially and four at a
//! time (each job claimed and run by a `Runner` with the lifecycle executor on a SQLite store,
//! its steps recorded and audited, as a worker runs it), against the floor of creating and starting the same containers and creating the
//! databases directly (also serially and four at a time), in one run, on one Docker engine and
//! one PostgreSQL server. A second floor also creates a network per instance and attaches the
//! containers to it, as the driver must. Each phase reports how many of the machine's cores
//! were busy on average, which bounds what concurrency can gain.
//!
//! `cargo bench --bench driver [-- --instances N --rounds R]`; see bench/README.md.

#[path = "../common/measure.rs"]
#[allow(dead_code, reason = "this benchmark uses only part of the helpers")]
mod measure;
#[path = "../../tests/common/jobs.rs"]
#[allow(dead_code, reason = "this benchmark runs only provision jobs")]
mod jobs;
#[path = "../../tests/common/postgres.rs"]
mod postgres;
#[path = "../common/floor.rs"]
mod floor;

use std::{
    collections::{BTreeMap, HashMap},
    process::Command,
    time::Instant,
};

use bollard::Docker;
use semver::Version;

use floor::{IMAGE, LABEL, build_image, clean, cores_busy, cpu_ticks, floor_all};
use jobs::Jobs;
use postgres::Postgres;
use wakafleet::{
    driver::{Driver, Options, Region, Target},
    model::{ByteSize, Cpu, Resources},
    store::jobs::JobKind,
};

struct Settings {
    instances: usize,
    rounds: usize,
}

fn settings() -> Settings {
    let mut settings = Settings {
        instances: 20,
        rounds: 3,
    };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let value = || pair[1].parse().expect("a number");
        match pair[0].as_str() {
            "--instances" => settings.instances = value(),
            "--rounds" => settings.rounds = value(),
            _ => {}
        }
    }
    settings
}

fn target(instance: &str) -> Target {
    Target {
        instance: instance.to_string(),
        version: Version::new(1, 0, 0),
        image: IMAGE.to_string(),
        migrations: vec!["0001_items_index".to_string()],
        resources: Resources {
            cpu: Cpu::from_millicores(250),
            memory: ByteSize::from_bytes(128 << 20),
            storage: ByteSize::from_bytes(1 << 30),
        },
        environment: BTreeMap::from([("WEBWAKA_SUITES".to_string(), "commerce".to_string())]),
        secrets: BTreeMap::new(),
    }
}

/// Provision jobs for `names`, run by `concurrency` workers at once.
async fn provision_all(jobs: &Jobs, names: &[String], concurrency: usize) {
    let payloads = names
        .iter()
        .map(|name| (name.clone(), jobs::payload(&target(name))))
        .collect();
    let ended = jobs
        .run_all(JobKind::Provision, payloads, concurrency)
        .await;
    for (name, ended) in names.iter().zip(ended) {
        if let Err(error) = ended {
            panic!("provision {name}: {error}");
        }
    }
}

fn main() {
    let settings = settings();
    let docker_ok = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        docker_ok,
        "the Docker engine is needed: start it and check `docker info`"
    );
    let started = Instant::now();
    build_image();
    let postgres = Postgres::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let run_id = uuid::Uuid::new_v4().to_string();
    let labels = HashMap::from([(LABEL.to_string(), run_id.clone())]);
    let backups = tempfile::tempdir().expect("a temporary folder");
    let region = Region {
        name: "local".into(),
        docker: "unix:///var/run/docker.sock".into(),
        database: postgres.admin_url("postgres").into(),
        backups: backups.path().to_path_buf(),
    };
    let driver = Driver::new(
        &region,
        Options {
            labels: labels.clone().into_iter().collect(),
            ..Options::default()
        },
    )
    .expect("a driver");
    let docker = Docker::connect_with_socket_defaults().expect("a Docker client");
    let count = settings.instances;
    println!(
        "provisioning {count} instances of {IMAGE}, {} rounds after 1 warmup; PostgreSQL with fsync off for both sides",
        settings.rounds
    );

    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    // Per phase: the wall times of the measured rounds and the cores busy on average.
    let mut phases: [(&str, Vec<std::time::Duration>, Vec<f64>); 6] = [
        (
            "floor: docker create + start of app and worker, createdb",
            Vec::new(),
            Vec::new(),
        ),
        ("floor, four at a time", Vec::new(), Vec::new()),
        ("floor with a network per instance", Vec::new(), Vec::new()),
        (
            "floor with a network per instance, four at a time",
            Vec::new(),
            Vec::new(),
        ),
        ("provision jobs, one at a time", Vec::new(), Vec::new()),
        ("provision jobs, four at a time", Vec::new(), Vec::new()),
    ];
    runtime.block_on(async {
        let jobs = Jobs::new(driver, &region.name).await;
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&postgres.admin_url("postgres"))
            .await
            .expect("an admin pool");
        for round in 0..=settings.rounds {
            let mut line = format!(
                "  round {round}{}:",
                if round == 0 { " (warmup)" } else { "" }
            );
            for (phase, (label, times, busy)) in phases.iter_mut().enumerate() {
                let names: Vec<String> = (0..count)
                    .map(|n| format!("bench-p{phase}r{round}-{n}"))
                    .collect();
                let concurrency = if phase % 2 == 0 { 1 } else { 4 };
                let before = cpu_ticks();
                let start = Instant::now();
                if phase < 4 {
                    let network = phase >= 2;
                    floor_all(
                        &docker,
                        &admin,
                        &names,
                        &labels,
                        &postgres,
                        network,
                        concurrency,
                    )
                    .await;
                } else {
                    provision_all(&jobs, &names, concurrency).await;
                }
                let time = start.elapsed();
                let used = cores_busy(before, cpu_ticks(), cores);
                clean(&docker, &admin, &labels, &names).await;
                if round > 0 {
                    times.push(time);
                    busy.push(used);
                }
                let short = label.split(':').next().unwrap_or(label);
                line += &format!(" {short} {:.2} s ({used:.1} cores);", time.as_secs_f64());
            }
            println!("{line}");
        }
    });

    println!(
        "\nwall time for {count} instances, ms:                                  min   median      max   cores busy"
    );
    let mut medians = Vec::new();
    for (label, times, busy) in &mut phases {
        busy.sort_by(f64::total_cmp);
        let median = measure::row(label, times);
        println!(
            "      (median {:.2} of {cores} cores busy)",
            busy[busy.len() / 2]
        );
        medians.push(median);
    }
    let per = |median: f64| median / count as f64;
    println!(
        "\nper instance: floor {:.0} ms (four at a time {:.0} ms), with networks {:.0} ms ({:.0} ms), jobs serial {:.0} ms, four at a time {:.0} ms",
        per(medians[0]),
        per(medians[1]),
        per(medians[2]),
        per(medians[3]),
        per(medians[4]),
        per(medians[5])
    );
    let ratio = medians[4] / medians[0];
    let speedup = medians[4] / medians[5];
    let floor_speedup = medians[0] / medians[1];
    let network_speedup = medians[2] / medians[3];
    println!(
        "serial / floor: {ratio:.2} (goal <= 1.2): {}",
        if ratio <= 1.2 { "met" } else { "NOT MET" }
    );
    println!(
        "serial / four at a time: {speedup:.2}x faster (goal >= 2.5): {}",
        if speedup >= 2.5 { "met" } else { "NOT MET" }
    );
    println!(
        "the floor itself, four at a time: {floor_speedup:.2}x faster than serial; with networks {network_speedup:.2}x (what the engine and server allow)"
    );
    println!(
        "serial / floor with networks: {:.2}; four at a time / floor with networks four at a time: {:.2}",
        medians[4] / medians[2],
        medians[5] / medians[3]
    );
    println!("whole run: {:.0} s", started.elapsed().as_secs_f64());
}
