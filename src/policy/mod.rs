//! Update channels: which version an instance should run, and when.
//!
//! [`decide`] is a pure function of the instance, its channel, the release catalogue, the
//! version it runs and the time: it returns the version changes the channel calls for, each
//! ready, deferred to the next maintenance window, or blocked with a reason. [`converged`]
//! is the version an instance ends up at once everything its channel allows has been done,
//! which is what `plan --base` takes as the actual state. Nothing here reads a clock.

pub mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use semver::Version;

use crate::model::{Channel, ChannelMode, Instance, Release, ReleaseStatus, Severity, Track};

use window::WindowState;

/// Whether a change runs now, later, or not without something else happening first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Ready,
    Deferred,
    Blocked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ready => "ready",
            Status::Deferred => "deferred",
            Status::Blocked => "blocked",
        }
    }
}

/// What a blocked change waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockedReason {
    /// A release the channel does not apply by itself: a commit must approve it.
    NeedsApproval,
    /// The channel is frozen.
    Frozen,
    /// No chain of `upgrade_from` requirements leads to the version.
    NoUpgradePath,
    /// The version is older than the running one and `allow_downgrade` is off.
    DowngradeNotAllowed,
    /// An instance lost data that only a restore brings back (the plan's repairs).
    DataMissing,
}

impl BlockedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockedReason::NeedsApproval => "needs-approval",
            BlockedReason::Frozen => "frozen",
            BlockedReason::NoUpgradePath => "no-upgrade-path",
            BlockedReason::DowngradeNotAllowed => "downgrade-not-allowed",
            BlockedReason::DataMissing => "data-missing",
        }
    }
}

/// One change of version the channel calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub from: Version,
    pub to: Version,
    /// The releases applied in turn, ending with `to`; empty for a downgrade.
    pub path: Vec<Version>,
    pub status: Status,
    /// For deferred changes: when the maintenance window next opens.
    pub not_before: Option<DateTime<Utc>>,
    pub blocked_reason: Option<BlockedReason>,
    /// Why, in words: the policy, the releases and what approves them.
    pub reason: String,
    /// True when nothing asks for this change and the channel will not make it by itself:
    /// a newer release is available and the decision says what would approve it. Plans list
    /// these apart from their actions.
    pub advisory: bool,
    /// True when a release on the path is a breaking step from the one before it, as the
    /// policy judges steps when it asks for approval (a `breaking` release or a major bump).
    pub breaking: bool,
}

impl Decision {
    pub fn is_downgrade(&self) -> bool {
        self.to < self.from
    }

    /// A change that runs in the channel's maintenance window (at once without one).
    fn in_window(from: &Version, path: &[Version], to: &Version, reason: String) -> Decision {
        Decision {
            from: from.clone(),
            to: to.clone(),
            path: path.to_vec(),
            status: Status::Deferred,
            not_before: None,
            blocked_reason: None,
            reason,
            advisory: false,
            breaking: false,
        }
    }

    /// A change that cannot run until `blocked_reason` is resolved.
    fn blocked(
        from: &Version,
        path: &[Version],
        to: &Version,
        blocked_reason: BlockedReason,
        reason: String,
    ) -> Decision {
        Decision {
            status: Status::Blocked,
            blocked_reason: Some(blocked_reason),
            ..Decision::in_window(from, path, to, reason)
        }
    }

    /// Marks a blocked decision as an advisory: nothing asked for it.
    fn advisory(self) -> Decision {
        Decision {
            advisory: true,
            ..self
        }
    }
}

/// What the policy looks at.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub instance: &'a Instance,
    pub channel: &'a Channel,
    pub releases: &'a BTreeMap<Version, Release>,
    /// The version the instance runs, if it runs at all.
    pub actual: Option<&'a Version>,
}

/// The version changes `input`'s channel calls for at `now`; empty when the instance runs
/// what it should.
pub fn decide(input: &Input<'_>, now: DateTime<Utc>) -> Vec<Decision> {
    decide_with(input, Some(now))
}

/// The version an instance runs once everything its channel allows has been done,
/// maintenance windows aside: what `plan --base` takes the base commit to have deployed.
/// `None` when the instance names no version and its track has no release.
pub fn converged(input: &Input<'_>) -> Option<Version> {
    Memo::converging().converged(input)
}

/// Remembers decisions per distinct input. A fleet has thousands of instances but few
/// distinct combinations of channel, running version and approvals, and deciding searches
/// the release catalogue. Valid for one fleet and one time.
#[derive(Debug)]
pub struct Memo {
    /// `None` when windows are ignored, as for [`converged`].
    now: Option<DateTime<Utc>>,
    decisions: HashMap<MemoKey, Vec<Decision>>,
}

/// Everything of an [`Input`] a decision depends on, the release catalogue aside.
type MemoKey = (
    String,
    Option<Version>,
    Option<Version>,
    Option<Version>,
    bool,
);

impl Memo {
    /// A memo of [`decide`] at `now`.
    pub fn at(now: DateTime<Utc>) -> Memo {
        Memo {
            now: Some(now),
            decisions: HashMap::new(),
        }
    }

    /// A memo of [`converged`].
    pub fn converging() -> Memo {
        Memo {
            now: None,
            decisions: HashMap::new(),
        }
    }

    /// [`decide`] (or, for a converging memo, the decisions [`converged`] applies).
    pub fn decide(&mut self, input: &Input<'_>) -> &[Decision] {
        let version = |field: &Option<crate::diag::Spanned<Version>>| {
            field.as_ref().map(|version| version.value.clone())
        };
        let key = (
            input.channel.name.value.clone(),
            input.actual.cloned(),
            version(&input.instance.version),
            version(&input.instance.approved_version),
            input.instance.allow_downgrade,
        );
        let now = self.now;
        self.decisions
            .entry(key)
            .or_insert_with(|| decide_with(input, now))
    }

    /// [`converged`], remembered.
    pub fn converged(&mut self, input: &Input<'_>) -> Option<Version> {
        let start = input.actual.cloned().or_else(|| initial_version(input))?;
        let input = Input {
            actual: Some(&start),
            ..*input
        };
        let applied = self
            .decide(&input)
            .iter()
            .find(|decision| decision.status != Status::Blocked)
            .map(|decision| decision.to.clone());
        Some(applied.unwrap_or(start))
    }
}

/// The version a new instance is provisioned at: its `version`, or for an auto-update
/// instance without one, the newest release of its track.
pub fn initial_version(input: &Input<'_>) -> Option<Version> {
    if let Some(version) = &input.instance.version {
        return Some(version.value.clone());
    }
    input
        .releases
        .values()
        .rev()
        .find(|release| on_track(release, input.channel.track))
        .map(|release| release.version.value.clone())
}

/// `now` is `None` when windows are to be ignored (every change is ready).
fn decide_with(input: &Input<'_>, now: Option<DateTime<Utc>>) -> Vec<Decision> {
    let Some(current) = input.actual.cloned().or_else(|| initial_version(input)) else {
        return Vec::new();
    };
    let mut decisions = match input.channel.mode {
        ChannelMode::AutoUpdate => auto_update(input, &current),
        ChannelMode::ManualApproval => manual_approval(input, &current),
        ChannelMode::Frozen => frozen(input, &current),
    };
    for decision in &mut decisions {
        if decision.status == Status::Deferred {
            schedule(decision, input.channel, now);
        }
        decision.breaking = breaking(input.releases, &decision.from, &decision.path);
    }
    decisions
}

/// Whether a hop of `path`, taken from `from`, is a breaking step.
fn breaking(releases: &BTreeMap<Version, Release>, from: &Version, path: &[Version]) -> bool {
    let mut at = from;
    for version in path {
        if releases
            .get(version)
            .is_some_and(|release| step(at, release) == Step::Breaking)
        {
            return true;
        }
        at = version;
    }
    false
}

/// Turns a change that waits for the window into ready when the window is open (or there
/// is none, or windows are ignored), and sets `not_before` otherwise.
fn schedule(decision: &mut Decision, channel: &Channel, now: Option<DateTime<Utc>>) {
    let (Some(window), Some(now)) = (&channel.maintenance_window, now) else {
        decision.status = Status::Ready;
        return;
    };
    match window::state(window, now) {
        WindowState::Open { .. } => decision.status = Status::Ready,
        WindowState::Closed { opens } => decision.not_before = Some(opens),
    }
}

/// How big a step a release is from the version before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Patch,
    Minor,
    Breaking,
}

fn step(from: &Version, release: &Release) -> Step {
    let to = &release.version.value;
    let major_bump = if from.major == 0 {
        to.major > 0 || to.minor > from.minor
    } else {
        to.major > from.major
    };
    if release.breaking || major_bump {
        Step::Breaking
    } else if to.major != from.major || to.minor != from.minor {
        Step::Minor
    } else {
        Step::Patch
    }
}

/// Whether a release is one a track follows.
fn on_track(release: &Release, track: Track) -> bool {
    matches!(
        (release.status, track),
        (ReleaseStatus::Stable, _) | (ReleaseStatus::Beta, Track::Beta)
    )
}

/// Whether `release` may be upgraded to from `from`.
fn accepts(release: &Release, from: &Version) -> bool {
    release.version.value > *from
        && release
            .upgrade_from
            .as_ref()
            .is_none_or(|requirement| requirement.value.matches(from))
}

/// Releases reachable from `current` through hops `allowed` accepts, with the shortest path
/// (in hops) to each, ending at the release.
fn reachable(
    releases: &BTreeMap<Version, Release>,
    current: &Version,
    allowed: impl Fn(&Version, &Release) -> bool,
) -> BTreeMap<Version, Vec<Version>> {
    let mut paths: BTreeMap<Version, Vec<Version>> = BTreeMap::new();
    let mut queue = VecDeque::from([(current.clone(), Vec::new())]);
    let mut seen = BTreeSet::from([current.clone()]);
    while let Some((from, path)) = queue.pop_front() {
        for release in releases.values() {
            let to = &release.version.value;
            if seen.contains(to) || !accepts(release, &from) || !allowed(&from, release) {
                continue;
            }
            let mut next = path.clone();
            next.push(to.clone());
            seen.insert(to.clone());
            paths.insert(to.clone(), next.clone());
            queue.push_back((to.clone(), next));
        }
    }
    paths
}

fn describe_path(path: &[Version]) -> String {
    path.iter()
        .map(Version::to_string)
        .collect::<Vec<_>>()
        .join(" -> ")
}

fn auto_update(input: &Input<'_>, current: &Version) -> Vec<Decision> {
    let channel = input.channel;
    let instance = input.instance;
    let approved = |version: &Version| {
        let by_instance = |field: &Option<crate::diag::Spanned<Version>>| {
            field
                .as_ref()
                .is_some_and(|approved| version <= &approved.value)
        };
        by_instance(&instance.approved_version) || by_instance(&instance.version)
    };
    let on_track = |release: &Release| on_track(release, channel.track);
    let auto = &channel.auto_approve;
    let allowed = |from: &Version, release: &Release| {
        if !on_track(release) {
            return false;
        }
        let to = &release.version.value;
        match step(from, release) {
            Step::Breaking => approved(to),
            _ if release.security_patch && auto.security_patches => true,
            Step::Minor => auto.minor || approved(to),
            Step::Patch => auto.patch || approved(to),
        }
    };
    let allowed_paths = reachable(input.releases, current, allowed);
    let mut decisions = Vec::new();
    let best = allowed_paths.last_key_value();
    if let Some((target, path)) = best {
        let releases: Vec<&Release> = path.iter().filter_map(|v| input.releases.get(v)).collect();
        let security = releases.iter().any(|release| release.security_patch);
        let urgent = security && auto.security_patches;
        let mut reason = format!(
            "auto-update channel `{}` follows the {} track: {} is the newest release reachable from {current}",
            channel.name.value, channel.track, target
        );
        if path.len() > 1 {
            reason += &format!(" (through {})", describe_path(path));
        }
        if urgent {
            reason += "; it carries a security fix, applied at once";
        }
        let mut decision = Decision::in_window(current, path, target, reason);
        if urgent {
            decision.status = Status::Ready;
        }
        decisions.push(decision);
    }
    // A newer release the channel will not apply by itself waits for an approval.
    let reached = best.map_or(current, |(target, _)| target);
    let beyond = reachable(input.releases, reached, |_, release| on_track(release));
    if let Some((newest, path)) = beyond.last_key_value()
        && newest > reached
    {
        let release = &input.releases[newest];
        let why = match step(reached, release) {
            Step::Breaking => format!(
                "{newest} is a breaking release; set `approved_version = \"{newest}\"` to approve it"
            ),
            Step::Minor => format!(
                "{newest} is a minor release and channel `{}` does not auto-approve minor releases; raise `version` to approve it",
                channel.name.value
            ),
            Step::Patch => format!(
                "{newest} is a patch release and channel `{}` does not auto-approve patches; raise `version` to approve it",
                channel.name.value
            ),
        };
        decisions.push(
            Decision::blocked(reached, path, newest, BlockedReason::NeedsApproval, why).advisory(),
        );
    }
    decisions
}

/// Any release that is not a draft can be asked for by name.
fn installable(release: &Release) -> bool {
    release.status != ReleaseStatus::Draft
}

/// A change to the version named in the instance file, which a merge approved.
fn named_version(input: &Input<'_>, current: &Version, desired: &Version) -> Option<Decision> {
    let instance = input.instance;
    let mode = input.channel.mode;
    if desired == current {
        return None;
    }
    if desired < current {
        let risk = format!(
            "a downgrade restores the backup taken before the upgrade to {current}: data written since is lost"
        );
        return Some(if instance.allow_downgrade {
            let reason = format!("`version` lowered to {desired} ({mode}); {risk}");
            Decision::in_window(current, &[], desired, reason)
        } else {
            let reason =
                format!("`version` lowered to {desired}, but `allow_downgrade` is off; {risk}");
            Decision::blocked(
                current,
                &[],
                desired,
                BlockedReason::DowngradeNotAllowed,
                reason,
            )
        });
    }
    let paths = reachable(input.releases, current, |_, release| installable(release));
    let Some(path) = paths.get(desired) else {
        let reason =
            format!("no chain of `upgrade_from` requirements leads from {current} to {desired}");
        return Some(Decision::blocked(
            current,
            &[],
            desired,
            BlockedReason::NoUpgradePath,
            reason,
        ));
    };
    let mut reason = format!("`version` changed to {desired} ({mode}: the merge approves it)");
    if path.len() > 1 {
        reason += &format!(", through {}", describe_path(path));
    }
    Some(Decision::in_window(current, path, desired, reason))
}

fn manual_approval(input: &Input<'_>, current: &Version) -> Vec<Decision> {
    let desired = input
        .instance
        .version
        .as_ref()
        .map_or(current, |version| &version.value);
    if let Some(decision) = named_version(input, current, desired) {
        return vec![decision];
    }
    // Security releases beyond the approved version are flagged for review.
    let paths = reachable(input.releases, current, |_, release| {
        release.status == ReleaseStatus::Stable
    });
    let security = paths
        .iter()
        .rev()
        .find(|(version, _)| input.releases[*version].security_patch);
    security
        .map(|(version, path)| {
            let severity = input.releases[version].severity;
            let reason = format!(
                "security release {version} ({severity}) is available; manual-approval channel `{}` needs a reviewed change of `version`",
                input.channel.name.value
            );
            Decision::blocked(current, path, version, BlockedReason::NeedsApproval, reason).advisory()
        })
        .into_iter()
        .collect()
}

fn frozen(input: &Input<'_>, current: &Version) -> Vec<Decision> {
    let pinned = input
        .instance
        .version
        .as_ref()
        .map_or(current, |version| &version.value);
    // A critical patch applied on top of the pin is where a frozen instance belongs.
    let patched_pin = current > pinned
        && current.major == pinned.major
        && current.minor == pinned.minor
        && input.releases.get(current).is_some_and(|release| {
            release.security_patch && release.severity == Severity::Critical
        });
    if !patched_pin && let Some(decision) = named_version(input, current, pinned) {
        return vec![decision];
    }
    let critical = |release: &Release| {
        release.security_patch
            && release.severity == Severity::Critical
            && release.version.value.major == current.major
            && release.version.value.minor == current.minor
            && installable(release)
    };
    let paths = reachable(input.releases, current, |_, release| critical(release));
    let Some((version, path)) = paths.last_key_value() else {
        return Vec::new();
    };
    let channel = input.channel;
    let decision = if channel.security.override_frozen {
        let reason = format!(
            "critical security release {version}: frozen channel `{}` allows critical patches of {}.{} (security.override_frozen)",
            channel.name.value, current.major, current.minor
        );
        Decision {
            status: Status::Ready,
            ..Decision::in_window(current, path, version, reason)
        }
    } else {
        let reason = format!(
            "critical security release {version} is available, but channel `{}` is frozen and does not set security.override_frozen",
            channel.name.value
        );
        Decision::blocked(current, path, version, BlockedReason::Frozen, reason).advisory()
    };
    vec![decision]
}

#[cfg(test)]
mod tests;
