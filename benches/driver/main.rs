//! Provisioning benchmark: 20 instances provisioned by the driver serially and four at a
//! time, against the floor of creating and starting the same containers and creating the
//! databases directly, in one run, on one Docker engine and one PostgreSQL server.
//!
//! `cargo bench --bench driver [-- --instances N --rounds R]`; see bench/README.md.

#[path = "../common/measure.rs"]
#[allow(dead_code, reason = "this benchmark uses only part of the helpers")]
mod measure;
#[path = "../../tests/common/postgres.rs"]
mod postgres;

use std::{
    collections::{BTreeMap, HashMap},
    process::Command,
    time::Instant,
};

use bollard::{
    Docker,
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    },
};
use futures_util::StreamExt;
use semver::Version;
use sqlx::Connection;

use postgres::Postgres;
use wakafleet::{
    driver::{self, Driver, Options, Region, Target, database_name},
    model::{ByteSize, Cpu, Resources},
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

/// The floor for one instance: the app and worker containers created and started (on the
/// default bridge, with the same image, command, environment and limits) and its database
/// created, each directly.
async fn floor_one(
    docker: &Docker,
    admin: &mut sqlx::PgConnection,
    name: &str,
    labels: &HashMap<String, String>,
    postgres: &Postgres,
) {
    sqlx::raw_sql(&format!("CREATE DATABASE \"{}\"", database_name(name)))
        .execute(&mut *admin)
        .await
        .expect("createdb");
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
    admin: &mut sqlx::PgConnection,
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
                .execute(&mut *admin)
                .await
                .expect("drop");
        }
    }
}

async fn provision_all(driver: &Driver, names: &[String], concurrency: usize) {
    let password = driver::generate_password().expect("a password");
    let password = &password;
    futures_util::stream::iter(names)
        .map(|name| async move {
            driver
                .provision(&target(name), password)
                .await
                .unwrap_or_else(|error| panic!("provision {name}: {error}"));
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
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
        database: postgres.admin_url("postgres"),
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

    let (mut floor, mut serial, mut parallel) = (Vec::new(), Vec::new(), Vec::new());
    runtime.block_on(async {
        let mut admin = sqlx::PgConnection::connect(&postgres.admin_url("postgres"))
            .await
            .expect("an admin connection");
        for round in 0..=settings.rounds {
            let names = |kind: &str| -> Vec<String> {
                (0..count)
                    .map(|n| format!("bench-{kind}{round}-{n}"))
                    .collect()
            };
            // The floor.
            let floor_names = names("f");
            let start = Instant::now();
            for name in &floor_names {
                floor_one(&docker, &mut admin, name, &labels, &postgres).await;
            }
            let floor_time = start.elapsed();
            clean(&docker, &mut admin, &labels, &floor_names).await;
            // Serial.
            let serial_names = names("s");
            let start = Instant::now();
            provision_all(&driver, &serial_names, 1).await;
            let serial_time = start.elapsed();
            clean(&docker, &mut admin, &labels, &serial_names).await;
            // Four at a time.
            let parallel_names = names("c");
            let start = Instant::now();
            provision_all(&driver, &parallel_names, 4).await;
            let parallel_time = start.elapsed();
            clean(&docker, &mut admin, &labels, &parallel_names).await;
            if round > 0 {
                floor.push(floor_time);
                serial.push(serial_time);
                parallel.push(parallel_time);
            }
            println!(
                "  round {round}{}: floor {:.2} s, serial {:.2} s, four at a time {:.2} s",
                if round == 0 { " (warmup)" } else { "" },
                floor_time.as_secs_f64(),
                serial_time.as_secs_f64(),
                parallel_time.as_secs_f64()
            );
        }
    });

    println!(
        "\nwall time for {count} instances, ms:                                  min   median      max"
    );
    let floor_median = measure::row(
        "floor: docker create + start of app and worker, createdb",
        &mut floor,
    );
    let serial_median = measure::row("driver.provision, one at a time", &mut serial);
    let parallel_median = measure::row("driver.provision, four at a time", &mut parallel);
    let per = |median: f64| median / count as f64;
    println!(
        "\nper instance: floor {:.0} ms, serial {:.0} ms, four at a time {:.0} ms",
        per(floor_median),
        per(serial_median),
        per(parallel_median)
    );
    let ratio = serial_median / floor_median;
    let speedup = serial_median / parallel_median;
    println!(
        "serial / floor: {ratio:.2} (goal <= 1.2): {}",
        if ratio <= 1.2 { "met" } else { "NOT MET" }
    );
    println!(
        "serial / four at a time: {speedup:.2}x faster (goal >= 2.5): {}",
        if speedup >= 2.5 { "met" } else { "NOT MET" }
    );
    println!("whole run: {:.0} s", started.elapsed().as_secs_f64());
}
