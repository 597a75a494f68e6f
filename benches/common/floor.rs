//! The floor the provisioning benchmarks compare against: an instance's containers created
//! and started and its database created directly (bollard and SQL), with or without a network
//! of its own, and the demo platform's image they run; shared by `benches/driver` and
//! `benches/daemon`.

#![allow(dead_code, reason = "each benchmark uses part of the helpers")]

use std::{collections::HashMap, process::Command};

use bollard::{
    Docker,
    models::{ContainerCreateBody, HostConfig, NetworkCreateRequest},
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    },
};
use futures_util::StreamExt;

use crate::postgres::Postgres;
use wakafleet::driver::{self, database_name};

/// The image every benchmark instance runs.
pub const IMAGE: &str = "wakafleet-bench/demo-platform:1.0.0";
/// The label on everything a benchmark makes.
pub const LABEL: &str = "org.wakafleet.bench";

/// Builds [`IMAGE`], release 1.0.0 of a one-release catalogue.
pub fn build_image() {
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

/// The floor for one instance: the app and worker containers created and started (with the
/// same image, command, environment and limits) and its database created, each directly. The
/// containers are on the default bridge, or with `network` on a new network of their own.
pub async fn floor_one(
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
pub async fn clean(
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

pub async fn floor_all(
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
pub fn cpu_ticks() -> (u64, u64) {
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
pub fn cores_busy(before: (u64, u64), after: (u64, u64), cores: f64) -> f64 {
    let total = (after.1 - before.1) as f64;
    if total == 0.0 {
        return 0.0;
    }
    (after.0 - before.0) as f64 / total * cores
}
