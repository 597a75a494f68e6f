//! The state snapshot: the actual state as a versioned JSON document.
//!
//! `plan --state FILE` reads one; `wakafleet state export` and the daemon's `/api/v1/state`
//! will write them. The wire types here are the contract (their JSON Schema is checked in as
//! `schemas/state.schema.json`) and convert explicitly to and from [`Actual`].

use std::{collections::BTreeMap, sync::Arc};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    model::{ByteSize, Cpu, Resources},
    plan::{
        ResourceType,
        actual::{Actual, ActualInstance, RunState},
    },
};

/// The version of the snapshot format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// A snapshot of the actual state of a fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "wakafleet state snapshot")]
pub struct Snapshot {
    /// Always 1 for this format.
    pub format_version: u32,
    /// Partners, tenants, channels and releases as recorded, field by field.
    #[serde(default)]
    pub entities: Vec<Entity>,
    /// Deployed instances, by name.
    #[serde(default)]
    pub instances: BTreeMap<String, Instance>,
}

/// A recorded partner, tenant, channel or release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    /// `partner`, `tenant`, `channel` or `release`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    /// Field name to value as a fleet file writes it (lists as `a, b`).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// A deployed instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// The release it runs (semver).
    pub version: String,
    /// `active`, `suspended` or `terminated`.
    pub state: String,
    pub resources: InstanceResources,
    /// The configuration it was deployed with, field by field.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// CPU cores and sizes as fleet files write them (`"2.0"`, `"4G"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceResources {
    pub cpu: String,
    pub memory: String,
    pub storage: String,
}

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the snapshot is not valid JSON of the state format: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the snapshot has format_version {0}; this wakafleet reads version {FORMAT_VERSION}")]
    Version(u32),
    #[error("{0}")]
    Value(String),
}

/// The JSON Schema of the snapshot, as checked in under `schemas/`.
pub fn schema_text() -> String {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<Snapshot>();
    serde_json::to_string_pretty(&schema).expect("schemas serialize to JSON") + "\n"
}

/// Parses a snapshot and converts it to an actual state.
///
/// # Errors
/// When the text is not a snapshot of this format, or a value in it does not parse.
pub fn parse(text: &str) -> Result<Actual, Error> {
    into_actual(serde_json::from_str(text)?)
}

/// Converts a snapshot to an actual state.
///
/// # Errors
/// When the snapshot is of another format version, or a value in it does not parse.
pub fn into_actual(snapshot: Snapshot) -> Result<Actual, Error> {
    if snapshot.format_version != FORMAT_VERSION {
        return Err(Error::Version(snapshot.format_version));
    }
    let mut actual = Actual::default();
    for entity in snapshot.entities {
        let kind = match entity.kind.as_str() {
            "partner" => ResourceType::Partner,
            "tenant" => ResourceType::Tenant,
            "channel" => ResourceType::Channel,
            "release" => ResourceType::Release,
            other => {
                return Err(Error::Value(format!(
                    "entity `{}` has type `{other}`; expected partner, tenant, channel or release",
                    entity.id
                )));
            }
        };
        actual.entities.insert((kind, entity.id), entity.fields);
    }
    for (name, instance) in snapshot.instances {
        let invalid = |what: &str| Error::Value(format!("instance `{name}`: {what}"));
        let version = semver::Version::parse(&instance.version)
            .map_err(|error| invalid(&format!("version `{}`: {error}", instance.version)))?;
        let state = match instance.state.as_str() {
            "active" => RunState::Active,
            "suspended" => RunState::Suspended,
            "terminated" => RunState::Terminated,
            other => {
                return Err(invalid(&format!(
                    "state `{other}` is not active, suspended or terminated"
                )));
            }
        };
        let resources = Resources {
            cpu: Cpu::parse(&instance.resources.cpu).map_err(|error| invalid(&error))?,
            memory: ByteSize::parse(&instance.resources.memory).map_err(|error| invalid(&error))?,
            storage: ByteSize::parse(&instance.resources.storage)
                .map_err(|error| invalid(&error))?,
        };
        actual.instances.insert(
            name,
            Arc::new(ActualInstance {
                version,
                state,
                resources,
                config: instance.config,
            }),
        );
    }
    Ok(actual)
}

/// The snapshot of an actual state.
pub fn from_actual(actual: &Actual) -> Snapshot {
    Snapshot {
        format_version: FORMAT_VERSION,
        entities: actual
            .entities
            .iter()
            .map(|((kind, id), fields)| Entity {
                kind: kind.as_str().to_string(),
                id: id.clone(),
                fields: fields.clone(),
            })
            .collect(),
        instances: actual
            .instances
            .iter()
            .map(|(name, instance)| (name.clone(), instance_of(instance)))
            .collect(),
    }
}

/// The snapshot form of one deployed instance.
pub fn instance_of(instance: &ActualInstance) -> Instance {
    let state = match instance.state {
        RunState::Active => "active",
        RunState::Suspended => "suspended",
        RunState::Terminated => "terminated",
    };
    Instance {
        version: instance.version.to_string(),
        state: state.to_string(),
        resources: InstanceResources {
            cpu: instance.resources.cpu.to_string(),
            memory: instance.resources.memory.to_string(),
            storage: instance.resources.storage.to_string(),
        },
        config: instance.config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load::Limits, validate};

    fn example_actual() -> Actual {
        let inputs = vec![crate::load::Input {
            path: "fleet.toml".to_string(),
            content: crate::load::Content::Bytes(b"name = \"f\"\n".to_vec()),
        }];
        let fleet = validate::check(inputs, &Limits::default()).fleet;
        let mut actual = crate::plan::converged_base(&fleet);
        actual.instances.insert(
            "web".to_string(),
            Arc::new(ActualInstance {
                version: semver::Version::new(1, 4, 2),
                state: RunState::Suspended,
                resources: Resources {
                    cpu: Cpu::from_millicores(2500),
                    memory: ByteSize::from_bytes(4 << 30),
                    storage: ByteSize::from_bytes(50 << 30),
                },
                config: BTreeMap::from([("region".to_string(), "ng-lagos".to_string())]),
            }),
        );
        actual.entities.insert(
            (ResourceType::Partner, "p".to_string()),
            BTreeMap::from([("name".to_string(), "P".to_string())]),
        );
        actual
    }

    #[test]
    fn snapshots_round_trip() {
        let actual = example_actual();
        let text = serde_json::to_string(&from_actual(&actual)).expect("JSON");
        assert_eq!(parse(&text).expect("parses"), actual);
    }

    #[test]
    fn bad_snapshots_are_errors_that_say_why() {
        let error = |text: &str| parse(text).expect_err("rejected").to_string();
        assert!(error("{").contains("not valid JSON"));
        assert!(error(r#"{"format_version": 2}"#).contains("format_version 2"));
        assert!(error(r#"{"format_version": 1, "extra": 1}"#).contains("unknown field"));
        let bad_version = r#"{"format_version": 1, "instances": {"web": {"version": "one", "state": "active", "resources": {"cpu": "1", "memory": "1G", "storage": "1G"}}}}"#;
        assert!(error(bad_version).contains("instance `web`: version `one`"));
        let bad_type = r#"{"format_version": 1, "entities": [{"type": "planet", "id": "x"}]}"#;
        assert!(error(bad_type).contains("type `planet`"));
    }
}
