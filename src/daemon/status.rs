//! The fleet as the store sees it: FLEET-FORMAT.md's Status JSON, for `wakafleet status`
//! and the API. It reads the store only (the instances, the jobs, the commits and the
//! daemon's last report), so any process can show what the leader did.
//!
//! The types here are the wire form (boundary types): fields are added, never renamed.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::{
    self, Store,
    jobs::{JobStatus, StepStatus},
    state::InstanceStatus,
};

/// The Status JSON.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Status {
    pub format_version: u32,
    pub at: String,
    pub commit: CommitStatus,
    pub reconcile: ReconcileStatus,
    pub instances: Vec<InstanceView>,
    pub jobs: JobCounts,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CommitStatus {
    /// The revision the source stood at when the daemon looked last.
    pub seen: Option<String>,
    /// The revision whose ready work was done last.
    pub applied: Option<String>,
    /// Whether the revision seen could be applied.
    pub valid: bool,
    /// Why not, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The revision in force (the last good one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_force: Option<String>,
    /// The diagnostics of an invalid revision seen, as `validate --format json` gives them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub diagnostics: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReconcileStatus {
    pub paused: bool,
    pub leader: Option<String>,
    pub last: Option<String>,
    /// What the daemon follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One instance.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    pub name: String,
    /// pending | provisioning | active | suspended | terminated | failed
    pub status: &'static str,
    pub version: Option<String>,
    /// healthy | degraded | unhealthy | unknown
    pub health: String,
    pub job: Option<JobView>,
    pub waiting: Option<String>,
    pub last_error: Option<String>,
    /// The update channel, the partner and the tenant the revision in force gives it; none
    /// for an instance no longer in the fleet.
    pub channel: Option<String>,
    pub partner: Option<String>,
    pub tenant: Option<String>,
}

/// An instance's active job.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    pub kind: &'static str,
    pub status: &'static str,
    pub step: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JobCounts {
    pub pending: i64,
    pub running: i64,
    pub retrying: i64,
    pub dead: i64,
}

/// The status at `now`.
///
/// # Errors
/// When the store fails, or holds a report it cannot read.
pub async fn read(store: &Store, now: DateTime<Utc>) -> Result<Status, store::Error> {
    let report = store
        .daemon_state("reconcile")
        .await?
        .map(|(value, _)| value)
        .unwrap_or_default();
    let waiting: BTreeMap<String, String> = store
        .daemon_state("waiting")
        .await?
        .and_then(|(value, _)| serde_json::from_value(value).ok())
        .unwrap_or_default();
    let text = |key: &str| {
        report
            .get(key)
            .and_then(|value| value.as_str())
            .map(str::to_string)
    };

    let active: BTreeMap<String, store::jobs::Job> = store
        .active_jobs()
        .await?
        .into_iter()
        .map(|job| (job.instance.clone(), job))
        .collect();
    let mut jobs = JobCounts::default();
    for job in active.values() {
        match job.status {
            JobStatus::Pending if job.failures > 0 => jobs.retrying += 1,
            JobStatus::Pending => jobs.pending += 1,
            _ => jobs.running += 1,
        }
    }
    jobs.dead = store
        .job_counts()
        .await?
        .into_iter()
        .find(|(status, _)| *status == JobStatus::Dead)
        .map_or(0, |(_, count)| count);

    let records: BTreeMap<String, store::state::InstanceRecord> = store
        .instances()
        .await?
        .into_iter()
        .map(|record| (record.name.clone(), record))
        .collect();
    let desired: BTreeSet<String> = report
        .get("instances")
        .and_then(|names| serde_json::from_value(names.clone()).ok())
        .unwrap_or_default();
    let owners = store
        .daemon_state(crate::daemon::OWNERS)
        .await?
        .and_then(|(value, _)| value.get("instances").cloned())
        .unwrap_or_default();
    let owner = |name: &str, key: &str| {
        owners
            .get(name)
            .and_then(|owner| owner.get(key))
            .and_then(|value| value.as_str())
            .map(str::to_string)
    };
    let names: BTreeSet<&String> = desired.iter().chain(records.keys()).collect();
    let mut instances = Vec::with_capacity(names.len());
    for name in names {
        let record = records.get(name);
        let job = match active.get(name) {
            Some(job) => Some(job_view(store, job).await?),
            None => None,
        };
        let status = match (record, &job) {
            (_, Some(job)) if job.kind == "provision" => "provisioning",
            (None, _) => "pending",
            (Some(record), _)
                if record.spec.is_none() && record.status != InstanceStatus::Failed =>
            {
                "pending"
            }
            (Some(record), _) => record.status.as_str(),
        };
        let health = record
            .and_then(|record| record.health.as_ref())
            .and_then(|health| health.get("health"))
            .and_then(|health| health.as_str())
            .unwrap_or("unknown")
            .to_string();
        instances.push(InstanceView {
            name: name.clone(),
            status,
            version: record.and_then(|record| {
                record
                    .spec
                    .as_ref()
                    .map(|spec| spec.version.clone())
                    .or_else(|| record.version.clone())
            }),
            health,
            job,
            waiting: waiting.get(name).cloned(),
            last_error: record.and_then(|record| record.last_error.clone()),
            channel: owner(name, "channel"),
            partner: owner(name, "partner"),
            tenant: owner(name, "tenant"),
        });
    }
    Ok(Status {
        format_version: 1,
        at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        commit: CommitStatus {
            seen: text("seen"),
            applied: store
                .last_applied_commit()
                .await?
                .map(|commit| commit.sha)
                .or_else(|| text("applied")),
            valid: report
                .get("valid")
                .and_then(|valid| valid.as_bool())
                .unwrap_or(true),
            refusal: text("refusal"),
            in_force: text("in_force"),
            diagnostics: report
                .get("diagnostics")
                .and_then(|entries| entries.as_array().cloned())
                .unwrap_or_default(),
        },
        reconcile: ReconcileStatus {
            paused: crate::daemon::control::pause(store).await?.paused,
            leader: text("leader"),
            last: text("last"),
            source: text("source"),
        },
        instances,
        jobs,
    })
}

async fn job_view(store: &Store, job: &store::jobs::Job) -> Result<JobView, store::Error> {
    let step = store
        .steps(&job.id)
        .await?
        .into_iter()
        .rev()
        .find(|step| step.status == StepStatus::Running)
        .map(|step| step.name);
    Ok(JobView {
        id: job.id.clone(),
        kind: job.kind.as_str(),
        status: job.status.as_str(),
        step,
    })
}

/// The status as a terminal table: one line per instance, then the commits and job counts.
pub fn text(status: &Status) -> String {
    let mut out = String::new();
    let width = status
        .instances
        .iter()
        .map(|instance| instance.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    out += &format!(
        "{:width$}  {:12}  {:12}  {:9}  {}\n",
        "INSTANCE", "STATUS", "VERSION", "HEALTH", "JOB / WAITING"
    );
    for instance in &status.instances {
        let job = instance.job.as_ref().map(|job| {
            format!(
                "{} {} {}{}",
                job.kind,
                job.status,
                job.id,
                job.step
                    .as_deref()
                    .map(|step| format!(" at {step}"))
                    .unwrap_or_default()
            )
        });
        let detail = job
            .or_else(|| instance.waiting.clone())
            .or_else(|| {
                instance
                    .last_error
                    .as_ref()
                    .map(|error| format!("error: {error}"))
            })
            .unwrap_or_default();
        out += &format!(
            "{:width$}  {:12}  {:12}  {:9}  {}\n",
            instance.name,
            instance.status,
            instance.version.as_deref().unwrap_or("-"),
            instance.health,
            detail
        );
    }
    let short = |sha: &Option<String>| {
        sha.as_deref()
            .map_or("none".to_string(), |sha| sha.chars().take(12).collect())
    };
    out += &format!(
        "\ncommit seen {} ({}), applied {}\n",
        short(&status.commit.seen),
        if status.commit.valid {
            "valid"
        } else {
            "not applied"
        },
        short(&status.commit.applied)
    );
    if let Some(refusal) = &status.commit.refusal {
        out += &format!("  {refusal}\n");
    }
    out += &format!(
        "leader {}, last pass {}{}\n",
        status.reconcile.leader.as_deref().unwrap_or("none"),
        status.reconcile.last.as_deref().unwrap_or("never"),
        if status.reconcile.paused {
            ", paused"
        } else {
            ""
        }
    );
    out += &format!(
        "jobs: {} pending, {} running, {} retrying, {} dead\n",
        status.jobs.pending, status.jobs.running, status.jobs.retrying, status.jobs.dead
    );
    out
}
