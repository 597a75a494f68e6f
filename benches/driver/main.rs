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

use std::{
    collections::{BTreeMap, HashMap},
    process::Command,
    time::Instant,
};

use bollard::{
    Docker,
    models::{ContainerCreateBody, HostConfig, NetworkCreateRequest},
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    },
};
use futures_util::StreamExt;
use semver::Version;

use jobs::Jobs;
use postgres::Postgres;
use wakafleet::{
    driver::{self, Driver, Options, Region, Target, database_name},
    model::{ByteSize, Cpu, Resources},
    store::jobs::JobKind,
};

const IMAGE: &str = "wakafleet-bench/demo-platform:1.0.0";
const LABEL: &str = "org.wakafleet.bench";

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

fn build_image() {
    let fleet = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(
        fleet.path().join("fleet.toml"),
        "name = \"bench\"\n[regions.local]\ncountry = \"NG\"\ndocker = \"unix:///var/run/docker.sock\"\ndatabase = \"env:DB\"\nbackups = \"/tmp\"\ncapacity = { cpu = \"64\", memory = \"256G\", storage = \"4T\" }\n",
    )
    .expect("write fleet.toml");
    std::fs::create_dir_all(fleet.path().join("releases")).expect("a folder");
    std::fs::write(
        fleet.path().join("releases/1.0.0.toml"),
        format!("version = \"1.0.0\"\nstatus = \"stable\"\nreleased = 2026-01-01\nimage = \"{IMAGE}\"\nmigrations = [\"0001_items_index\"]\n"),
    )
    .expect("write a release");
    let output = Command::new(env!("CARGO_BIN_EXE_wakafleet"))
        .args(["image", "build"])
        .arg(fleet.path())
        .args(["--binary", env!("CARGO_BIN_EXE_demo-platform")])
        .output()
        .expect("run wakafleet image build");
    assert!(
        output.status.success(),
        "image build failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
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

/// The floor for one instance: the app and worker containers created and started (with the
/// same image, command, environment and limits) and its database created, each directly. The
/// containers are on the default bridge, or with `network` on a new network of their own.
async fn floor_one(
    docker: &Docker,
    admin: &sqlx::PgPool,
    name: &str,
    labels: &HashMap<String, String>,
    postgres: &Postgres,
    network: bool,
) {
    sqlx::raw_sql(&format!("CREATE DATABASE \"{}\"", database_name(name)))
        .execute(admin)
        .await
        .expect("createdb");
    if network {
        let request = NetworkCreateRequest {
            name: driver::network_name(name),
            driver: Some("bridge".into()),
            labels: Some(labels.clone()),
            ..NetworkCreateRequest::default()
        };
        docker
            .create_network(request)
            .await
            .expect("docker network create");
    }
    for (role, command) in [("app", "serve"), ("worker", "worker")] {
        let container = format!("wakafleet-{name}-{role}");
        let body = ContainerCreateBody {
            image: Some(IMAGE.to_string()),
            cmd: Some(vec![command.to_string()]),
            env: Some(vec![
                format!(
                    "DATABASE_URL={}",
                    postgres
                        .admin_url(&database_name(name))
                        .replace("127.0.0.1", "host.docker.internal")
                ),
                "PORT=8080".to_string(),
                "WEBWAKA_SUITES=commerce".to_string(),
            ]),
            labels: Some(labels.clone()),
            host_config: Some(HostConfig {
                network_mode: network.then(|| driver::network_name(name)),
                nano_cpus: Some(250_000_000),
                memory: Some(128 << 20),
                extra_hosts: Some(vec!["host.docker.internal:host-gateway".to_string()]),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&container)
            .build();
        docker
            .create_container(Some(options), body)
            .await
            .expect("docker create");
        docker
            .start_container(&container, None)
            .await
            .expect("docker start");
    }
}

/// Removes everything labelled for this run, and the databases and roles made.
async fn clean(
    docker: &Docker,
    admin: &sqlx::PgPool,
    labels: &HashMap<String, String>,
    names: &[String],
) {
    let (key, value) = labels.iter().next().expect("a label");
    let filters = HashMap::from([("label".to_string(), vec![format!("{key}={value}")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    for container in docker.list_containers(Some(options)).await.expect("list") {
        if let Some(id) = container.id {
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = docker.remove_container(&id, Some(options)).await;
        }
    }
    for name in names {
        let _ = docker.remove_network(&driver::network_name(name)).await;
        let _ = docker
            .remove_volume(
                &driver::volume_name(name),
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await;
        let database = database_name(name);
        for statement in [
            format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS \"{database}\""),
        ] {
            sqlx::raw_sql(&statement)
                .execute(admin)
                .await
                .expect("drop");
        }
    }
}

async fn floor_all(
    docker: &Docker,
    admin: &sqlx::PgPool,
    names: &[String],
    labels: &HashMap<String, String>,
    postgres: &Postgres,
    network: bool,
    concurrency: usize,
) {
    futures_util::stream::iter(names)
        .map(|name| floor_one(docker, admin, name, labels, postgres, network))
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}

/// Busy and total time of all the machine's cores so far, from /proc/stat, in ticks.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = stat.lines().next().expect("the cpu line");
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// How many cores were busy on average between two readings of `cpu_ticks`.
fn cores_busy(before: (u64, u64), after: (u64, u64), cores: f64) -> f64 {
    let total = (after.1 - before.1) as f64;
    if total == 0.0 {
        return 0.0;
    }
    (after.0 - before.0) as f64 / total * cores
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
