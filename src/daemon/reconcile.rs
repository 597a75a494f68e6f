//! One reconcile pass: the desired fleet against what the store records and what the
//! engines show, and the jobs that close the difference.
//!
//! The pass is level-triggered and idempotent: it is not told why it runs, reads the state
//! afresh, plans with `plan::compute_with` (which plans what `plan::compute`, the function
//! `wakafleet plan` uses, plans, so what the daemon does is what a plan shows; it only plans
//! again just the instances whose inputs changed), and acts on the plan's ready actions
//! only:
//! - partners, tenants, channels and releases are recorded at once (audited first, under a
//!   key, so a pass cut off between the two records the change once);
//! - each instance gets at most one job at a time, for its first ready action in plan order
//!   (provision, resume, repair, configure, scale, upgrade or downgrade, suspend, terminate);
//!   its next action is planned when that job has ended;
//! - an action whose last job for the very same work ended dead, failed or cancelled is not
//!   enqueued again: the instance waits for an operator (`wakafleet jobs retry`) or for a
//!   commit that asks for something else, and says so;
//! - deferred actions wait for their window: the pass returns when to run again.
//!
//! Observation (with drivers) compares every running instance that has no job with what was
//! applied to it; what drifted becomes a repair action in the plan, with an audit record of
//! the drift, and the instance's health is recorded.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};

use crate::{
    diag::SourceMap,
    driver::{self, Driver, template},
    jobs::{self, Payload, WireTarget},
    model::{Fleet, Instance},
    plan::{self, Action, Actual, ActualInstance, Kind, Plan, RunState, fields, snapshot},
    policy::Status,
    queue::{Message, Queue},
    store::{
        self, Store,
        audit::{Actor, Commit, Record},
        jobs::{Job, JobKind, JobStatus, NewJob},
    },
    validate::{self, ValidFleet},
};

/// What a pass works with.
pub struct Context {
    pub store: Arc<Store>,
    pub queue: Arc<Queue>,
    /// The drivers of the regions, by region, for observing instances; with none, nothing
    /// is observed.
    pub drivers: Arc<BTreeMap<String, Driver>>,
    /// The leader's term: the daemon's writes are refused once another process leads.
    pub epoch: i64,
    /// How many failed attempts make a job dead.
    pub max_attempts: i64,
    /// The daemon itself, in the audit log.
    pub actor: Actor,
}

/// The desired state a pass reconciles towards: a valid fleet and where it came from.
pub struct Desired {
    pub fleet: ValidFleet,
    pub sources: SourceMap,
    /// The commit or folder content it was read from: a commit's hash, or `folder:<digest>`.
    pub revision: String,
    /// The commit that approved it, carried into every job and audit record it causes; none
    /// for a folder outside git.
    pub commit: Option<Commit>,
    /// Who approved it: the commit's author, or the operator for a folder.
    pub approver: Actor,
}

/// What a pass keeps for the next: the recorded state it read, the plans of its instances,
/// and whether it was quiet.
///
/// A pass re-reads the store's state only when its generation moved. A pass may skip the
/// plan altogether and repeat the last quiet outcome (no ready work, no job, no entity
/// change, nothing drifted) when the revision and the state are the same and no deferred
/// window has opened since: the plan depends on the time only through windows, and a window
/// that closes turns nothing ready. A pass that plans plans again only the instances whose
/// inputs changed (`plan::Memo`).
#[derive(Default)]
pub struct Memo {
    actual: Option<(store::daemon_state::Generation, Actual)>,
    plan: plan::Memo,
    quiet: Option<(String, store::daemon_state::Generation, Outcome)>,
}

impl Memo {
    /// What the memo of the instances' plans has done.
    pub fn plan_stats(&self) -> plan::MemoStats {
        self.plan.stats()
    }
}

/// What a pass found and did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The plan the pass acted on, observation included.
    pub plan: Plan,
    /// The jobs it enqueued.
    pub enqueued: Vec<Job>,
    /// How many partners, tenants, channels and releases it recorded or forgot.
    pub entities: usize,
    /// The active job of each instance that has one, those just enqueued included.
    pub busy: BTreeMap<String, Job>,
    /// What each instance that waits waits for, in words.
    pub waiting: BTreeMap<String, String>,
    /// Ended jobs whose work the plan still asks for: they wait for an operator.
    pub stuck: Vec<Job>,
    /// When a deferred action's window opens next.
    pub wake_at: Option<DateTime<Utc>>,
}

impl Outcome {
    /// No job runs or waits and no ready instance action is left: the commit's ready work
    /// is done.
    pub fn converged(&self) -> bool {
        self.busy.is_empty() && self.stuck.is_empty() && self.ready_instance_actions() == 0
    }

    /// Nothing runs, and work the plan asks for waits on jobs that ended badly.
    pub fn stuck(&self) -> bool {
        self.busy.is_empty() && !self.stuck.is_empty()
    }

    fn ready_instance_actions(&self) -> usize {
        self.plan
            .actions
            .iter()
            .filter(|action| is_instance_work(action))
            .count()
    }
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the store failed")]
    Store(#[from] store::Error),
}

/// Runs one pass at `now`.
///
/// # Errors
/// When the store fails or fences the daemon off; what the pass did before stays done
/// (each write is whole), and the next pass goes on from there.
pub async fn reconcile(
    ctx: &Context,
    desired: &Desired,
    now: DateTime<Utc>,
    memo: &mut Memo,
) -> Result<Outcome, Error> {
    let fleet = desired.fleet.fleet();
    let generation = ctx.store.generation().await?;
    let mut actual = match memo.actual.take() {
        Some((read_at, actual)) if read_at == generation => actual,
        _ => ctx.store.actual().await?,
    };
    let mut busy: BTreeMap<String, Job> = ctx
        .store
        .active_jobs()
        .await?
        .into_iter()
        .map(|job| (job.instance.clone(), job))
        .collect();
    if !ctx.drivers.is_empty() {
        actual.drift = observe(ctx, fleet, &actual, &busy, now).await?;
    }
    let drifted = !actual.drift.is_empty();
    let unchanged = memo.quiet.as_ref().filter(|(revision, quiet_at, outcome)| {
        revision == &desired.revision
            && *quiet_at == generation
            && busy.is_empty()
            && !drifted
            && outcome.wake_at.is_none_or(|at| now < at)
    });
    if let Some((_, _, outcome)) = unchanged {
        let outcome = outcome.clone();
        actual.drift.clear();
        memo.actual = Some((generation, actual));
        return Ok(outcome);
    }
    let plan = plan::compute_with(
        &desired.fleet,
        &desired.sources,
        &actual,
        now,
        &mut memo.plan,
    );
    let entities = record_entities(ctx, desired, &plan, &actual, &mut memo.plan, now).await?;

    let mut outcome = Outcome {
        plan: Plan {
            at: plan.at,
            actions: Vec::new(),
            advisories: Vec::new(),
        },
        enqueued: Vec::new(),
        entities,
        busy: BTreeMap::new(),
        waiting: BTreeMap::new(),
        stuck: Vec::new(),
        wake_at: None,
    };
    for (name, actions) in by_instance(&plan.actions) {
        if let Some(job) = busy.get(name) {
            if actions.iter().any(|action| action.status == Status::Ready) {
                outcome.waiting.insert(
                    name.to_string(),
                    format!(
                        "{} waits for job {} ({}) to end",
                        actions[0].kind.as_str(),
                        job.id,
                        job.kind.as_str()
                    ),
                );
            }
            continue;
        }
        let Some(action) = actions
            .iter()
            .find(|action| action.status == Status::Ready && action.kind != Kind::Orphaned)
        else {
            if let Some(waiting) = actions.iter().find_map(|action| waiting_for(action)) {
                outcome.waiting.insert(name.to_string(), waiting);
            }
            for action in actions {
                if let Some(at) = action.not_before {
                    outcome.wake_at = Some(outcome.wake_at.map_or(at, |wake| wake.min(at)));
                }
            }
            continue;
        };
        let job = match job_for(
            fleet,
            action,
            actual.instances.get(name).map(|deployed| &**deployed),
            desired,
        ) {
            Ok(job) => job,
            Err(error) => {
                tracing::warn!(instance = %name, %error, "no job can be made for the plan's action");
                outcome.waiting.insert(
                    name.to_string(),
                    format!("{}: {error}", action.kind.as_str()),
                );
                continue;
            }
        };
        if let Some(ended) = ended_alike(&ctx.store, &job).await? {
            outcome.waiting.insert(
                name.to_string(),
                format!(
                    "{} waits for an operator: its job {} ended {}{}; `wakafleet jobs retry {}` runs it again",
                    action.kind.as_str(),
                    ended.id,
                    ended.status.as_str(),
                    ended
                        .error
                        .as_deref()
                        .map(|error| format!(" ({error})"))
                        .unwrap_or_default(),
                    ended.id
                ),
            );
            outcome.stuck.push(ended);
            continue;
        }
        if action.kind == Kind::Repair {
            audit_drift(ctx, desired, action, actual.drift.get(name), now).await?;
        }
        let enqueued = enqueue(ctx, &job, now).await?;
        busy.insert(name.to_string(), enqueued.clone());
        outcome.enqueued.push(enqueued);
    }
    outcome.busy = busy;
    outcome.plan = plan;
    let quiet = outcome.enqueued.is_empty()
        && outcome.entities == 0
        && outcome.busy.is_empty()
        && !drifted
        && outcome.ready_instance_actions() == 0;
    // A pass that wrote moved the generation: the next reads the state again.
    let after = ctx.store.generation().await?;
    memo.quiet = (quiet && after == generation)
        .then(|| (desired.revision.clone(), generation, outcome.clone()));
    if after == generation {
        // Observation's findings are this pass's; what is kept is the record.
        actual.drift.clear();
        memo.actual = Some((generation, actual));
    }
    Ok(outcome)
}

/// True for a ready action on an instance that a job carries out.
pub fn is_instance_work(action: &Action) -> bool {
    action.resource_type == plan::ResourceType::Instance
        && action.status == Status::Ready
        && action.kind != Kind::Orphaned
}

/// The plan's instance actions grouped by instance, in plan order.
fn by_instance(actions: &[Action]) -> BTreeMap<&str, Vec<&Action>> {
    let mut grouped: BTreeMap<&str, Vec<&Action>> = BTreeMap::new();
    for action in actions {
        if action.resource_type == plan::ResourceType::Instance {
            grouped.entry(action.id.as_str()).or_default().push(action);
        }
    }
    grouped
}

/// What an action that is not ready waits for, in words.
fn waiting_for(action: &Action) -> Option<String> {
    match (action.status, action.kind) {
        (_, Kind::Orphaned) => Some(format!("orphaned: {}", action.reason)),
        (Status::Deferred, kind) => Some(format!(
            "{}{} deferred until {}: {}",
            kind.as_str(),
            action
                .to
                .as_ref()
                .map(|to| format!(" to {to}"))
                .unwrap_or_default(),
            action.not_before.map_or_else(
                || "its window".to_string(),
                |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            action.reason
        )),
        (Status::Blocked, kind) => Some(format!(
            "{}{} blocked ({}): {}",
            kind.as_str(),
            action
                .to
                .as_ref()
                .map(|to| format!(" to {to}"))
                .unwrap_or_default(),
            action
                .blocked_reason
                .map_or("blocked", |reason| reason.as_str()),
            action.reason
        )),
        (Status::Ready, _) => None,
    }
}

/// The job that carries out `action` on an instance deployed as `deployed`: a target with
/// exactly what the action changes, and the record the instance gets once it is done.
///
/// # Errors
/// When the fleet cannot describe the target (a missing release, an environment template
/// that does not render), in words.
pub fn job_for(
    fleet: &Fleet,
    action: &Action,
    deployed: Option<&ActualInstance>,
    desired: &Desired,
) -> Result<NewJob, String> {
    let name = &action.id;
    let instance = fleet
        .instances
        .get(name)
        .ok_or_else(|| format!("instance `{name}` is not in the fleet"))?;
    let resources = validate::resources_of(fleet, instance)
        .ok_or_else(|| format!("instance `{name}` has neither a size nor resources"))?;
    let config = fields::instance_config(instance);
    let target = |version: &semver::Version, resources| -> Result<WireTarget, String> {
        let mut target = template::target(fleet, instance, version, template::DEFAULT)
            .map_err(|error| error.to_string())?;
        target.resources = resources;
        Ok(WireTarget::of(&target))
    };
    let deployed = || {
        deployed.cloned().ok_or_else(|| {
            format!(
                "instance `{name}` has no applied state to {}",
                action.kind.as_str()
            )
        })
    };
    let (kind, target, from, spec) = match action.kind {
        Kind::Provision => {
            let to = action
                .to
                .clone()
                .ok_or_else(|| format!("the provision of `{name}` names no version"))?;
            let spec = ActualInstance {
                version: to.clone(),
                state: RunState::Active,
                resources,
                config,
            };
            (
                JobKind::Provision,
                Some(target(&to, resources)?),
                None,
                spec,
            )
        }
        Kind::Resume | Kind::Repair => {
            let deployed = deployed()?;
            let kind = if action.kind == Kind::Resume {
                JobKind::Resume
            } else {
                JobKind::Repair
            };
            let target = target(&deployed.version, deployed.resources)?;
            let spec = ActualInstance {
                state: RunState::Active,
                ..deployed
            };
            (kind, Some(target), None, spec)
        }
        Kind::Configure => {
            let deployed = deployed()?;
            let target = target(&deployed.version, deployed.resources)?;
            (
                JobKind::Configure,
                Some(target),
                None,
                ActualInstance { config, ..deployed },
            )
        }
        Kind::Scale => {
            let deployed = deployed()?;
            let target = target(&deployed.version, resources)?;
            (
                JobKind::Scale,
                Some(target),
                None,
                ActualInstance {
                    resources,
                    ..deployed
                },
            )
        }
        Kind::Upgrade | Kind::Downgrade => {
            let deployed = deployed()?;
            let to = action
                .to
                .clone()
                .ok_or_else(|| format!("the version change of `{name}` names no version"))?;
            let kind = if action.kind == Kind::Upgrade {
                JobKind::Upgrade
            } else {
                JobKind::Downgrade
            };
            let new = target(&to, deployed.resources)?;
            let old = target(&deployed.version, deployed.resources)?;
            (
                kind,
                Some(new),
                Some(old),
                ActualInstance {
                    version: to,
                    ..deployed
                },
            )
        }
        Kind::Suspend | Kind::Terminate => {
            // A new instance that is to be suspended is provisioned first.
            let (kind, state) = if action.kind == Kind::Suspend {
                (JobKind::Suspend, RunState::Suspended)
            } else {
                (JobKind::Terminate, RunState::Terminated)
            };
            let spec = ActualInstance {
                state,
                ..deployed()?
            };
            (kind, None, None, spec)
        }
        Kind::Create | Kind::Update | Kind::Delete | Kind::Orphaned => {
            return Err(format!(
                "a {} action is not carried out by a job",
                action.kind.as_str()
            ));
        }
    };
    let security_patch = kind == JobKind::Upgrade
        && action
            .to
            .as_ref()
            .and_then(|to| fleet.releases.get(to))
            .is_some_and(|release| release.security_patch);
    let payload = Payload {
        target,
        from,
        spec: Some(snapshot::instance_of(&spec)),
        origin: desired.commit.clone(),
        ..Payload::default()
    };
    Ok(NewJob {
        id: None,
        kind,
        instance: name.clone(),
        region: instance.region.value.clone(),
        priority: jobs::priority(kind, security_patch),
        max_attempts: 0,
        payload: payload.encode(),
        commit_sha: desired.commit.as_ref().map(|commit| commit.sha.clone()),
        reason: action.reason.clone(),
        not_before: DateTime::<Utc>::MIN_UTC,
    })
}

/// The instance's newest job when it ended without success (dead, failed, cancelled) doing
/// the very work of `job`, or succeeded at it and the plan still asks for it: doing it again
/// would fail or loop the same way. A repair is the exception to the second: a drift found
/// after a repair succeeded is new drift.
async fn ended_alike(store: &Store, job: &NewJob) -> Result<Option<Job>, store::Error> {
    let filter = store::jobs::JobFilter {
        instance: Some(job.instance.clone()),
        ..store::jobs::JobFilter::default()
    };
    let Some(newest) = store.list_jobs(&filter, 1).await?.into_iter().next() else {
        return Ok(None);
    };
    let same_work = newest.kind == job.kind && work(&newest.payload) == work(&job.payload);
    let blocks = match newest.status {
        JobStatus::Dead | JobStatus::Failed | JobStatus::Cancelled => same_work,
        JobStatus::Succeeded => same_work && job.kind != JobKind::Repair,
        _ => false,
    };
    Ok(blocks.then_some(newest))
}

/// The part of a payload that says what a job does (not who asked).
fn work(
    payload: &serde_json::Value,
) -> Option<(serde_json::Value, serde_json::Value, serde_json::Value)> {
    let part = |name: &str| payload.get(name).cloned().unwrap_or_default();
    Some((part("target"), part("from"), part("spec")))
}

/// Enqueues `job` (with the context's attempts and fence) and tells the queue.
async fn enqueue(ctx: &Context, job: &NewJob, now: DateTime<Utc>) -> Result<Job, Error> {
    let job = NewJob {
        max_attempts: ctx.max_attempts.max(1),
        not_before: now,
        ..job.clone()
    };
    let enqueued = ctx.store.enqueue_fenced(&job, now, ctx.epoch).await?;
    let message = Message {
        job: enqueued.id.clone(),
        region: enqueued.region.clone(),
    };
    // The store holds the job; a queue that failed hears of it from the workers' upkeep.
    if let Err(error) = ctx.queue.publish(&message).await {
        tracing::warn!(job = %enqueued.id, %error, "the queue did not take the job; the workers' upkeep publishes it again");
    }
    tracing::info!(job = %enqueued.id, kind = enqueued.kind.as_str(), instance = %enqueued.instance, "job enqueued");
    Ok(enqueued)
}

/// Records the plan's partner, tenant, channel and release changes, each audited first
/// under a key of the revision, so a pass cut off between the two records it once.
async fn record_entities(
    ctx: &Context,
    desired: &Desired,
    plan: &Plan,
    actual: &Actual,
    memo: &mut plan::Memo,
    now: DateTime<Utc>,
) -> Result<usize, Error> {
    let entity_actions: Vec<&Action> = plan
        .actions
        .iter()
        .filter(|action| action.resource_type != plan::ResourceType::Instance)
        .collect();
    if entity_actions.is_empty() {
        return Ok(0);
    }
    let fleet_entities = memo.entities(desired.fleet.fleet());
    let mut count = 0;
    for action in entity_actions {
        let resource_type = action.resource_type;
        let key = (resource_type, action.id.clone());
        let resource = format!("{}/{}", resource_type.as_str(), action.id);
        let mut record = Record::new(
            desired.approver.clone(),
            &format!("{}.{}", resource_type.as_str(), action.kind.as_str()),
            &resource,
        );
        record.commit = desired.commit.clone();
        record.reason = Some(action.reason.clone());
        record.before = actual
            .entities
            .get(&key)
            .map(|fields| serde_json::json!(fields));
        record.after = fleet_entities
            .get(&key)
            .map(|fields| serde_json::json!(fields));
        record.key = Some(format!(
            "revision/{}/{resource}/{}",
            desired.revision,
            action.kind.as_str()
        ));
        ctx.store.append_one(record).await?;
        match fleet_entities.get(&key) {
            Some(fields) => {
                ctx.store
                    .put_entity(resource_type, &action.id, fields, now)
                    .await?
            }
            None => {
                ctx.store
                    .delete_entity_fenced(resource_type, &action.id, ctx.epoch)
                    .await?;
            }
        }
        count += 1;
    }
    Ok(count)
}

/// Audits the drift a repair is about to mend.
async fn audit_drift(
    ctx: &Context,
    desired: &Desired,
    action: &Action,
    drift: Option<&Vec<plan::Drift>>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let found: Vec<&str> = drift
        .into_iter()
        .flatten()
        .map(|drift| drift.what.as_str())
        .collect();
    let mut record = Record::new(
        ctx.actor.clone(),
        "instance.drift",
        &format!("instance/{}", action.id),
    );
    record.commit = desired.commit.clone();
    record.reason = Some(action.reason.clone());
    record.before = Some(serde_json::json!({ "drift": found }));
    record.metadata.insert(
        "observed_at".to_string(),
        serde_json::json!(now.to_rfc3339()),
    );
    ctx.store.append_one(record).await?;
    Ok(())
}

/// How many instances are observed at once.
const OBSERVING_AT_ONCE: usize = 8;

/// Observes every running instance that has no job and that the fleet still wants running
/// as applied, records its health when it changed, and returns what drifted by instance.
async fn observe(
    ctx: &Context,
    fleet: &Fleet,
    actual: &Actual,
    busy: &BTreeMap<String, Job>,
    now: DateTime<Utc>,
) -> Result<BTreeMap<String, Vec<plan::Drift>>, Error> {
    let mut looks = Vec::new();
    for (name, deployed) in &actual.instances {
        let Some(instance) = fleet.instances.get(name) else {
            continue;
        };
        if deployed.state != RunState::Active
            || busy.contains_key(name)
            || plan::effective_state(fleet, instance) != RunState::Active
        {
            continue;
        }
        let Some(driver) = ctx.drivers.get(&instance.region.value) else {
            continue;
        };
        let Ok(target) = applied_target(fleet, instance, deployed) else {
            continue;
        };
        looks.push((name.clone(), driver, target));
    }
    let observed: Vec<(String, Result<Vec<driver::Drift>, driver::Error>)> = stream::iter(looks)
        .map(|(name, driver, target)| async move {
            let drift = driver.observe(&target).await;
            (name, drift)
        })
        .buffer_unordered(OBSERVING_AT_ONCE)
        .collect()
        .await;
    let records: BTreeMap<String, Option<serde_json::Value>> = ctx
        .store
        .instances()
        .await?
        .into_iter()
        .map(|record| (record.name, record.health))
        .collect();
    let mut drifted = BTreeMap::new();
    for (name, observed) in observed {
        let drift = match observed {
            Ok(drift) => drift,
            Err(error) => {
                tracing::warn!(instance = %name, %error, "the instance could not be observed");
                continue;
            }
        };
        let found: Vec<String> = drift.iter().map(ToString::to_string).collect();
        let health = if found.is_empty() {
            "healthy"
        } else {
            "unhealthy"
        };
        let recorded = records.get(&name).cloned().flatten();
        let unchanged = recorded.as_ref().is_some_and(|recorded| {
            recorded.get("health") == Some(&serde_json::json!(health))
                && recorded.get("drift") == Some(&serde_json::json!(found))
        });
        if !unchanged {
            let report = serde_json::json!({
                "health": health,
                "drift": found,
                "checked_at": now.to_rfc3339(),
            });
            ctx.store.set_instance_health(&name, &report, now).await?;
        }
        if !drift.is_empty() {
            let drift = drift
                .into_iter()
                .map(|drift| plan::Drift {
                    repairable: drift != driver::Drift::MissingDatabase,
                    what: drift.to_string(),
                })
                .collect();
            drifted.insert(name, drift);
        }
    }
    Ok(drifted)
}

/// What the driver should find of an instance as it was applied: its version, resources and
/// the environment of its (unchanged) configuration.
fn applied_target(
    fleet: &Fleet,
    instance: &Instance,
    deployed: &ActualInstance,
) -> Result<driver::Target, driver::Error> {
    let mut target = template::target(fleet, instance, &deployed.version, template::DEFAULT)?;
    target.resources = deployed.resources;
    Ok(target)
}
