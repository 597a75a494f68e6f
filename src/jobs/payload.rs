//! What a job carries: everything it needs to finish, so that it resumes after a crash even
//! when the fleet moved on (its release left the catalogue, its instance file changed).
//!
//! Targets travel in a wire form of their own, not as the driver's [`Target`]: versioned by
//! its fields, with resources in plain units, the environment rendered but `env:` references
//! unresolved (a payload holds no secret), and the configuration hash the target had when
//! the job was made, which the job checks again before it acts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    driver::Target,
    model::{ByteSize, Cpu, Resources},
    plan::snapshot,
    store::audit::Commit,
};

/// A target as a job carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireTarget {
    pub instance: String,
    /// The release (semver).
    pub version: String,
    pub image: String,
    /// Every migration of the release, in order.
    pub migrations: Vec<String>,
    /// Thousandths of a core.
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    pub storage_bytes: u64,
    /// The rendered environment, without secrets.
    pub environment: BTreeMap<String, String>,
    /// Secret variables and their `env:` references, unresolved.
    pub secrets: BTreeMap<String, String>,
    /// The target's configuration hash when the job was made.
    pub config_hash: String,
}

impl WireTarget {
    /// The wire form of `target`.
    pub fn of(target: &Target) -> WireTarget {
        WireTarget {
            instance: target.instance.clone(),
            version: target.version.to_string(),
            image: target.image.clone(),
            migrations: target.migrations.clone(),
            cpu_millicores: target.resources.cpu.millicores(),
            memory_bytes: target.resources.memory.bytes(),
            storage_bytes: target.resources.storage.bytes(),
            environment: target.environment.clone(),
            secrets: target.secrets.clone(),
            config_hash: target.config_hash(),
        }
    }

    /// The driver's target, checked: a version that does not parse, a reference that is not
    /// `env:`, or a hash that no longer matches (a payload edited or mangled) is refused.
    pub fn target(&self) -> Result<Target, String> {
        let version = semver::Version::parse(&self.version).map_err(|error| {
            format!(
                "instance `{}`: the job's version `{}` is not a version: {error}",
                self.instance, self.version
            )
        })?;
        // The value is not shown: it may be the secret itself.
        if let Some(name) = self
            .secrets
            .iter()
            .find_map(|(name, reference)| (!reference.starts_with("env:")).then_some(name))
        {
            return Err(format!(
                "instance `{}`: the job's secret {name} is not an env: reference",
                self.instance
            ));
        }
        let target = Target {
            instance: self.instance.clone(),
            version,
            image: self.image.clone(),
            migrations: self.migrations.clone(),
            resources: Resources {
                cpu: Cpu::from_millicores(self.cpu_millicores),
                memory: ByteSize::from_bytes(self.memory_bytes),
                storage: ByteSize::from_bytes(self.storage_bytes),
            },
            environment: self.environment.clone(),
            secrets: self.secrets.clone(),
        };
        let hash = target.config_hash();
        if hash != self.config_hash {
            return Err(format!(
                "instance `{}`: the job's configuration hash {} does not match its environment ({hash})",
                self.instance, self.config_hash
            ));
        }
        Ok(target)
    }
}

/// A job's payload. Each kind reads the parts it needs; [`Payload::decode`] refuses a
/// payload that is not of this form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// What the instance is to become (every kind but terminate and backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<WireTarget>,
    /// What it runs now: the version an upgrade or downgrade leaves, a rollback's way back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<WireTarget>,
    /// The instance as the store is to record it once the job is done (the plan's view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<snapshot::Instance>,
    /// The commit that asked for the job, with its author, committer and approvers, carried
    /// into every audit record of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Commit>,
    /// A backup's name (a backup job; a restore's source), without `.dump`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// How many of the instance's scheduled backups to keep (a backup job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<u32>,
}

impl Payload {
    /// The payload of a stored job.
    pub fn decode(value: &serde_json::Value) -> Result<Payload, String> {
        serde_json::from_value(value.clone())
            .map_err(|error| format!("the job's payload cannot be read: {error}"))
    }

    /// The payload as stored.
    pub fn encode(&self) -> serde_json::Value {
        // Plain data always serializes.
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            instance: "web".into(),
            version: semver::Version::new(1, 5, 0),
            image: "demo:1.5.0".into(),
            migrations: vec!["0001_items".into()],
            resources: Resources {
                cpu: Cpu::from_millicores(1_500),
                memory: ByteSize::from_bytes(2 << 30),
                storage: ByteSize::from_bytes(20 << 30),
            },
            environment: BTreeMap::from([("SSL".into(), "true".into())]),
            secrets: BTreeMap::from([("API_KEY".into(), "env:WEB_API_KEY".into())]),
        }
    }

    #[test]
    fn a_target_survives_the_wire_and_keeps_its_secrets_unresolved() {
        let wire = WireTarget::of(&target());
        let payload = Payload {
            target: Some(wire.clone()),
            ..Payload::default()
        };
        let text = payload.encode().to_string();
        assert!(text.contains("env:WEB_API_KEY"), "{text}");
        let back = Payload::decode(&serde_json::from_str(&text).expect("JSON")).expect("decoded");
        assert_eq!(back, payload);
        assert_eq!(wire.target(), Ok(target()));
    }

    #[test]
    fn a_mangled_payload_is_refused_with_the_reason() {
        let mut wire = WireTarget::of(&target());
        wire.environment.insert("SSL".into(), "false".into());
        let refused = wire.target().expect_err("the hash no longer matches");
        assert!(refused.contains("configuration hash"), "{refused}");

        let mut wire = WireTarget::of(&target());
        wire.secrets.insert("API_KEY".into(), "hunter2".into());
        let refused = wire.target().expect_err("a literal secret");
        assert!(refused.contains("not an env: reference"), "{refused}");
        assert!(!refused.contains("hunter2"), "{refused}");

        let unknown = serde_json::json!({"target": null, "surprise": 1});
        let refused = Payload::decode(&unknown).expect_err("an unknown field");
        assert!(refused.contains("surprise"), "{refused}");
    }
}
