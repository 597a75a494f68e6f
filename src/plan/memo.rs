//! What planning produced, kept between plans of one fleet so that what did not change is
//! not planned again.
//!
//! A daemon plans its whole fleet at every pass, and a commit usually changes one file of
//! thousands. An instance's actions are a function of its own inputs (its decoded file and
//! the file's path, the standing of its partner and tenant, what is deployed and what drifted)
//! and of the fleet-wide parts every instance reads (the settings, the channels and the
//! release catalogue), and of the time only through maintenance windows. [`Memo`] keeps each
//! instance's inputs beside its actions; [`super::compute_with`] plans an instance again
//! only when one of them differs. Inputs are compared by address first (an unchanged
//! instance is the very value the decode cache kept, and its record the very value the
//! daemon read, while the store's state stays the same) and by value after; an instance
//! found equal at another address is kept at the new one, so the next plan compares
//! addresses again. What a window decides (a version change that is not blocked, on a
//! channel with a window) is never kept.
//! When the fleet-wide parts change, everything is planned again.
//!
//! So a plan through a memo equals the plan [`super::compute`] makes, action for action;
//! the tests check it over commit after commit.

use std::{collections::BTreeMap, sync::Arc};

use semver::Version;

use crate::model::{Channel, Fleet, Instance, Partner, Release, Settings, Standing, Tenant};

use super::{Action, ActualInstance, Drift, Fields, ResourceType};

/// Plans remembered per instance, and the fleet-wide inputs they were made under; see the
/// module's documentation. Created empty with `Memo::default()`; pass it to every
/// [`super::compute_with`] of the same fleet.
#[derive(Debug, Default)]
pub struct Memo {
    shared: Option<Shared>,
    /// By name, sorted as the fleet's instances are.
    pub(super) instances: BTreeMap<String, Planned>,
    entities: Option<Entities>,
    stats: Stats,
}

/// What a memo has done since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Instances planned.
    pub planned: u64,
    /// Instances whose remembered plan was used instead.
    pub reused: u64,
}

/// What every instance's plan reads of the fleet besides its owners.
#[derive(Debug, PartialEq)]
struct Shared {
    settings: Settings,
    channels: BTreeMap<String, Channel>,
    releases: BTreeMap<Version, Release>,
}

/// The partners, tenants, channels and releases, and their fields as `plan::fields` gives
/// them.
#[derive(Debug)]
struct Entities {
    partners: BTreeMap<String, Partner>,
    tenants: BTreeMap<String, Tenant>,
    channels: BTreeMap<String, Channel>,
    releases: BTreeMap<Version, Release>,
    fields: Arc<BTreeMap<(ResourceType, String), Fields>>,
}

/// Everything one instance's plan depends on, besides the fleet-wide parts.
#[derive(Clone, Copy, Debug)]
pub(super) struct Inputs<'a> {
    pub instance: &'a Arc<Instance>,
    pub file: &'a str,
    /// The standing of its partner and of its tenant.
    pub owners: (Option<Standing>, Option<Standing>),
    pub deployed: Option<&'a Arc<ActualInstance>>,
    pub drift: &'a [Drift],
}

/// One instance's part of a plan: its lifecycle, configuration and scaling actions, and its
/// version changes, each marked true when it is an advisory.
#[derive(Clone, Debug, Default)]
pub(super) struct Output {
    pub actions: Vec<Action>,
    pub decisions: Vec<(bool, Action)>,
}

/// An instance's inputs and the plan made from them.
#[derive(Debug)]
pub(super) struct Planned {
    instance: Arc<Instance>,
    file: String,
    owners: (Option<Standing>, Option<Standing>),
    deployed: Option<Arc<ActualInstance>>,
    drift: Vec<Drift>,
    pub output: Output,
}

impl Inputs<'_> {
    /// The standing of `instance`'s partner and tenant in `fleet`.
    pub fn owners(fleet: &Fleet, instance: &Instance) -> (Option<Standing>, Option<Standing>) {
        let partner = fleet
            .partners
            .get(&instance.partner.value)
            .map(|partner| partner.state);
        let tenant = instance
            .tenant
            .as_ref()
            .and_then(|tenant| fleet.tenants.get(&tenant.value))
            .map(|tenant| tenant.state);
        (partner, tenant)
    }

    /// The inputs and their plan, to keep.
    pub fn keep(&self, output: Output) -> Planned {
        Planned {
            instance: Arc::clone(self.instance),
            file: self.file.to_string(),
            owners: self.owners,
            deployed: self.deployed.map(Arc::clone),
            drift: self.drift.to_vec(),
            output,
        }
    }
}

impl Planned {
    /// Whether it was planned from exactly `inputs`: `None` if not, else whether the
    /// instance and its record are the very values it keeps (when not, the memo takes the
    /// new ones, so the next comparison ends at their addresses).
    pub fn made_from(&self, inputs: &Inputs<'_>) -> Option<bool> {
        let instance_here = Arc::ptr_eq(&self.instance, inputs.instance);
        let deployed_here = match (&self.deployed, inputs.deployed) {
            (Some(kept), Some(deployed)) => Arc::ptr_eq(kept, deployed),
            (kept, deployed) => kept.is_none() && deployed.is_none(),
        };
        let same = (instance_here || self.instance == *inputs.instance)
            && self.file == inputs.file
            && self.owners == inputs.owners
            && (deployed_here || self.deployed.as_deref() == inputs.deployed.map(|d| &**d))
            && self.drift == inputs.drift;
        same.then_some(instance_here && deployed_here)
    }
}

/// What [`Memo::record`] is told of one instance planned.
pub(super) enum Fresh {
    /// Keep this plan.
    Keep(String, Planned),
    /// Planned, but not to keep (it depends on the time): forget what was kept.
    Forget(String),
    /// Found as kept, from equal values at other addresses: keep these.
    Moved(String, Arc<Instance>, Option<Arc<ActualInstance>>),
}

impl Memo {
    /// What the memo has done since it was created.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Starts a plan of `fleet`: forgets every instance's plan if the fleet-wide parts
    /// changed.
    pub(super) fn begin(&mut self, fleet: &Fleet) {
        let same = self.shared.as_ref().is_some_and(|shared| {
            shared.settings == fleet.settings
                && shared.channels == fleet.channels
                && shared.releases == fleet.releases
        });
        if !same {
            self.instances.clear();
            self.shared = Some(Shared {
                settings: fleet.settings.clone(),
                channels: fleet.channels.clone(),
                releases: fleet.releases.clone(),
            });
        }
    }

    /// The fields of `fleet`'s partners, tenants, channels and releases (`plan::fields`),
    /// made again only when one of them changed.
    pub fn entities(&mut self, fleet: &Fleet) -> Arc<BTreeMap<(ResourceType, String), Fields>> {
        if let Some(entities) = &self.entities
            && entities.partners == fleet.partners
            && entities.tenants == fleet.tenants
            && entities.channels == fleet.channels
            && entities.releases == fleet.releases
        {
            return Arc::clone(&entities.fields);
        }
        let fields = Arc::new(super::fields::entities(fleet));
        self.entities = Some(Entities {
            partners: fleet.partners.clone(),
            tenants: fleet.tenants.clone(),
            channels: fleet.channels.clone(),
            releases: fleet.releases.clone(),
            fields: Arc::clone(&fields),
        });
        fields
    }

    /// Ends a plan of `fleet`: keeps what was planned afresh, counts, and forgets the
    /// instances the fleet no longer has.
    pub(super) fn record(&mut self, fleet: &Fleet, fresh: Vec<Fresh>, reused: usize) {
        let moved = fresh
            .iter()
            .filter(|fresh| matches!(fresh, Fresh::Moved(..)))
            .count();
        self.stats.planned += (fresh.len() - moved) as u64;
        self.stats.reused += reused as u64;
        for fresh in fresh {
            match fresh {
                Fresh::Keep(name, planned) => {
                    self.instances.insert(name, planned);
                }
                Fresh::Forget(name) => {
                    self.instances.remove(&name);
                }
                Fresh::Moved(name, instance, deployed) => {
                    if let Some(planned) = self.instances.get_mut(&name) {
                        planned.instance = instance;
                        planned.deployed = deployed;
                    }
                }
            }
        }
        if self.instances.len() > fleet.instances.len() {
            self.instances
                .retain(|name, _| fleet.instances.contains_key(name));
        }
    }
}
