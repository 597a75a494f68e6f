//! The driver: every lifecycle operation of an instance against its region's real Docker
//! engine and PostgreSQL server.
//!
//! An instance is a Docker network and volume, a database with its own role, and two
//! containers (`app` and `worker`) of its release's image, named `wakafleet-<instance>-<role>`
//! and labelled with the instance, the release and the configuration hash. Every step checks
//! what exists before it acts (labels, the server's catalogue), so any operation can be
//! repeated, and resumed after a crash at any point. The steps follow the seeds' runbooks:
//! provisioning is validate, allocate, database, containers, migrations, health, smoke test.
//! The release's own processes apply its migrations as they start, before they answer (the
//! demo platform's contract), so the migrations step waits until `schema_migrations` records
//! every migration of the release and fails, with the output, as soon as a container stops.
//! An upgrade takes a backup, turns maintenance on, replaces the containers (which migrate),
//! and checks migrations, health and a smoke test; on any failure it puts the old image back
//! and restores the backup by itself. An upgrade cut off once its containers were touched is
//! resumed from the backup it took, never from a new one of a half-migrated database.
//!
//! Independent parts of a step run at once (the network beside the database, the app beside
//! the worker); the benchmark in `benches/driver` measures what that buys.
//!
//! Secrets (the database password, `env:` values of the environment template) reach the
//! containers' environment only: they are not part of the configuration hash, and no error
//! or log line carries them.

pub mod database;
pub mod engine;
pub mod http;
pub mod template;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Duration,
};

use semver::Version;
use sha2::{Digest, Sha256};

use crate::{backups, model::Resources, secret::Secret};
use database::{Backup, Server, ServerUrl};
use engine::{ContainerSpec, Engine};

/// Why an operation failed. Each names the region and, for an unreachable part, its
/// endpoint (never a password).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("region `{region}`: the Docker engine at {endpoint} failed")]
    Docker {
        region: String,
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("region `{region}`: the PostgreSQL server at {endpoint} failed")]
    Database {
        region: String,
        endpoint: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("step `{step}` failed: {reason}")]
    Step { step: String, reason: String },
    #[error(
        "the upgrade to {to} failed ({cause}); the instance was rolled back to {from} and its database restored from {backup}"
    )]
    RolledBack {
        from: Version,
        to: Version,
        backup: String,
        cause: Box<Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Where a region's parts are.
#[derive(Clone, Debug)]
pub struct Region {
    pub name: String,
    /// The Docker endpoint, `unix://…` or `tcp://…`.
    pub docker: String,
    /// The administrator's URL of the region's PostgreSQL server, resolved from its `env:`.
    pub database: Secret,
    /// The folder backups are written to.
    pub backups: PathBuf,
}

/// How the driver works, beyond the region.
#[derive(Clone, Debug)]
pub struct Options {
    /// Labels added to everything the driver makes (tests sweep by them).
    pub labels: BTreeMap<String, String>,
    /// How long an instance may take to become healthy.
    pub health_timeout: Duration,
    /// How long a migration may run.
    pub migration_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            labels: BTreeMap::new(),
            health_timeout: Duration::from_secs(60),
            migration_timeout: Duration::from_secs(120),
        }
    }
}

/// What an instance should be.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub instance: String,
    pub version: Version,
    pub image: String,
    /// Every migration the release's database has: those of all releases up to and
    /// including this one ([`crate::model::Fleet::migrations_through`]).
    pub migrations: Vec<String>,
    pub resources: Resources,
    /// The environment the template renders, without secrets.
    pub environment: BTreeMap<String, String>,
    /// Variables whose values are secrets: name to `env:NAME` reference.
    pub secrets: BTreeMap<String, String>,
}

impl Target {
    /// The hash of the configuration: the environment and the names of the secrets (not
    /// their values, which never leave the daemon).
    pub fn config_hash(&self) -> String {
        let mut hasher = Sha256::new();
        for (name, value) in &self.environment {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(value.as_bytes());
            hasher.update([0]);
        }
        for (name, reference) in &self.secrets {
            hasher.update(name.as_bytes());
            hasher.update([1]);
            hasher.update(reference.as_bytes());
            hasher.update([0]);
        }
        hex::encode(&hasher.finalize()[..8])
    }
}

/// Where an instance differs from what it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    MissingNetwork,
    MissingVolume,
    MissingDatabase,
    MissingContainer { role: Role },
    Stopped { role: Role },
    OtherImage { role: Role, found: String },
    OtherLimits { role: Role, cpu: i64, memory: i64 },
    OtherConfiguration { role: Role, found: String },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::MissingNetwork => write!(formatter, "its network is missing"),
            Drift::MissingVolume => write!(formatter, "its volume is missing"),
            Drift::MissingDatabase => write!(formatter, "its database is missing"),
            Drift::MissingContainer { role } => {
                write!(formatter, "its {role} container is missing")
            }
            Drift::Stopped { role } => write!(formatter, "its {role} container is stopped"),
            Drift::OtherImage { role, found } => {
                write!(
                    formatter,
                    "its {role} container runs another image, {found}"
                )
            }
            Drift::OtherLimits { role, cpu, memory } => write!(
                formatter,
                "its {role} container has other limits ({cpu} nano-CPUs, {memory} bytes)"
            ),
            Drift::OtherConfiguration { role, found } => write!(
                formatter,
                "its {role} container has another configuration ({found})"
            ),
        }
    }
}

/// The long-running containers of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    App,
    Worker,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::App, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Worker => "worker",
        }
    }

    fn command(self) -> &'static str {
        match self {
            Role::App => "serve",
            Role::Worker => "worker",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The label keys the driver sets.
pub mod labels {
    pub const MANAGED: &str = "org.wakafleet.managed";
    pub const INSTANCE: &str = "org.wakafleet.instance";
    pub const ROLE: &str = "org.wakafleet.role";
    pub const RELEASE: &str = "org.wakafleet.release";
    pub const CONFIG_HASH: &str = "org.wakafleet.config-hash";
}

/// The port the platform listens on inside its containers.
const PORT: u16 = 8080;

/// Where an instance's volume is mounted.
const DATA_PATH: &str = "/data";

/// The item the smoke test makes and deletes, and its name in a query string.
const SMOKE_ITEM: &str = "wakafleet smoke test";
const SMOKE_ITEM_QUERY: &str = "wakafleet%20smoke%20test";

/// How often a local instance is asked whether it is ready.
const POLL: Duration = Duration::from_millis(20);

/// How often Docker checks a starting container on a remote engine.
const DOCKER_HEALTH_START_INTERVAL: Duration = Duration::from_millis(500);

/// How often, while polling, the containers are checked for having stopped.
const LIVENESS_EVERY: u32 = 5;

/// An instance's names on the engine and the server.
pub fn network_name(instance: &str) -> String {
    format!("wakafleet-{instance}")
}

pub fn volume_name(instance: &str) -> String {
    format!("wakafleet-{instance}-data")
}

pub fn container_name(instance: &str, role: &str) -> String {
    format!("wakafleet-{instance}-{role}")
}

/// The database and role of an instance: `wf_` and its name with `-` as `_`, shortened with
/// a hash when longer than PostgreSQL's 63 bytes.
pub fn database_name(instance: &str) -> String {
    let name = format!("wf_{}", instance.replace('-', "_"));
    if name.len() <= 63 {
        return name;
    }
    let hash = hex::encode(&Sha256::digest(instance.as_bytes())[..4]);
    format!("{}_{hash}", &name[..54])
}

/// Docker's CPU limit for the resources: nano-CPUs.
fn nano_cpus(resources: Resources) -> i64 {
    i64::try_from(resources.cpu.millicores())
        .unwrap_or(i64::MAX / 1_000_000)
        .saturating_mul(1_000_000)
}

/// A new database password: 32 random bytes in hex.
pub fn generate_password() -> Result<Secret, Error> {
    let mut bytes = [0; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| Error::Invalid(format!("no randomness for a password: {error}")))?;
    Ok(Secret::new(hex::encode(bytes)))
}

/// A region's engine and server, and what the driver does with them.
#[derive(Debug)]
pub struct Driver {
    pub engine: Engine,
    pub server: Server,
    region: Region,
    options: Options,
    /// The server's address as containers reach it.
    container_database_host: String,
}

impl Driver {
    /// A driver for `region`; nothing is contacted until an operation runs.
    pub fn new(region: &Region, options: Options) -> Result<Driver, Error> {
        let admin = ServerUrl::parse(region.database.expose()).map_err(|reason| {
            Error::Invalid(format!(
                "region `{}`: its database URL: {reason}",
                region.name
            ))
        })?;
        // A server on the engine's own loopback is reached from containers through the
        // host's gateway.
        let container_database_host = match admin.host.as_str() {
            "127.0.0.1" | "localhost" | "::1" => "host.docker.internal".to_string(),
            host => host.to_string(),
        };
        Ok(Driver {
            engine: Engine::connect(&region.name, &region.docker)?,
            server: Server {
                region: region.name.clone(),
                admin,
            },
            region: region.clone(),
            options,
            container_database_host,
        })
    }

    fn labels(&self, instance: &str) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = self
            .options
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        labels.insert(labels::MANAGED.into(), "true".into());
        labels.insert(labels::INSTANCE.into(), instance.to_string());
        labels
    }

    fn backups_folder(&self, instance: &str) -> PathBuf {
        backups::folder(&self.region.backups, instance)
    }

    /// The URL the instance's containers use: its own role and database.
    fn instance_database_url(&self, instance: &str, password: &Secret) -> Secret {
        let name = database_name(instance);
        ServerUrl {
            user: name.clone(),
            password: password.clone(),
            host: self.container_database_host.clone(),
            port: self.server.admin.port,
            database: name,
        }
        .url()
    }

    fn spec(&self, target: &Target, role: Role, password: &Secret) -> Result<ContainerSpec, Error> {
        // Every value travels as a secret: `env:` values and the database URL are, and the
        // rest costs nothing to hide.
        let mut env: Vec<(String, Secret)> = target
            .environment
            .iter()
            .map(|(name, value)| (name.clone(), Secret::new(value.as_str())))
            .collect();
        for (name, reference) in &target.secrets {
            let variable = reference.strip_prefix("env:").unwrap_or(reference);
            let value = std::env::var(variable).map_err(|_| {
                Error::Invalid(format!(
                    "instance `{}`: the secret {name} is to come from the environment variable {variable}, which is not set",
                    target.instance
                ))
            })?;
            env.push((name.clone(), Secret::new(value)));
        }
        env.push((
            "DATABASE_URL".into(),
            self.instance_database_url(&target.instance, password),
        ));
        env.push(("PORT".into(), Secret::new(PORT.to_string())));
        env.push((
            "WAKAFLEET_INSTANCE".into(),
            Secret::new(target.instance.as_str()),
        ));
        let mut labels = self.labels(&target.instance);
        labels.insert(labels::ROLE.into(), role.to_string());
        labels.insert(labels::RELEASE.into(), target.version.to_string());
        labels.insert(labels::CONFIG_HASH.into(), target.config_hash());
        Ok(ContainerSpec {
            name: container_name(&target.instance, role.as_str()),
            image: target.image.clone(),
            command: vec![role.command().to_string()],
            env,
            labels,
            network: network_name(&target.instance),
            volume: Some((volume_name(&target.instance), DATA_PATH.to_string())),
            nano_cpus: nano_cpus(target.resources),
            memory: i64::try_from(target.resources.memory.bytes()).unwrap_or(i64::MAX),
            extra_hosts: vec!["host.docker.internal:host-gateway".to_string()],
            // Only a remote engine's containers wait on Docker's health check; every check
            // is a process started in the container, which costs the engine dearly.
            health_start_interval: (!self.local_engine()).then_some(DOCKER_HEALTH_START_INTERVAL),
        })
    }

    // The steps, each safe to repeat.

    /// validate: both the engine and the server answer, and the image is there.
    pub async fn validate(&self, target: &Target) -> Result<(), Error> {
        let (_, _, has_image) = tokio::try_join!(
            self.engine.ping(),
            self.server.ping(),
            self.engine.has_image(&target.image)
        )?;
        if !has_image {
            return Err(Error::Invalid(format!(
                "region `{}`: the image `{}` is not on the engine at {}; build it with `wakafleet image build`",
                self.region.name, target.image, self.region.docker
            )));
        }
        Ok(())
    }

    /// allocate: the instance's network and volume.
    pub async fn allocate(&self, instance: &str) -> Result<(), Error> {
        let (labels, network, volume) = (
            self.labels(instance),
            network_name(instance),
            volume_name(instance),
        );
        tokio::try_join!(
            self.engine.ensure_network(&network, &labels),
            self.engine.ensure_volume(&volume, &labels)
        )?;
        Ok(())
    }

    /// database: the instance's role (with `password`) and database.
    pub async fn database(&self, instance: &str, password: &Secret) -> Result<(), Error> {
        self.server
            .ensure_database(&database_name(instance), password)
            .await
    }

    /// containers: app and worker as the target says, replacing any that differ.
    pub async fn containers(&self, target: &Target, password: &Secret) -> Result<(), Error> {
        tokio::try_join!(
            self.container(target, Role::App, password),
            self.container(target, Role::Worker, password)
        )?;
        Ok(())
    }

    /// One of the containers as the target says, replacing one that differs.
    pub async fn container(
        &self,
        target: &Target,
        role: Role,
        password: &Secret,
    ) -> Result<(), Error> {
        let spec = self.spec(target, role, password)?;
        self.engine.ensure_running(&spec).await
    }

    /// migrations: the release's containers apply its migrations as they start; this waits
    /// until the database records every one of `target.migrations` (the runbook's check of
    /// `schema_migrations`), and fails as soon as a container stops, with its output.
    pub async fn migrations(&self, target: &Target) -> Result<(), Error> {
        let database = database_name(&target.instance);
        let deadline = tokio::time::Instant::now() + self.options.migration_timeout;
        let mut connection = self.server.connect(&database).await?;
        let mut round = 0_u32;
        loop {
            let applied = self.server.applied_migrations(&mut connection).await?;
            let missing: Vec<&str> = target
                .migrations
                .iter()
                .filter(|name| !applied.contains(name))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                break;
            }
            if round.is_multiple_of(LIVENESS_EVERY) {
                for role in Role::ALL {
                    self.running(
                        &container_name(&target.instance, role.as_str()),
                        "migrations",
                    )
                    .await?;
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Step {
                    step: "migrations".into(),
                    reason: format!(
                        "{} were not applied within {:?}",
                        missing.join(", "),
                        self.options.migration_timeout
                    ),
                });
            }
            round += 1;
            tokio::time::sleep(POLL).await;
        }
        drop(sqlx::Connection::close(connection).await);
        Ok(())
    }

    /// Fails when the container is gone or stopped, with its exit code and last output.
    async fn running(&self, name: &str, step: &str) -> Result<(), Error> {
        let view = self.engine.container(name).await?;
        if view.as_ref().is_some_and(|view| view.running) {
            return Ok(());
        }
        Err(Error::Step {
            step: step.into(),
            reason: match view {
                None => format!("the container {name} is gone"),
                Some(view) => format!(
                    "{name} stopped (exit code {}): {}",
                    view.exit_code.unwrap_or(-1),
                    self.engine.logs(name).await.unwrap_or_default().trim()
                ),
            },
        })
    }

    /// health: both containers answer `/health` with 200. They are asked directly, every
    /// 20 ms, when the engine's containers are reachable from here (a local engine); else
    /// the image's Docker health check decides, asked every 500 ms while the container starts.
    pub async fn health(&self, instance: &str) -> Result<(), Error> {
        tokio::try_join!(
            self.role_health(instance, Role::App),
            self.role_health(instance, Role::Worker)
        )?;
        Ok(())
    }

    async fn role_health(&self, instance: &str, role: Role) -> Result<(), Error> {
        let name = container_name(instance, role.as_str());
        match self.engine.address(&name, &network_name(instance)).await? {
            Some(address) if self.local_engine() => {
                self.poll_health(&name, &format!("{address}:{PORT}")).await
            }
            _ => {
                self.engine
                    .wait_healthy(&name, self.options.health_timeout)
                    .await
            }
        }
    }

    /// Whether containers' addresses can be reached from this process.
    fn local_engine(&self) -> bool {
        self.region.docker.starts_with("unix://")
    }

    async fn poll_health(&self, name: &str, address: &str) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + self.options.health_timeout;
        // An instance that calls itself unhealthy for this long (degraded is a start-up
        // state: the worker's first heartbeat) has failed.
        let patience = Duration::from_secs(3);
        let mut unhealthy_since = None;
        let mut round = 0_u32;
        loop {
            let answer = http::request(address, "GET", "/health", None).await;
            match &answer {
                Ok((200, _)) => return Ok(()),
                Ok((_, body)) if body.contains("\"unhealthy\"") => {
                    let since = *unhealthy_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > patience {
                        return Err(Error::Step {
                            step: "health".into(),
                            reason: format!("{name} is unhealthy: {body}"),
                        });
                    }
                }
                _ => unhealthy_since = None,
            }
            if round.is_multiple_of(LIVENESS_EVERY) {
                self.running(name, "health").await?;
            }
            round += 1;
            if tokio::time::Instant::now() > deadline {
                let last = match answer {
                    Ok((status, body)) => format!("{status} {body}"),
                    Err(error) => error,
                };
                return Err(Error::Step {
                    step: "health".into(),
                    reason: format!(
                        "{name} was not healthy within {:?}; /health answered: {last}",
                        self.options.health_timeout
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// smoke test: create, read and delete an item through the app. Items a smoke test cut
    /// off earlier left behind are deleted first, so no crash leaves one in the instance.
    pub async fn smoke(&self, instance: &str) -> Result<(), Error> {
        let failed = |reason: String| Error::Step {
            step: "smoke test".into(),
            reason,
        };
        let address = self
            .engine
            .address(&container_name(instance, "app"), &network_name(instance))
            .await?
            .ok_or_else(|| failed("the app container has no address".into()))?;
        let address = format!("{address}:{PORT}");
        let request = |method: &'static str, path: String, body: Option<serde_json::Value>| {
            let address = &address;
            async move {
                let (status, text) = http::request(address, method, &path, body.as_ref())
                    .await
                    .map_err(&failed)?;
                let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                Ok::<_, Error>((status, text, json))
            }
        };
        let (status, text, leftovers) =
            request("GET", format!("/items?name={SMOKE_ITEM_QUERY}"), None).await?;
        if status != 200 {
            return Err(failed(format!("GET /items answered {status}: {text}")));
        }
        let leftovers = leftovers.as_array().cloned().unwrap_or_default();
        for id in leftovers.iter().filter_map(|item| item["id"].as_i64()) {
            request("DELETE", format!("/items/{id}"), None).await?;
        }
        let item = serde_json::json!({"name": SMOKE_ITEM});
        let (status, text, created) = request("POST", "/items".into(), Some(item)).await?;
        if status != 201 {
            return Err(failed(format!("POST /items answered {status}: {text}")));
        }
        let id = created["id"]
            .as_i64()
            .ok_or_else(|| failed(format!("POST /items gave no id: {text}")))?;
        let (status, text, read) = request("GET", format!("/items/{id}"), None).await?;
        if status != 200 || read["name"] != SMOKE_ITEM {
            return Err(failed(format!("GET /items/{id} answered {status}: {text}")));
        }
        let (status, text, _) = request("DELETE", format!("/items/{id}"), None).await?;
        if !(200..300).contains(&status) {
            return Err(failed(format!(
                "DELETE /items/{id} answered {status}: {text}"
            )));
        }
        Ok(())
    }

    // The operations.

    /// Provisions an instance from nothing, or finishes one a crash interrupted.
    pub async fn provision(&self, target: &Target, password: &Secret) -> Result<(), Error> {
        self.validate(target).await?;
        tokio::try_join!(
            self.allocate(&target.instance),
            self.database(&target.instance, password)
        )?;
        self.containers(target, password).await?;
        self.migrations(target).await?;
        self.health(&target.instance).await?;
        self.smoke(&target.instance).await
    }

    /// Applies a new configuration (environment): containers whose configuration hash
    /// differs are replaced.
    pub async fn configure(&self, target: &Target, password: &Secret) -> Result<(), Error> {
        self.validate(target).await?;
        self.containers(target, password).await?;
        self.migrations(target).await?;
        self.health(&target.instance).await
    }

    /// New CPU and memory limits, in place, without a restart.
    pub async fn scale(&self, target: &Target) -> Result<(), Error> {
        for role in Role::ALL {
            let name = container_name(&target.instance, role.as_str());
            self.engine
                .update_limits(
                    &name,
                    nano_cpus(target.resources),
                    i64::try_from(target.resources.memory.bytes()).unwrap_or(i64::MAX),
                )
                .await?;
        }
        Ok(())
    }

    /// Stops the containers; the data stays.
    pub async fn suspend(&self, instance: &str) -> Result<(), Error> {
        for role in Role::ALL {
            self.engine
                .stop(&container_name(instance, role.as_str()))
                .await?;
        }
        Ok(())
    }

    /// Starts what suspend stopped (recreating anything missing) and waits for health.
    pub async fn resume(&self, target: &Target, password: &Secret) -> Result<(), Error> {
        self.validate(target).await?;
        self.allocate(&target.instance).await?;
        self.containers(target, password).await?;
        self.migrations(target).await?;
        self.health(&target.instance).await
    }

    /// Backs the instance's database up into its backups folder as `<name>.dump`.
    pub async fn backup(&self, instance: &str, name: &str) -> Result<Backup, Error> {
        self.server
            .backup(
                &database_name(instance),
                &self.backups_folder(instance),
                name,
            )
            .await
    }

    /// Backs the instance's database up for `purpose`, named as [`backups`] says.
    async fn backup_for(
        &self,
        instance: &str,
        purpose: backups::Purpose<'_>,
    ) -> Result<Backup, Error> {
        let label = backups::label(purpose, chrono::Utc::now());
        self.backup(instance, &label).await
    }

    /// Restores a named backup: the containers stop, the database is replaced, the
    /// containers start again.
    pub async fn restore(
        &self,
        target: &Target,
        password: &Secret,
        name: &str,
    ) -> Result<Backup, Error> {
        self.suspend(&target.instance).await?;
        let backup = self
            .server
            .restore(
                &database_name(&target.instance),
                &self.backups_folder(&target.instance),
                name,
            )
            .await?;
        self.containers(target, password).await?;
        self.migrations(target).await?;
        self.health(&target.instance).await?;
        Ok(backup)
    }

    /// Upgrades from `from` to `to`: backup, maintenance, new containers (which apply the
    /// new migrations), migrations, health and smoke test. On any failure after the backup,
    /// the old image comes back and the backup is restored, and the error says so.
    ///
    /// Run again after a crash, it resumes: while both containers still run `from`, nothing
    /// has changed but maintenance and a fresh backup is taken; once a container was touched,
    /// the newest complete backup taken before this upgrade is the one kept for a rollback.
    pub async fn upgrade(
        &self,
        from: &Target,
        to: &Target,
        password: &Secret,
    ) -> Result<Backup, Error> {
        self.validate(to).await?;
        let backup = self
            .kept_backup(from, to, backups::Purpose::Before(&to.version))
            .await?;
        self.change_version(from, to, password, &backup, None)
            .await?;
        Ok(backup)
    }

    /// Downgrades from `from` to `to`, as the plan promises: the database as it is now is
    /// kept first (`<time>-before-downgrade-to-<to>.dump`), then the newest backup taken
    /// before the upgrade to `from` (`<time>-before-<from>.dump`) is restored under `to`'s
    /// containers, so data written since that backup leaves the instance. Without such a
    /// backup nothing is changed. On any failure the kept backup and `from` come back.
    /// Returns the restored backup.
    pub async fn downgrade(
        &self,
        from: &Target,
        to: &Target,
        password: &Secret,
    ) -> Result<Backup, Error> {
        self.validate(to).await?;
        let folder = self.backups_folder(&to.instance);
        let purpose = backups::Purpose::Before(&from.version);
        let Some(name) = self.server.latest_backup(&folder, purpose).await? else {
            return Err(Error::Invalid(format!(
                "instance `{}`: a downgrade to {} restores the backup taken before the upgrade to {}, and {} holds none ({}); nothing was changed",
                to.instance,
                to.version,
                from.version,
                folder.display(),
                backups::pattern(purpose)
            )));
        };
        let restored = self.server.checked_backup(&folder, &name).await?;
        let kept = self
            .kept_backup(from, to, backups::Purpose::BeforeDowngradeTo(&to.version))
            .await?;
        self.change_version(from, to, password, &kept, Some(&restored))
            .await?;
        Ok(restored)
    }

    /// Takes `from` to `to` under maintenance: with `restore`, that backup replaces the
    /// database first. Rolls back to `from` with `kept` on any failure.
    async fn change_version(
        &self,
        from: &Target,
        to: &Target,
        password: &Secret,
        kept: &Backup,
        restore: Option<&Backup>,
    ) -> Result<(), Error> {
        let instance = &to.instance;
        let database = database_name(instance);
        let folder = self.backups_folder(instance);
        self.server.set_maintenance(&database, true).await?;
        let attempt = async {
            if let Some(backup) = restore {
                self.suspend(instance).await?;
                self.server
                    .restore(&database, &folder, &backup.name)
                    .await?;
                self.server.set_maintenance(&database, true).await?;
            }
            self.containers(to, password).await?;
            self.migrations(to).await?;
            self.health(instance).await?;
            self.server.set_maintenance(&database, false).await?;
            self.smoke(instance).await
        }
        .await;
        let Err(cause) = attempt else {
            return Ok(());
        };
        tracing::warn!(instance, error = %cause, "version change failed; rolling back");
        self.suspend(instance).await?;
        self.server.restore(&database, &folder, &kept.name).await?;
        self.containers(from, password).await?;
        self.migrations(from).await?;
        self.health(instance).await?;
        self.server.set_maintenance(&database, false).await?;
        Err(Error::RolledBack {
            from: from.version.clone(),
            to: to.version.clone(),
            backup: kept.name.clone(),
            cause: Box::new(cause),
        })
    }

    /// The backup a version change rolls back to: a new one while both containers still run
    /// `from`, else (a change cut off after it touched them, and a new container may have
    /// migrated the database) the newest one for `purpose`, which that change took. A
    /// backups folder that cannot be read fails here: a new backup then could be of a
    /// half-migrated database.
    async fn kept_backup(
        &self,
        from: &Target,
        to: &Target,
        purpose: backups::Purpose<'_>,
    ) -> Result<Backup, Error> {
        let instance = &to.instance;
        let mut untouched = true;
        for role in Role::ALL {
            let view = self
                .engine
                .container(&container_name(instance, role.as_str()))
                .await?;
            untouched &= view.is_some_and(|view| {
                view.labels.get(labels::RELEASE) == Some(&from.version.to_string())
                    && view.image == from.image
            });
        }
        if !untouched {
            let folder = self.backups_folder(instance);
            if let Some(name) = self.server.latest_backup(&folder, purpose).await? {
                tracing::info!(instance, backup = %name, "resuming a version change that was cut off");
                return self.server.checked_backup(&folder, &name).await;
            }
        }
        self.backup_for(instance, purpose).await
    }

    /// Removes the instance after a final backup: containers, network, volume, database
    /// and role. Returns the final backup, if the database still existed.
    pub async fn terminate(&self, instance: &str) -> Result<Option<Backup>, Error> {
        self.engine.ping().await?;
        self.server.ping().await?;
        let database = database_name(instance);
        let backup = if self.server.database_exists(&database).await? {
            Some(self.backup_for(instance, backups::Purpose::Final).await?)
        } else {
            None
        };
        for role in Role::ALL {
            self.engine
                .remove_container(&container_name(instance, role.as_str()))
                .await?;
        }
        self.engine.remove_network(&network_name(instance)).await?;
        self.engine.remove_volume(&volume_name(instance)).await?;
        self.server.drop_database(&database).await?;
        Ok(backup)
    }

    /// What differs between the real instance and `target`.
    pub async fn observe(&self, target: &Target) -> Result<Vec<Drift>, Error> {
        let instance = &target.instance;
        let mut drift = Vec::new();
        if !self.engine.network_exists(&network_name(instance)).await? {
            drift.push(Drift::MissingNetwork);
        }
        if !self.engine.volume_exists(&volume_name(instance)).await? {
            drift.push(Drift::MissingVolume);
        }
        if !self
            .server
            .database_exists(&database_name(instance))
            .await?
        {
            drift.push(Drift::MissingDatabase);
        }
        let cpus = nano_cpus(target.resources);
        let memory = i64::try_from(target.resources.memory.bytes()).unwrap_or(i64::MAX);
        let hash = target.config_hash();
        for role in Role::ALL {
            let Some(view) = self
                .engine
                .container(&container_name(instance, role.as_str()))
                .await?
            else {
                drift.push(Drift::MissingContainer { role });
                continue;
            };
            if !view.running {
                drift.push(Drift::Stopped { role });
            }
            if view.image != target.image {
                drift.push(Drift::OtherImage {
                    role,
                    found: view.image.clone(),
                });
            }
            if view.nano_cpus != cpus || view.memory != memory {
                drift.push(Drift::OtherLimits {
                    role,
                    cpu: view.nano_cpus,
                    memory: view.memory,
                });
            }
            let found = view
                .labels
                .get(labels::CONFIG_HASH)
                .cloned()
                .unwrap_or_default();
            if found != hash {
                drift.push(Drift::OtherConfiguration { role, found });
            }
        }
        Ok(drift)
    }
}

/// Gets the instance's database password from the store, or makes and keeps a new one.
pub async fn database_password(
    store: &crate::store::Store,
    key: &crate::store::secrets::SecretKey,
    instance: &str,
) -> Result<Secret, Error> {
    const NAME: &str = "database_password";
    let stored = store.secret(key, instance, NAME).await.map_err(|error| {
        Error::Invalid(format!("reading the password of `{instance}`: {error}"))
    })?;
    if let Some(password) = stored {
        return Ok(password);
    }
    let password = generate_password()?;
    store
        .put_secret(key, instance, NAME, &password)
        .await
        .map_err(|error| {
            Error::Invalid(format!("keeping the password of `{instance}`: {error}"))
        })?;
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_cause_once_as_its_source() {
        let error = Error::Database {
            region: "ng-lagos".into(),
            endpoint: "db:5432".into(),
            source: sqlx::Error::Protocol("the server hung up".into()),
        };
        assert_eq!(
            error.to_string(),
            "region `ng-lagos`: the PostgreSQL server at db:5432 failed"
        );
        let source = std::error::Error::source(&error).expect("a source");
        assert!(
            source.to_string().contains("the server hung up"),
            "{source}"
        );
    }

    #[test]
    fn long_instance_names_give_distinct_database_names_within_63_bytes() {
        let long = "a".repeat(63);
        let other = format!("{}b", "a".repeat(62));
        assert!(database_name(&long).len() <= 63);
        assert_ne!(database_name(&long), database_name(&other));
        assert_eq!(database_name("acme-lagos"), "wf_acme_lagos");
    }

    #[test]
    fn the_configuration_hash_covers_the_environment_and_secret_names_only() {
        let target = Target {
            instance: "web".into(),
            version: Version::new(1, 0, 0),
            image: "i".into(),
            migrations: Vec::new(),
            resources: Resources::default(),
            environment: BTreeMap::from([("A".into(), "1".into())]),
            secrets: BTreeMap::from([("KEY".into(), "env:WEB_KEY".into())]),
        };
        let mut changed = target.clone();
        changed.environment.insert("A".into(), "2".into());
        assert_ne!(target.config_hash(), changed.config_hash());
        let mut upgraded = target.clone();
        upgraded.version = Version::new(2, 0, 0);
        upgraded.image = "j".into();
        assert_eq!(target.config_hash(), upgraded.config_hash());
    }
}
