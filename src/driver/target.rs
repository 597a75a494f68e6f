//! What an instance should be: its `Target`, the hash of its configuration, the `Role`s of
//! its containers and the label keys the driver sets on what it makes.
//!
//! These are plain values; nothing here talks to the engine or the server.

use std::collections::BTreeMap;

use semver::Version;
use sha2::{Digest, Sha256};

use crate::model::Resources;

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

/// The long-running containers of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    App,
    Worker,
}

/// The label keys the driver sets.
pub mod labels {
    pub const MANAGED: &str = "org.wakafleet.managed";
    pub const INSTANCE: &str = "org.wakafleet.instance";
    pub const ROLE: &str = "org.wakafleet.role";
    pub const RELEASE: &str = "org.wakafleet.release";
    pub const CONFIG_HASH: &str = "org.wakafleet.config-hash";
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

impl Role {
    pub const ALL: [Role; 2] = [Role::App, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Worker => "worker",
        }
    }

    /// The demo platform's subcommand the role's container runs.
    pub(super) fn command(self) -> &'static str {
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

/// Docker's CPU limit for the resources: nano-CPUs.
pub(super) fn nano_cpus(resources: Resources) -> i64 {
    i64::try_from(resources.cpu.millicores())
        .unwrap_or(i64::MAX / 1_000_000)
        .saturating_mul(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

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
