//! The plan: what must change to take the actual state to the desired fleet, and when.
//!
//! [`compute`] compares a [`ValidFleet`] with an [`Actual`] state at a given time and returns
//! a [`Plan`]: one [`Action`] per change, with its status (ready, deferred to a maintenance
//! window, or blocked), the field-level changes and the reason in words. Version changes
//! come from `policy`. A plan is a value; `render` turns it into text, Markdown or JSON.
//! Nothing here reads files, a clock or the store.

pub mod actual;
pub mod fields;
pub mod group;
mod memo;
pub mod render;
pub mod snapshot;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
};

use chrono::{DateTime, Utc};
use semver::Version;

use crate::{
    backups,
    diag::SourceMap,
    model::{Fleet, Instance},
    parallel,
    policy::{self, BlockedReason, Status},
    validate::{self, ValidFleet},
};

pub use actual::{Actual, ActualInstance, Drift, RunState, converged_base, effective_state};
pub use fields::Fields;
pub use fields::ResourceType;
pub use memo::{Memo, Stats as MemoStats};

/// What an action does, in the order a plan lists the actions of one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Create,
    Update,
    Provision,
    Resume,
    /// Makes the parts of an instance that drifted from what was applied again, as applied.
    Repair,
    Configure,
    Scale,
    Upgrade,
    Downgrade,
    Suspend,
    Terminate,
    Delete,
    Orphaned,
}

impl Kind {
    /// Every kind, in plan order.
    pub const ALL: &[Kind] = &[
        Kind::Create,
        Kind::Update,
        Kind::Provision,
        Kind::Resume,
        Kind::Repair,
        Kind::Configure,
        Kind::Scale,
        Kind::Upgrade,
        Kind::Downgrade,
        Kind::Suspend,
        Kind::Terminate,
        Kind::Delete,
        Kind::Orphaned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Update => "update",
            Kind::Provision => "provision",
            Kind::Resume => "resume",
            Kind::Repair => "repair",
            Kind::Configure => "configure",
            Kind::Scale => "scale",
            Kind::Upgrade => "upgrade",
            Kind::Downgrade => "downgrade",
            Kind::Suspend => "suspend",
            Kind::Terminate => "terminate",
            Kind::Delete => "delete",
            Kind::Orphaned => "orphaned",
        }
    }
}

/// One field's value before and after; `None` where the field is absent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Change {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// One change the plan calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub kind: Kind,
    pub resource_type: ResourceType,
    pub id: String,
    pub status: Status,
    pub not_before: Option<DateTime<Utc>>,
    pub blocked_reason: Option<BlockedReason>,
    /// For upgrades and downgrades.
    pub from: Option<Version>,
    pub to: Option<Version>,
    pub changes: Vec<Change>,
    pub reason: String,
    /// For upgrades: a release on the way is a breaking step (the policy's judgement).
    pub breaking: bool,
}

impl Action {
    fn new(kind: Kind, resource_type: ResourceType, id: &str, reason: String) -> Action {
        Action {
            kind,
            resource_type,
            id: id.to_string(),
            status: Status::Ready,
            not_before: None,
            blocked_reason: None,
            from: None,
            to: None,
            changes: Vec::new(),
            reason,
            breaking: false,
        }
    }
}

/// The actions that take an actual state to a fleet, sorted by resource type, id and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub at: DateTime<Utc>,
    pub actions: Vec<Action>,
    /// Releases that are available but that nothing approves yet, each with what would
    /// approve it (all blocked). Not actions: the daemon does nothing about them.
    pub advisories: Vec<Action>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// How many actions have `status`.
    pub fn count_status(&self, status: Status) -> usize {
        self.actions
            .iter()
            .filter(|action| action.status == status)
            .count()
    }

    /// How many actions are of `kind`.
    pub fn count_kind(&self, kind: Kind) -> usize {
        self.actions
            .iter()
            .filter(|action| action.kind == kind)
            .count()
    }
}

/// Instances per thread below which planning stays on one thread.
const PER_THREAD: usize = 1_000;

/// Instances per thread below which looking up remembered plans stays on one thread.
const REUSES_PER_THREAD: usize = 4_000;

/// The plan that takes `actual` to `desired` at `now`.
///
/// `sources` are the desired fleet's files, so reasons can name them.
pub fn compute(
    desired: &ValidFleet,
    sources: &SourceMap,
    actual: &Actual,
    now: DateTime<Utc>,
) -> Plan {
    plan(desired, sources, actual, now, None)
}

/// The plan [`compute`] makes, reusing what `memo` remembers of the plans before it for
/// the instances whose inputs did not change, and remembering this one's (see [`Memo`]).
pub fn compute_with(
    desired: &ValidFleet,
    sources: &SourceMap,
    actual: &Actual,
    now: DateTime<Utc>,
    memo: &mut Memo,
) -> Plan {
    plan(desired, sources, actual, now, Some(memo))
}

fn plan(
    desired: &ValidFleet,
    sources: &SourceMap,
    actual: &Actual,
    now: DateTime<Utc>,
    mut memo: Option<&mut Memo>,
) -> Plan {
    let fleet = desired.fleet();
    let mut actions = match memo.as_deref_mut() {
        Some(memo) => {
            memo.begin(fleet);
            entity_actions(&memo.entities(fleet), actual)
        }
        None => entity_actions(&fields::entities(fleet), actual),
    };
    // Instances are planned independently, so they are split over the cores; each thread
    // keeps its own memo of policy decisions. Reusing a remembered plan is cheaper than
    // starting a thread, so with a memo the split is by what is left to plan.
    let kept = memo.as_deref();
    let rows = rows(fleet, actual, kept);
    let per_thread = if kept.is_some_and(|memo| !memo.instances.is_empty()) {
        REUSES_PER_THREAD
    } else {
        PER_THREAD
    };
    let planned = parallel::map_chunks(&rows, per_thread, |rows| {
        let mut decide = policy::Memo::at(now);
        let mut part = Part::default();
        for row in rows {
            let name = row.name;
            match (row.instance, row.deployed) {
                (Some(instance), deployed) => {
                    let inputs = memo::Inputs {
                        instance,
                        file: sources.path(instance.name.span.file),
                        owners: memo::Inputs::owners(fleet, instance),
                        deployed,
                        drift: actual.drift.get(name).map_or(&[][..], Vec::as_slice),
                    };
                    if let Some((planned, here)) = row
                        .kept
                        .and_then(|planned| Some((planned, planned.made_from(&inputs)?)))
                    {
                        part.add(planned.output.clone());
                        part.reused += 1;
                        if !here && kept.is_some() {
                            part.fresh.push(memo::Fresh::Moved(
                                name.clone(),
                                Arc::clone(instance),
                                deployed.map(Arc::clone),
                            ));
                        }
                        continue;
                    }
                    let output = instance_actions(fleet, &inputs, &mut decide);
                    if kept.is_some() {
                        // What a window decides changes with the time alone; a blocked
                        // change waits for no window.
                        let timeless = output
                            .decisions
                            .iter()
                            .all(|(_, action)| action.status == Status::Blocked)
                            || fleet.channels[&instance.channel.value]
                                .maintenance_window
                                .is_none();
                        part.fresh.push(if timeless {
                            memo::Fresh::Keep(name.clone(), inputs.keep(output.clone()))
                        } else {
                            memo::Fresh::Forget(name.clone())
                        });
                    }
                    part.add(output);
                }
                (None, Some(deployed)) if deployed.state != RunState::Terminated => {
                    part.actions.push(Action::new(
                        Kind::Orphaned,
                        ResourceType::Instance,
                        name,
                        format!(
                            "the file of instance `{name}` was removed; wakafleet never destroys an instance whose file is gone: restore the file with `state = \"terminated\"` to remove it"
                        ),
                    ));
                }
                (None, _) => {}
            }
        }
        part
    });
    let mut advisories = Vec::new();
    let (mut fresh, mut reused) = (Vec::new(), 0);
    for part in planned {
        actions.extend(part.actions);
        advisories.extend(part.advisories);
        fresh.extend(part.fresh);
        reused += part.reused;
    }
    if let Some(memo) = memo {
        memo.record(fleet, fresh, reused);
    }
    let order = |a: &Action, b: &Action| {
        (a.resource_type, &a.id, a.kind, &a.to).cmp(&(b.resource_type, &b.id, b.kind, &b.to))
    };
    actions.sort_by(order);
    advisories.sort_by(order);
    Plan {
        at: now,
        actions,
        advisories,
    }
}

/// One name of the fleet or the recorded state: the instance the fleet has under it, the
/// one deployed, and what the memo remembers of it.
struct Row<'a> {
    name: &'a String,
    instance: Option<&'a Arc<Instance>>,
    deployed: Option<&'a Arc<ActualInstance>>,
    kept: Option<&'a memo::Planned>,
}

/// Every name of the fleet and the recorded state, in order, each once; the three maps are
/// walked side by side, as they are sorted alike.
fn rows<'a>(fleet: &'a Fleet, actual: &'a Actual, memo: Option<&'a Memo>) -> Vec<Row<'a>> {
    let mut rows = Vec::with_capacity(fleet.instances.len().max(actual.instances.len()));
    let mut desired = fleet.instances.iter().peekable();
    let mut deployed = actual.instances.iter().peekable();
    let mut kept = memo.map(|memo| memo.instances.iter().peekable());
    loop {
        let order = match (desired.peek(), deployed.peek()) {
            (Some((a, _)), Some((b, _))) => a.cmp(b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => break,
        };
        let mut row = match order {
            std::cmp::Ordering::Less => desired.next().map(|(name, instance)| Row {
                name,
                instance: Some(instance),
                deployed: None,
                kept: None,
            }),
            std::cmp::Ordering::Greater => deployed.next().map(|(name, instance)| Row {
                name,
                instance: None,
                deployed: Some(instance),
                kept: None,
            }),
            std::cmp::Ordering::Equal => {
                desired
                    .next()
                    .zip(deployed.next())
                    .map(|((name, instance), (_, deployed))| Row {
                        name,
                        instance: Some(instance),
                        deployed: Some(deployed),
                        kept: None,
                    })
            }
        }
        .expect("the peeked entry is there");
        if let Some(kept) = &mut kept {
            while kept.next_if(|(name, _)| *name < row.name).is_some() {}
            row.kept = kept
                .next_if(|(name, _)| *name == row.name)
                .map(|(_, planned)| planned);
        }
        rows.push(row);
    }
    rows
}

/// What one thread planned.
#[derive(Default)]
struct Part {
    actions: Vec<Action>,
    advisories: Vec<Action>,
    fresh: Vec<memo::Fresh>,
    reused: usize,
}

impl Part {
    fn add(&mut self, output: memo::Output) {
        self.actions.extend(output.actions);
        for (advisory, action) in output.decisions {
            if advisory {
                self.advisories.push(action);
            } else {
                self.actions.push(action);
            }
        }
    }
}

/// Create, update and delete actions for partners, tenants, channels and releases, whose
/// fields in the fleet are `desired`.
fn entity_actions(
    desired: &BTreeMap<(ResourceType, String), Fields>,
    actual: &Actual,
) -> Vec<Action> {
    let keys: BTreeSet<&(ResourceType, String)> =
        desired.keys().chain(actual.entities.keys()).collect();
    let mut actions = Vec::new();
    for key in keys {
        let (resource_type, id) = key;
        let (kind, reason) = match (desired.get(key), actual.entities.get(key)) {
            (Some(_), None) => (
                Kind::Create,
                format!("{} `{id}` added", resource_type.as_str()),
            ),
            (None, Some(_)) => (
                Kind::Delete,
                format!("{} `{id}` removed", resource_type.as_str()),
            ),
            (Some(after), Some(before)) if after != before => (
                Kind::Update,
                format!("{} `{id}` changed", resource_type.as_str()),
            ),
            _ => continue,
        };
        let mut action = Action::new(kind, *resource_type, id, reason);
        action.changes = diff(actual.entities.get(key), desired.get(key));
        actions.push(action);
    }
    actions
}

/// The changes between two field maps, by field name.
fn diff(before: Option<&Fields>, after: Option<&Fields>) -> Vec<Change> {
    let empty = Fields::new();
    let (before, after) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .map(|name| Change {
            field: name.clone(),
            before: before.get(name).cloned(),
            after: after.get(name).cloned(),
        })
        .collect()
}

/// The lifecycle, configuration and scaling actions of an instance, and its version changes.
fn instance_actions(
    fleet: &Fleet,
    inputs: &memo::Inputs<'_>,
    memo: &mut policy::Memo,
) -> memo::Output {
    let memo::Inputs {
        instance,
        file,
        deployed,
        drift,
        ..
    } = *inputs;
    let mut output = memo::Output::default();
    let actions = &mut output.actions;
    let name = &instance.name.value;
    let state = effective_state(fleet, instance);
    let channel = &fleet.channels[&instance.channel.value];
    let resources =
        validate::resources_of(fleet, instance).expect("a valid fleet sizes every instance");
    let deployed = deployed
        .map(|deployed| &**deployed)
        .filter(|deployed| deployed.state != RunState::Terminated);
    let Some(deployed) = deployed else {
        if state == RunState::Terminated {
            return output;
        }
        let input = policy::Input {
            instance,
            channel,
            releases: &fleet.releases,
            actual: None,
        };
        let Some(version) = policy::converged(&input) else {
            let mut action = Action::new(
                Kind::Provision,
                ResourceType::Instance,
                name,
                format!(
                    "{file} is new, but channel `{}` has no release to run",
                    channel.name.value
                ),
            );
            action.status = Status::Blocked;
            action.blocked_reason = Some(BlockedReason::NoUpgradePath);
            actions.push(action);
            return output;
        };
        let mut action = Action::new(
            Kind::Provision,
            ResourceType::Instance,
            name,
            format!(
                "{file} is new: provision {} at {version} in {}",
                instance.kind, instance.region.value
            ),
        );
        action.to = Some(version);
        action.changes = diff(None, Some(&fields::instance_config(instance)));
        actions.push(action);
        if state == RunState::Suspended {
            actions.push(Action::new(
                Kind::Suspend,
                ResourceType::Instance,
                name,
                suspend_reason(fleet, instance, file),
            ));
        }
        return output;
    };
    if state == RunState::Terminated {
        actions.push(Action::new(
            Kind::Terminate,
            ResourceType::Instance,
            name,
            format!(
                "state = \"terminated\" in {file}: a final backup is taken to {} (its UTC start time) first, then its containers, network, volume, database and role are removed",
                backup_path(fleet, instance, backups::Purpose::Final)
            ),
        ));
        return output;
    }
    match (deployed.state, state) {
        (RunState::Active, RunState::Suspended) => {
            actions.push(Action::new(
                Kind::Suspend,
                ResourceType::Instance,
                name,
                suspend_reason(fleet, instance, file),
            ));
        }
        (RunState::Suspended, RunState::Active) => actions.push(Action::new(
            Kind::Resume,
            ResourceType::Instance,
            name,
            format!("{file}, its partner and its tenant are active again"),
        )),
        _ => {}
    }
    let changes = diff(
        Some(&deployed.config),
        Some(&fields::instance_config(instance)),
    );
    let unchanged = changes.is_empty() && deployed.resources == resources;
    if deployed.state == RunState::Active && state == RunState::Active && unchanged {
        actions.extend(repair(name, drift));
    }
    if !changes.is_empty() {
        let mut action = Action::new(
            Kind::Configure,
            ResourceType::Instance,
            name,
            format!("configuration changed in {file}"),
        );
        action.changes = changes;
        actions.push(action);
    }
    if deployed.resources != resources {
        let mut action = Action::new(
            Kind::Scale,
            ResourceType::Instance,
            name,
            format!("resources changed in {file}"),
        );
        action.changes = resource_changes(&deployed.resources, &resources);
        actions.push(action);
    }
    if state != RunState::Active {
        // A suspended instance is upgraded when it resumes.
        return output;
    }
    let input = policy::Input {
        instance,
        channel,
        releases: &fleet.releases,
        actual: Some(&deployed.version),
    };
    for decision in memo.decide(&input).iter().cloned() {
        let advisory = decision.advisory;
        let kind = if decision.is_downgrade() {
            Kind::Downgrade
        } else {
            Kind::Upgrade
        };
        let reason = if advisory {
            decision.reason
        } else if kind == Kind::Downgrade {
            format!(
                "{file}: {} (the newest {}; without one the downgrade fails and changes nothing; the database as it was is kept first, in {})",
                decision.reason,
                backup_path(fleet, instance, backups::Purpose::Before(&decision.from)),
                backup_path(
                    fleet,
                    instance,
                    backups::Purpose::BeforeDowngradeTo(&decision.to)
                ),
            )
        } else {
            format!("{file}: {}", decision.reason)
        };
        let mut action = Action::new(kind, ResourceType::Instance, name, reason);
        action.status = decision.status;
        action.not_before = decision.not_before;
        action.blocked_reason = decision.blocked_reason;
        action.changes = vec![Change {
            field: "version".to_string(),
            before: Some(decision.from.to_string()),
            after: Some(decision.to.to_string()),
        }];
        action.breaking = kind == Kind::Upgrade && decision.breaking;
        action.from = Some(decision.from);
        action.to = Some(decision.to);
        output.decisions.push((advisory, action));
    }
    output
}

/// The repair of an instance that runs as applied no longer: its network and volume made
/// again where missing and its containers recreated as applied. A drift that making parts
/// again cannot mend (a lost database) blocks it until an operator restores a backup.
fn repair(name: &str, drift: &[Drift]) -> Option<Action> {
    if drift.is_empty() {
        return None;
    }
    let found: Vec<&str> = drift.iter().map(|drift| drift.what.as_str()).collect();
    let mut action = Action::new(
        Kind::Repair,
        ResourceType::Instance,
        name,
        format!(
            "drift observed: {}; its network and volume are made again where missing and its containers recreated as applied",
            found.join(", ")
        ),
    );
    action.changes = drift
        .iter()
        .map(|drift| Change {
            field: "drift".to_string(),
            before: Some(drift.what.clone()),
            after: None,
        })
        .collect();
    if drift.iter().any(|drift| !drift.repairable) {
        action.status = Status::Blocked;
        action.blocked_reason = Some(BlockedReason::DataMissing);
        action.reason = format!(
            "drift observed: {}; making parts again would hide lost data: restore a backup (a restore job) first",
            found.join(", ")
        );
    }
    Some(action)
}

/// Where the backup of `instance` for `purpose` will be: its folder and the pattern of its
/// file name, as the driver writes it.
fn backup_path(fleet: &Fleet, instance: &Instance, purpose: backups::Purpose<'_>) -> String {
    let region = &fleet.settings.regions[&instance.region.value];
    let folder = backups::folder(Path::new(&region.backups), &instance.name.value);
    format!("{}/{}", folder.display(), backups::pattern(purpose))
}

fn suspend_reason(fleet: &Fleet, instance: &Instance, file: &str) -> String {
    if instance.state == crate::model::InstanceState::Suspended {
        return format!("state = \"suspended\" in {file}: containers stop, data is kept");
    }
    let partner_suspended = fleet
        .partners
        .get(&instance.partner.value)
        .is_some_and(|partner| partner.state == crate::model::Standing::Suspended);
    if partner_suspended {
        format!(
            "partner `{}` is suspended: its instances stop, data is kept",
            instance.partner.value
        )
    } else {
        let tenant = instance
            .tenant
            .as_ref()
            .map_or("", |tenant| tenant.value.as_str());
        format!("tenant `{tenant}` is suspended: its instances stop, data is kept")
    }
}

fn resource_changes(
    before: &crate::model::Resources,
    after: &crate::model::Resources,
) -> Vec<Change> {
    [
        ("cpu", before.cpu.to_string(), after.cpu.to_string()),
        (
            "memory",
            before.memory.to_string(),
            after.memory.to_string(),
        ),
        (
            "storage",
            before.storage.to_string(),
            after.storage.to_string(),
        ),
    ]
    .into_iter()
    .filter(|(_, before, after)| before != after)
    .map(|(field, before, after)| Change {
        field: format!("resources.{field}"),
        before: Some(before),
        after: Some(after),
    })
    .collect()
}

#[cfg(test)]
mod tests;
