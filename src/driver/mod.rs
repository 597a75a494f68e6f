//! The driver: an instance's parts on its region's real Docker engine and PostgreSQL server,
//! as check-then-act primitives.
//!
//! An instance is a Docker network and volume, a database with its own role, and two
//! containers (`app` and `worker`) of its release's image, named `wakafleet-<instance>-<role>`
//! and labelled with the instance, the release and the configuration hash. Every primitive
//! checks what exists before it acts (labels, the server's catalogue, the backups folder), so
//! each can be repeated, and a sequence of them resumed after a crash at any point. The
//! release's own processes apply its migrations as they start, before they answer (the demo
//! platform's contract), so the migrations step waits until `schema_migrations` records every
//! migration of the release and fails, with the output, as soon as a container stops.
//!
//! The module holds the driver itself (`Driver`, its `Region` and `Options`, `Error`) and the
//! names of an instance's parts; `target` what an instance should be (`Target`, `Role`, the
//! label keys); `steps` the primitives; `observe` the `Drift` between an instance and its
//! target. `engine` and `database` are the engine and the server, `http` the client the
//! health and smoke checks use, `template` the containers' environment.
//!
//! It offers primitives only and deliberately owns no workflow: the lifecycle operations
//! (provision, upgrade, downgrade, terminate and the rest) are workflows of the primitives in
//! `jobs::lifecycle`, where the order of the steps, their retries and their compensations
//! (an upgrade's rollback onto the backup it took) belong.
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

mod observe;
mod steps;
mod target;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Duration,
};

use sha2::{Digest, Sha256};

use crate::{backups, secret::Secret};
use database::{Server, ServerUrl};
use engine::{ContainerSpec, Engine};

pub use observe::Drift;
use target::nano_cpus;
pub use target::{Role, Target, labels};

/// Why a primitive failed. Each names the region and, for an unreachable part, its
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

/// The port the platform listens on inside its containers.
const PORT: u16 = 8080;

/// Where an instance's volume is mounted.
const DATA_PATH: &str = "/data";

/// How often Docker checks a starting container on a remote engine.
const DOCKER_HEALTH_START_INTERVAL: Duration = Duration::from_millis(500);

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
    /// A driver for `region`; nothing is contacted until a primitive runs.
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

    /// The CPU limit of a container of `resources`, in nano-CPUs: what the instance is
    /// given, but no more than the engine's host has (an engine refuses a limit above its
    /// CPUs, and a small region's host may have fewer than a size asks for).
    pub async fn cpu_limit(&self, resources: crate::model::Resources) -> Result<i64, Error> {
        let host = self.engine.cpus().await?.saturating_mul(1_000_000_000);
        Ok(nano_cpus(resources).min(host))
    }

    fn spec(
        &self,
        target: &Target,
        role: Role,
        password: &Secret,
        nano_cpus: i64,
    ) -> Result<ContainerSpec, Error> {
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
            nano_cpus,
            memory: i64::try_from(target.resources.memory.bytes()).unwrap_or(i64::MAX),
            extra_hosts: vec!["host.docker.internal:host-gateway".to_string()],
            // Only a remote engine's containers wait on Docker's health check; every check
            // is a process started in the container, which costs the engine dearly.
            health_start_interval: (!self.local_engine()).then_some(DOCKER_HEALTH_START_INTERVAL),
        })
    }

    /// Whether containers' addresses can be reached from this process.
    fn local_engine(&self) -> bool {
        self.region.docker.starts_with("unix://")
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
}
