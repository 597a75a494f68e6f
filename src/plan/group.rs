//! How a reviewer reads a plan: the riskiest changes first, and alike changes together.
//!
//! Every action falls in one [`Risk`] class, in the order a reviewer must not miss them:
//! terminations, downgrades, breaking upgrades (as the policy judges a step breaking when it
//! asks for approval), other upgrades, suspensions, orphaned instances, anything else that is
//! blocked, provisioning, configuration, scaling, and changes to partners, tenants, channels
//! and releases. Within a class, actions of one kind on one type of resource with the same
//! changes (the same fields, before and after; the same versions for an upgrade) form one
//! [`Group`], whatever their statuses, which the group keeps.

use std::collections::HashMap;

use semver::Version;

use crate::{
    plan::{Action, Change, Kind, ResourceType},
    policy::Status,
};

/// How much a reviewer must look at a change, most first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Risk {
    Terminate,
    Downgrade,
    BreakingUpgrade,
    Upgrade,
    Suspend,
    Orphaned,
    Blocked,
    Provision,
    Configure,
    Scale,
    Entity,
}

impl Risk {
    /// Every class, most risky first.
    pub const ALL: &[Risk] = &[
        Risk::Terminate,
        Risk::Downgrade,
        Risk::BreakingUpgrade,
        Risk::Upgrade,
        Risk::Suspend,
        Risk::Orphaned,
        Risk::Blocked,
        Risk::Provision,
        Risk::Configure,
        Risk::Scale,
        Risk::Entity,
    ];

    /// The class of `action`.
    pub fn of(action: &Action) -> Risk {
        if action.resource_type != ResourceType::Instance {
            return Risk::Entity;
        }
        match action.kind {
            Kind::Terminate => Risk::Terminate,
            Kind::Downgrade => Risk::Downgrade,
            Kind::Upgrade if action.breaking => Risk::BreakingUpgrade,
            Kind::Upgrade => Risk::Upgrade,
            Kind::Suspend | Kind::Resume => Risk::Suspend,
            Kind::Orphaned => Risk::Orphaned,
            _ if action.status == Status::Blocked => Risk::Blocked,
            Kind::Provision => Risk::Provision,
            Kind::Scale => Risk::Scale,
            Kind::Configure | Kind::Repair | Kind::Create | Kind::Update | Kind::Delete => {
                Risk::Configure
            }
        }
    }

    /// Whether a reviewer reads the names of the class's instances without unfolding them:
    /// terminations, downgrades and breaking upgrades.
    pub fn names_open(self) -> bool {
        matches!(
            self,
            Risk::Terminate | Risk::Downgrade | Risk::BreakingUpgrade
        )
    }

    /// The heading of the class.
    pub fn title(self) -> &'static str {
        match self {
            Risk::Terminate => "Terminations",
            Risk::Downgrade => "Downgrades",
            Risk::BreakingUpgrade => "Breaking upgrades",
            Risk::Upgrade => "Upgrades",
            Risk::Suspend => "Suspensions and resumptions",
            Risk::Orphaned => "Orphaned instances",
            Risk::Blocked => "Blocked",
            Risk::Provision => "Provisioning",
            Risk::Configure => "Configuration and repairs",
            Risk::Scale => "Scaling",
            Risk::Entity => "Partners, tenants, channels and releases",
        }
    }
}

/// Alike actions: one kind, one type of resource, the same changes.
#[derive(Clone, Debug)]
pub struct Group<'a> {
    pub risk: Risk,
    /// In plan order; never empty.
    pub actions: Vec<&'a Action>,
}

impl<'a> Group<'a> {
    pub fn first(&self) -> &'a Action {
        self.actions[0]
    }

    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Its actions by what their status says (ready, deferred until a time, blocked for a
    /// reason), in the order the statuses first appear.
    pub fn by_status(&self) -> Vec<(String, Vec<&'a Action>)> {
        let mut statuses: Vec<(String, Vec<&'a Action>)> = Vec::new();
        for action in &self.actions {
            let status = status_text(action);
            match statuses.iter_mut().find(|(text, _)| *text == status) {
                Some((_, actions)) => actions.push(action),
                None => statuses.push((status, vec![action])),
            }
        }
        statuses
    }

    /// "ready" when every action has the same status, else "900 ready, 63 deferred until …".
    pub fn status_summary(&self) -> String {
        let statuses = self.by_status();
        if let [(status, _)] = statuses.as_slice() {
            return status.clone();
        }
        statuses
            .iter()
            .map(|(status, actions)| format!("{} {status}", actions.len()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The reason every action of the group gives, when they all give the same.
    pub fn common_reason(&self) -> Option<&'a str> {
        let reason = self.first().reason.as_str();
        self.actions
            .iter()
            .all(|action| action.reason == reason)
            .then_some(reason)
    }
}

/// What makes actions alike.
type Key<'a> = (
    Risk,
    Kind,
    ResourceType,
    Option<&'a Version>,
    Option<&'a Version>,
    &'a [Change],
);

/// The groups of `actions`, most risky first, then in the order their first action comes.
pub fn groups(actions: &[Action]) -> Vec<Group<'_>> {
    let mut index: HashMap<Key<'_>, usize> = HashMap::new();
    let mut groups: Vec<Group<'_>> = Vec::new();
    for action in actions {
        let risk = Risk::of(action);
        let key = (
            risk,
            action.kind,
            action.resource_type,
            action.from.as_ref(),
            action.to.as_ref(),
            action.changes.as_slice(),
        );
        match index.get(&key) {
            Some(&at) => groups[at].actions.push(action),
            None => {
                index.insert(key, groups.len());
                groups.push(Group {
                    risk,
                    actions: vec![action],
                });
            }
        }
    }
    // Stable: within a class, groups keep the order of their first action.
    groups.sort_by_key(|group| group.risk);
    groups
}

/// "ready", "deferred until 2026-01-10T01:00:00Z", "blocked: needs-approval".
pub fn status_text(action: &Action) -> String {
    match (action.status, action.not_before, action.blocked_reason) {
        (Status::Deferred, Some(not_before), _) => format!(
            "deferred until {}",
            not_before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        (Status::Blocked, _, Some(reason)) => format!("blocked: {}", reason.as_str()),
        (status, _, _) => status.as_str().to_string(),
    }
}
