//! `/api/v1`: the fleet as the store sees it, the plan the daemon would make now, the
//! audit log, and the operator verbs. The dashboard reads through the same functions.
//!
//! A scoped token (a partner's or a tenant's) sees only the instances of its scope, as the
//! revision in force assigns them (the daemon keeps each instance's owners in the store, so
//! any process answers alike), their jobs, and the audit records of those instances; the
//! fleet-wide views (`state`) and verbs (pause, resume, reconcile now) need an unscoped
//! token. What is out of scope is answered 404, as if it did not exist.
//!
//! The status and the instance list are rendered once per store fingerprint and then
//! served from memory until anything they show changes.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Extension, Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    daemon::{self, control, status},
    http::{
        ApiError, App,
        auth::{Caller, Scope},
    },
    plan,
    store::{
        self,
        audit::{Filter, Outcome},
        daemon_state::Fingerprint,
        jobs::{Job, JobFilter, JobStatus, Step},
    },
};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/status", get(status_of))
        .route("/api/v1/instances", get(instances))
        .route("/api/v1/instances/{name}", get(instance))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/retry", post(retry))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/plan", get(plan_now))
        .route("/api/v1/state", get(state))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/audit/export", get(audit_export))
        .route("/api/v1/reconcile", post(reconcile_now))
        .route("/api/v1/reconcile/pause", post(pause))
        .route("/api/v1/reconcile/resume", post(resume))
        .route("/api/v1/openapi.json", get(crate::http::openapi::document))
}

/// `{"instances": [...]}`, the Status JSON's instance objects.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Instances {
    pub instances: Vec<status::InstanceView>,
}

/// One instance with its jobs (newest first) and its newest audit records.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceDetail {
    pub instance: status::InstanceView,
    pub jobs: Vec<JobSummary>,
    /// Audit records as `audit export` writes them, newest first.
    #[schema(value_type = Vec<Object>)]
    pub audit: Vec<serde_json::Value>,
}

/// A job, without its payload.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: String,
    pub kind: &'static str,
    pub instance: String,
    pub region: String,
    /// pending | running | cancelling | succeeded | failed | dead | cancelled
    pub status: &'static str,
    pub attempts: i64,
    pub max_attempts: i64,
    pub failures: i64,
    pub commit: Option<String>,
    pub reason: String,
    pub created_at: String,
    pub not_before: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub worker: Option<String>,
    pub error: Option<String>,
}

/// A step of a job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StepView {
    pub position: i64,
    pub name: String,
    /// running | succeeded | failed | skipped | compensated
    pub status: &'static str,
    pub attempts: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
}

/// A job and its steps.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobDetail {
    pub job: JobSummary,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Jobs {
    pub jobs: Vec<JobSummary>,
}

/// A page of the audit log; `next_after` is the cursor of the next page (`after=`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<serde_json::Value>,
    pub next_after: Option<i64>,
}

/// What a fleet-wide verb did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Done {
    pub message: String,
    pub paused: bool,
}

/// The filters of `GET /api/v1/jobs`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// pending, running, cancelling, succeeded, failed, dead or cancelled.
    pub status: Option<String>,
    pub instance: Option<String>,
    /// At most this many, newest first (default 100, at most 1,000).
    pub limit: Option<i64>,
}

/// The filters of `GET /api/v1/audit` and `/audit/export`, as `audit query` takes them.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At or after (RFC 3339).
    pub since: Option<String>,
    /// Before (RFC 3339).
    pub until: Option<String>,
    /// The action, or a prefix ending in `*`.
    pub action: Option<String>,
    /// The resource, or a prefix ending in `*`.
    pub resource: Option<String>,
    /// The actor's id or email.
    pub actor: Option<String>,
    /// A commit, or a prefix of its sha.
    pub commit: Option<String>,
    /// Only records after this sequence number: the cursor.
    pub after: Option<i64>,
    /// A page's size (default 100, at most 1,000; `audit` only).
    pub limit: Option<i64>,
}

/// The status and the instance list, rendered, with the fingerprint they were read at.
#[derive(Default)]
pub struct Cache {
    rendered: Mutex<Option<Rendered>>,
}

#[derive(Clone)]
struct Rendered {
    fingerprint: Fingerprint,
    /// When the store's fingerprint was last found equal to `fingerprint`; none once a
    /// request through this process may have changed what the status shows.
    checked: Option<Instant>,
    status: Arc<status::Status>,
    status_json: Bytes,
    instances_json: Bytes,
}

/// How long a rendered status is served without asking the store whether it changed: a
/// fingerprint costs a dozen aggregates over the fleet's tables, which at a thousand reads a
/// second would cost more than the reads. What this process is asked to change (any request
/// but a read) is seen at once; what the leader's passes and the workers change, within this.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

impl Cache {
    /// The next read asks the store again.
    pub fn invalidate(&self) {
        if let Some(rendered) = self
            .rendered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            rendered.checked = None;
        }
    }

    /// What was rendered, when it is fresh or the store's fingerprint says it still holds.
    fn get(&self, fingerprint: Option<Fingerprint>) -> Option<Rendered> {
        let mut rendered = self
            .rendered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rendered = rendered.as_mut()?;
        match fingerprint {
            None => rendered
                .checked
                .is_some_and(|checked| checked.elapsed() < FRESH_FOR)
                .then(|| rendered.clone()),
            Some(fingerprint) if fingerprint == rendered.fingerprint => {
                rendered.checked = Some(Instant::now());
                Some(rendered.clone())
            }
            Some(_) => None,
        }
    }
}

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// How many records a scoped audit page reads at most, to fill a page of its own.
const MAX_SCOPED_SCAN: i64 = 10_000;

/// The status as the store holds it now (within [`FRESH_FOR`]): from the cache while nothing
/// it shows changed.
///
/// # Errors
/// When the store fails.
pub async fn current(app: &App) -> Result<(Arc<status::Status>, Bytes, Bytes), ApiError> {
    let hit = |rendered: Rendered| {
        (
            rendered.status,
            rendered.status_json,
            rendered.instances_json,
        )
    };
    if let Some(rendered) = app.cache.get(None) {
        return Ok(hit(rendered));
    }
    let checked = Instant::now();
    let fingerprint = app.store.fingerprint().await?;
    if let Some(rendered) = app.cache.get(Some(fingerprint)) {
        return Ok(hit(rendered));
    }
    let status = Arc::new(status::read(&app.store, Utc::now()).await?);
    let status_json =
        Bytes::from(serde_json::to_vec(status.as_ref()).expect("the status serializes"));
    let instances_json = Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "instances": status.instances }))
            .expect("the instances serialize"),
    );
    *app.cache
        .rendered
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Rendered {
        fingerprint,
        checked: Some(checked),
        status: Arc::clone(&status),
        status_json: status_json.clone(),
        instances_json: instances_json.clone(),
    });
    Ok((status, status_json, instances_json))
}

/// Which instances a caller sees.
pub struct Visible {
    /// None: all of them.
    names: Option<BTreeSet<String>>,
}

impl Visible {
    /// The instances `caller` sees: all, or its partner's or tenant's in the revision in
    /// force.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn of(app: &App, caller: &Caller) -> Result<Visible, ApiError> {
        let (key, wanted) = match &caller.scope {
            Scope::All => return Ok(Visible { names: None }),
            Scope::Partner(partner) => ("partner", partner),
            Scope::Tenant(tenant) => ("tenant", tenant),
        };
        let owners = app
            .store
            .daemon_state(daemon::OWNERS)
            .await?
            .map(|(value, _)| value)
            .unwrap_or_default();
        let names = owners
            .get("instances")
            .and_then(|instances| instances.as_object())
            .map(|instances| {
                instances
                    .iter()
                    .filter(|(_, owner)| owner.get(key).and_then(|id| id.as_str()) == Some(wanted))
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Visible { names: Some(names) })
    }

    pub fn all(&self) -> bool {
        self.names.is_none()
    }

    pub fn instance(&self, name: &str) -> bool {
        self.names.as_ref().is_none_or(|names| names.contains(name))
    }

    /// Whether an audit record (in its exported form) is about a visible instance.
    pub fn record(&self, record: &serde_json::Value) -> bool {
        if self.all() {
            return true;
        }
        let by_resource = record
            .get("resource")
            .and_then(|resource| resource.as_str())
            .and_then(|resource| resource.strip_prefix("instance/"))
            .is_some_and(|name| self.instance(name.split('/').next().unwrap_or(name)));
        // A verb on a job names the job's instance.
        let by_metadata = record
            .pointer("/metadata/instance")
            .and_then(|name| name.as_str())
            .is_some_and(|name| self.instance(name));
        by_resource || by_metadata
    }
}

fn json_bytes(bytes: Bytes) -> Response {
    let mut response = Response::new(Body::from(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl JobSummary {
    pub fn of(job: &Job) -> JobSummary {
        JobSummary {
            id: job.id.clone(),
            kind: job.kind.as_str(),
            instance: job.instance.clone(),
            region: job.region.clone(),
            status: job.status.as_str(),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            failures: job.failures,
            commit: job.commit_sha.clone(),
            reason: job.reason.clone(),
            created_at: time(job.created_at),
            not_before: time(job.not_before),
            started_at: job.started_at.map(time),
            finished_at: job.finished_at.map(time),
            worker: job.worker.clone(),
            error: job.error.clone(),
        }
    }
}

impl StepView {
    fn of(step: &Step) -> StepView {
        StepView {
            position: step.position,
            name: step.name.clone(),
            status: step.status.as_str(),
            attempts: step.attempts,
            started_at: time(step.started_at),
            finished_at: step.finished_at.map(time),
            error: step.error.clone(),
        }
    }
}

/// The status as `caller` sees it.
///
/// # Errors
/// When the store fails.
pub async fn status_for(app: &App, caller: &Caller) -> Result<status::Status, ApiError> {
    let (status, _, _) = current(app).await?;
    let visible = Visible::of(app, caller).await?;
    let mut status = status.as_ref().clone();
    if !visible.all() {
        status
            .instances
            .retain(|instance| visible.instance(&instance.name));
    }
    Ok(status)
}

#[utoipa::path(get, path = "/api/v1/status", tag = "fleet",
    responses((status = 200, description = "FLEET-FORMAT.md's Status JSON", body = status::Status),
        (status = 401, description = "no valid token", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn status_of(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    if caller.scope == Scope::All {
        let (_, json, _) = current(&app).await?;
        return Ok(json_bytes(json));
    }
    Ok(Json(status_for(&app, &caller).await?).into_response())
}

#[utoipa::path(get, path = "/api/v1/instances", tag = "fleet",
    responses((status = 200, description = "the answer", body = Instances), (status = 401, description = "no valid token", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn instances(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    if caller.scope == Scope::All {
        let (_, _, json) = current(&app).await?;
        return Ok(json_bytes(json));
    }
    let status = status_for(&app, &caller).await?;
    Ok(Json(Instances {
        instances: status.instances,
    })
    .into_response())
}

/// One instance as `caller` sees it, with its jobs and its newest audit records.
///
/// # Errors
/// 404 when the caller does not see such an instance; the store failing.
pub async fn instance_detail(
    app: &App,
    caller: &Caller,
    name: &str,
) -> Result<InstanceDetail, ApiError> {
    let (status, _, _) = current(app).await?;
    let visible = Visible::of(app, caller).await?;
    let instance = status
        .instances
        .iter()
        .find(|instance| instance.name == name && visible.instance(name))
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no instance `{name}`")))?;
    let jobs = app
        .store
        .list_jobs(
            &JobFilter {
                instance: Some(name.to_string()),
                ..JobFilter::default()
            },
            DEFAULT_LIMIT,
        )
        .await?
        .iter()
        .map(JobSummary::of)
        .collect();
    let audit = newest_audit(app, &format!("instance/{name}"), 50).await?;
    Ok(InstanceDetail {
        instance,
        jobs,
        audit,
    })
}

/// The newest `count` records about `resource`, newest first.
async fn newest_audit(
    app: &App,
    resource: &str,
    count: usize,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let filter = Filter {
        resource: Some(resource.to_string()),
        ..Filter::default()
    };
    let mut newest = std::collections::VecDeque::with_capacity(count + 1);
    let mut failed = None;
    app.store
        .audit_scan(&filter, 1000, |row| {
            match row.export() {
                Ok(record) => {
                    newest.push_back(record);
                    if newest.len() > count {
                        newest.pop_front();
                    }
                }
                Err(error) => failed = Some(error),
            }
            Ok(())
        })
        .await?;
    if let Some(error) = failed {
        return Err(error.into());
    }
    Ok(newest.into_iter().rev().collect())
}

#[utoipa::path(get, path = "/api/v1/instances/{name}", tag = "fleet",
    params(("name" = String, Path, description = "the instance")),
    responses((status = 200, description = "the answer", body = InstanceDetail), (status = 404, description = "no such thing, or not in the token's scope", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn instance(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<InstanceDetail>, ApiError> {
    Ok(Json(instance_detail(&app, &caller, &name).await?))
}

/// The jobs `caller` sees that pass `query`, newest first.
///
/// # Errors
/// A status that does not exist; the store failing.
pub async fn jobs_for(
    app: &App,
    caller: &Caller,
    query: &JobQuery,
) -> Result<Vec<JobSummary>, ApiError> {
    let status = match &query.status {
        Some(text) => Some(JobStatus::parse(text).ok_or_else(|| {
            ApiError::invalid(format!(
                "no job status `{text}`: pending, running, cancelling, succeeded, failed, dead or cancelled"
            ))
        })?),
        None => None,
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let visible = Visible::of(app, caller).await?;
    let filter = JobFilter {
        status,
        instance: query.instance.clone(),
    };
    // A scoped caller's page is filled from a longer read.
    let read = if visible.all() {
        limit
    } else {
        MAX_SCOPED_SCAN
    };
    let jobs = app.store.list_jobs(&filter, read).await?;
    Ok(jobs
        .iter()
        .filter(|job| visible.instance(&job.instance))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(JobSummary::of)
        .collect())
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobQuery),
    responses((status = 200, description = "the answer", body = Jobs), (status = 400, description = "a malformed request", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn jobs(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<JobQuery>,
) -> Result<Json<Jobs>, ApiError> {
    Ok(Json(Jobs {
        jobs: jobs_for(&app, &caller, &query).await?,
    }))
}

/// A job `caller` sees, with its steps.
///
/// # Errors
/// 404 when the caller does not see such a job; the store failing.
pub async fn job_detail(app: &App, caller: &Caller, id: &str) -> Result<JobDetail, ApiError> {
    let job = visible_job(app, caller, id).await?;
    let steps = app.store.steps(&job.id).await?;
    Ok(JobDetail {
        job: JobSummary::of(&job),
        steps: steps.iter().map(StepView::of).collect(),
    })
}

async fn visible_job(app: &App, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    let visible = Visible::of(app, caller).await?;
    app.store
        .job(id)
        .await?
        .filter(|job| visible.instance(&job.instance))
        .ok_or_else(|| ApiError::not_found(format!("no job `{id}`")))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "the job")),
    responses((status = 200, description = "the answer", body = JobDetail), (status = 404, description = "no such thing, or not in the token's scope", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn job(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobDetail>, ApiError> {
    Ok(Json(job_detail(&app, &caller, &id).await?))
}

/// Runs a job verb for an operator, audited whether it works or not.
async fn job_verb(
    app: &App,
    caller: &Caller,
    id: &str,
    action: &str,
    verb: impl AsyncFnOnce(&store::Store) -> Result<Job, store::Error>,
) -> Result<Json<JobSummary>, ApiError> {
    let resource = format!("job/{id}");
    caller.require_operator(app, action, &resource).await?;
    let job = visible_job(app, caller, id).await?;
    let done = verb(&app.store).await;
    let mut record = caller.record(action, &resource);
    record.job = Some(id.to_string());
    if let Err(error) = &done {
        record.result = Outcome::Failure;
        record.error = Some(error.to_string());
    }
    record
        .metadata
        .insert("instance".into(), job.instance.clone().into());
    app.store.append_one(record).await?;
    match done {
        Ok(job) => {
            app.control.reconcile_now();
            Ok(Json(JobSummary::of(&job)))
        }
        Err(store::Error::Invalid(message)) => Err(ApiError::conflict(message)),
        Err(error) => Err(error.into()),
    }
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "the job")),
    responses((status = 200, description = "the job, pending again", body = JobSummary),
        (status = 403, description = "the token may not do this", body = crate::http::error::ErrorResponse),
        (status = 404, description = "no such thing, or not in the token's scope", body = crate::http::error::ErrorResponse),
        (status = 409, description = "the job cannot be retried now", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn retry(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobSummary>, ApiError> {
    job_verb(&app, &caller, &id, "job.retry", async |store| {
        store.retry(&id, Utc::now()).await
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "the job")),
    responses((status = 200, description = "the job, cancelled or cancelling", body = JobSummary),
        (status = 403, description = "the token may not do this", body = crate::http::error::ErrorResponse),
        (status = 404, description = "no such thing, or not in the token's scope", body = crate::http::error::ErrorResponse),
        (status = 409, description = "the job has ended", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobSummary>, ApiError> {
    job_verb(&app, &caller, &id, "job.cancel", async |store| {
        store.cancel(&id, Utc::now()).await
    })
    .await
}

/// The plan the daemon would make now, as `caller` sees it: the revision in force against
/// the recorded state (observation aside).
///
/// # Errors
/// 503 when this process does not lead (only the leader holds the revision in force); the
/// store failing.
pub async fn plan_for(app: &App, caller: &Caller) -> Result<(plan::Plan, String), ApiError> {
    let desired = app.control.desired().ok_or_else(|| {
        ApiError::unavailable(
            "this process holds no revision in force: it does not lead, or nothing could be applied yet; ask the leader `GET /api/v1/status` names",
        )
    })?;
    let actual = app.store.actual().await?;
    let mut plan = plan::compute(&desired.fleet, &desired.sources, &actual, Utc::now());
    let visible = Visible::of(app, caller).await?;
    if !visible.all() {
        plan.actions.retain(|action| {
            action.resource_type == plan::ResourceType::Instance && visible.instance(&action.id)
        });
        plan.advisories.retain(|action| {
            action.resource_type == plan::ResourceType::Instance && visible.instance(&action.id)
        });
    }
    Ok((plan, desired.revision.clone()))
}

#[utoipa::path(get, path = "/api/v1/plan", tag = "fleet",
    responses((status = 200, description = "FLEET-FORMAT.md's Plan JSON", body = Object),
        (status = 503, description = "unavailable now", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn plan_now(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let (plan, revision) = plan_for(&app, &caller).await?;
    let text = plan::render::json(
        &plan,
        plan::render::Commits {
            base: None,
            head: Some(&revision),
        },
        Vec::new(),
    );
    Ok(json_bytes(Bytes::from(text)))
}

#[utoipa::path(get, path = "/api/v1/state", tag = "fleet",
    responses((status = 200, description = "the snapshot `state export` writes (schemas/state.schema.json)", body = Object),
        (status = 403, description = "the token may not do this", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn state(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    if caller.scope != Scope::All {
        return Err(caller
            .forbid(
                &app,
                "api.refused",
                "http/api/v1/state",
                "the state covers the whole fleet: it needs a token without a partner or tenant scope",
            )
            .await);
    }
    let snapshot = app.store.snapshot().await?;
    let text = serde_json::to_vec(&snapshot).expect("a snapshot serializes");
    Ok(json_bytes(Bytes::from(text)))
}

impl AuditQuery {
    fn filter(&self) -> Result<Filter, ApiError> {
        let parse = |name: &str,
                     text: &Option<String>|
         -> Result<Option<DateTime<Utc>>, ApiError> {
            text.as_deref()
                .map(|text| {
                    DateTime::parse_from_rfc3339(text)
                        .map(|at| at.with_timezone(&Utc))
                        .map_err(|_| {
                            ApiError::invalid(format!("`{name}` is not an RFC 3339 time: `{text}`"))
                        })
                })
                .transpose()
        };
        Ok(Filter {
            since: parse("since", &self.since)?,
            until: parse("until", &self.until)?,
            action: self.action.clone(),
            resource: self.resource.clone(),
            actor: self.actor.clone(),
            commit: self.commit.clone(),
            after: self.after,
        })
    }
}

/// A page of the audit records `caller` sees that pass `query`, oldest first.
///
/// # Errors
/// A malformed time; the store failing.
pub async fn audit_page(
    app: &App,
    caller: &Caller,
    query: &AuditQuery,
) -> Result<AuditPage, ApiError> {
    let mut filter = query.filter()?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let visible = Visible::of(app, caller).await?;
    let mut records = Vec::new();
    let mut scanned = 0;
    loop {
        let rows = app.store.audit_query(&filter, limit).await?;
        let full = rows.len() as i64 == limit;
        for row in &rows {
            scanned += 1;
            filter.after = Some(row.seq);
            let record = row.export()?;
            if visible.record(&record) {
                records.push(record);
                if records.len() as i64 == limit {
                    return Ok(AuditPage {
                        records,
                        next_after: filter.after,
                    });
                }
            }
        }
        if !full {
            return Ok(AuditPage {
                records,
                next_after: None,
            });
        }
        if scanned >= MAX_SCOPED_SCAN {
            // The page is short, but the log goes on: the cursor says where.
            return Ok(AuditPage {
                records,
                next_after: filter.after,
            });
        }
    }
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "the answer", body = AuditPage), (status = 400, description = "a malformed request", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn audit(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    Ok(Json(audit_page(&app, &caller, &query).await?))
}

#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "every record the filters select, one JSON object a line", content_type = "application/x-ndjson", body = String)),
    security(("bearer" = [])))]
pub async fn audit_export(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let filter = query.filter()?;
    let visible = Visible::of(&app, &caller).await?;
    // Pages are read as the client takes them: memory stays bounded however long the log.
    let stream = futures_util::stream::unfold(
        (Arc::clone(&app), filter, visible, false),
        |(app, mut filter, visible, done)| async move {
            if done {
                return None;
            }
            let rows = match app.store.audit_query(&filter, 500).await {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(%error, "exporting the audit log");
                    return Some((
                        Err(std::io::Error::other("the store failed")),
                        (app, filter, visible, true),
                    ));
                }
            };
            let last = rows.len() < 500;
            let mut chunk = Vec::new();
            for row in &rows {
                filter.after = Some(row.seq);
                match row.export() {
                    Ok(record) if visible.record(&record) => {
                        serde_json::to_writer(&mut chunk, &record).expect("a record serializes");
                        chunk.push(b'\n');
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "exporting the audit log");
                        return Some((
                            Err(std::io::Error::other("a record cannot be read")),
                            (app, filter, visible, true),
                        ));
                    }
                }
            }
            if rows.is_empty() {
                return None;
            }
            Some((Ok(Bytes::from(chunk)), (app, filter, visible, last)))
        },
    );
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// A fleet-wide verb: an unscoped operator's, audited.
async fn fleet_verb(app: &App, caller: &Caller, action: &str) -> Result<(), ApiError> {
    caller.require_operator(app, action, "reconcile").await?;
    if caller.scope != Scope::All {
        return Err(caller
            .forbid(
                app,
                action,
                "reconcile",
                "reconciliation is fleet-wide: it needs a token without a partner or tenant scope",
            )
            .await);
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/reconcile", tag = "reconcile",
    responses((status = 202, description = "accepted", body = Done), (status = 403, description = "the token may not do this", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn reconcile_now(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    fleet_verb(&app, &caller, "reconcile.request").await?;
    app.store
        .append_one(caller.record("reconcile.request", "reconcile"))
        .await?;
    app.control.reconcile_now();
    let paused = control::pause(&app.store).await?.paused;
    let message = match (app.control.is_leading(), paused) {
        (_, true) => "reconciliation is paused: the pass runs once it is resumed",
        (true, false) => "a pass runs now",
        (false, false) => {
            "this process does not lead; the leader's next pass comes at its own time"
        }
    };
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(Done {
            message: message.to_string(),
            paused,
        }),
    )
        .into_response())
}

async fn set_pause(app: &App, caller: &Caller, paused: bool) -> Result<Json<Done>, ApiError> {
    let action = if paused {
        "reconcile.pause"
    } else {
        "reconcile.resume"
    };
    fleet_verb(app, caller, action).await?;
    let before = control::pause(&app.store).await?.paused;
    let mut record = caller.record(action, "reconcile");
    record.before = Some(serde_json::json!({ "paused": before }));
    record.after = Some(serde_json::json!({ "paused": paused }));
    // Audited before it is done: a pause that is not in the log never happened.
    app.store.append_one(record).await?;
    control::set_pause(&app.store, paused, &caller.actor(), Utc::now()).await?;
    app.control.reconcile_now();
    Ok(Json(Done {
        message: if paused {
            "paused: no job is enqueued until resumed; running jobs finish".to_string()
        } else {
            "resumed".to_string()
        },
        paused,
    }))
}

#[utoipa::path(post, path = "/api/v1/reconcile/pause", tag = "reconcile",
    responses((status = 200, description = "the answer", body = Done), (status = 403, description = "the token may not do this", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn pause(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Done>, ApiError> {
    set_pause(&app, &caller, true).await
}

#[utoipa::path(post, path = "/api/v1/reconcile/resume", tag = "reconcile",
    responses((status = 200, description = "the answer", body = Done), (status = 403, description = "the token may not do this", body = crate::http::error::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn resume(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Done>, ApiError> {
    set_pause(&app, &caller, false).await
}
