//! What differs between a real instance and its `Target`: `Driver::observe` reads the
//! engine and the server and reports each difference as a `Drift`.
//!
//! It only reads; repairing drift is the steps' job.

use crate::driver::{
    Driver, Error, container_name, labels, network_name,
    target::{Role, Target},
    volume_name,
};

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

impl Driver {
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
        if !self.database_exists(instance).await? {
            drift.push(Drift::MissingDatabase);
        }
        let cpus = self.cpu_limit(target.resources).await?;
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
