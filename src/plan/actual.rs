//! What is deployed: the actual state a plan is computed against.
//!
//! Entities other than instances are recorded as the fields the fleet gave them; instances
//! as the version they run, their lifecycle state, their resources and their configuration.
//! [`converged_base`] derives an actual state from a fleet, as if the daemon had carried out
//! everything that fleet implies: the offline stand-in for the daemon's records.

use std::{collections::BTreeMap, sync::Arc};

use semver::Version;

use crate::{
    model::{Fleet, Instance, InstanceState, Resources},
    parallel,
    plan::fields::{self, Fields, ResourceType},
    policy, validate,
};

/// The lifecycle state an instance is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RunState {
    Active,
    Suspended,
    Terminated,
}

/// One deployed instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActualInstance {
    pub version: Version,
    pub state: RunState,
    pub resources: Resources,
    /// The configuration it was deployed with, field by field (see `plan::fields`).
    pub config: Fields,
}

/// Everything deployed or recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actual {
    /// Partners, tenants, channels and releases as recorded, field by field.
    pub entities: BTreeMap<(ResourceType, String), Fields>,
    /// Shared, so a plan's memo (`plan::Memo`) tells an instance read in the same state by
    /// its address.
    pub instances: BTreeMap<String, Arc<ActualInstance>>,
    /// What an observation of the real instances found to differ from what was applied, by
    /// instance (the daemon observes; a plan from a record or a commit sees none).
    pub drift: BTreeMap<String, Vec<Drift>>,
}

/// One way a real instance differs from what was applied to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// What differs, in words ("its app container is stopped").
    pub what: String,
    /// Whether making its parts again repairs it. A missing database is not repaired: an
    /// empty one would hide the loss; it waits for an operator to restore a backup.
    pub repairable: bool,
}

/// The lifecycle state the fleet asks of an instance: its own `state`, but suspended when
/// its partner or tenant is.
pub fn effective_state(fleet: &Fleet, instance: &Instance) -> RunState {
    let suspended_owner = fleet
        .partners
        .get(&instance.partner.value)
        .is_some_and(|partner| partner.state == crate::model::Standing::Suspended)
        || instance
            .tenant
            .as_ref()
            .and_then(|tenant| fleet.tenants.get(&tenant.value))
            .is_some_and(|tenant| tenant.state == crate::model::Standing::Suspended);
    match instance.state {
        InstanceState::Terminated => RunState::Terminated,
        InstanceState::Suspended => RunState::Suspended,
        InstanceState::Active if suspended_owner => RunState::Suspended,
        InstanceState::Active => RunState::Active,
    }
}

/// The actual state of a fleet whose every implied change has been carried out: each
/// instance exists in its state at the version its channel selects (maintenance windows
/// ignored, approvals given in the fleet honoured). Terminated instances are recorded as
/// terminated.
pub fn converged_base(fleet: &Fleet) -> Actual {
    let mut actual = Actual {
        entities: fields::entities(fleet),
        ..Actual::default()
    };
    let instances: Vec<&Instance> = fleet
        .instances
        .values()
        .map(|instance| &**instance)
        .collect();
    let converged = parallel::map_chunks(&instances, 1_000, |instances| {
        let mut memo = policy::Memo::converging();
        let mut converged = Vec::with_capacity(instances.len());
        for &instance in instances {
            let Some(channel) = fleet.channels.get(&instance.channel.value) else {
                continue;
            };
            let input = policy::Input {
                instance,
                channel,
                releases: &fleet.releases,
                actual: None,
            };
            let (Some(version), Some(resources)) = (
                memo.converged(&input),
                validate::resources_of(fleet, instance),
            ) else {
                continue;
            };
            converged.push((
                instance.name.value.clone(),
                ActualInstance {
                    version,
                    state: effective_state(fleet, instance),
                    resources,
                    config: fields::instance_config(instance),
                },
            ));
        }
        converged
    });
    actual.instances = converged
        .into_iter()
        .flatten()
        .map(|(name, instance)| (name, Arc::new(instance)))
        .collect();
    actual
}
