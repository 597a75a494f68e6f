//! The dashboard at `/`: pages rendered on the server with minijinja from `templates/`,
//! readable without any script. Every page reads through the API's functions
//! (`api::status_for`, `jobs_for`, `job_detail`, `instance_detail`, `plan_for`,
//! `audit_page`), so it shows a token what the API shows it, scope included; it reads no
//! list from the store itself. The templates are compiled into the binary, so the daemon
//! needs no files at run time.
//!
//! The token comes as for the API (`Authorization: Bearer`) or in the cookie the login form
//! sets; `auth::require` sends a visitor without a valid one to `/login`. The pages change
//! nothing: the operator verbs stay in the API. Error pages carry `error::Rendered`, so the
//! outer middleware keeps their HTML instead of writing the API's JSON error.

use std::{cmp::Ordering, collections::BTreeMap, sync::Arc};

use axum::{
    Extension, Form, Router,
    extract::{FromRequest, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use minijinja::value::{Serde, Value};
use serde::{Deserialize, Serialize};

use crate::{
    daemon::status::{InstanceView, Status},
    http::{
        ApiError, App,
        api::{self, AuditQuery, InstanceDetail, JobDetail, JobQuery, JobSummary},
        auth::{self, Caller, Scope},
        error::Rendered,
    },
    plan::{Action, Plan},
    policy,
};

/// The dashboard's templates, compiled into the binary and parsed once.
pub struct Templates {
    environment: minijinja::Environment<'static>,
}

/// The pages' templates by name; an `.html` name turns HTML escaping on.
const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("../../templates/layout.html")),
    (
        "overview.html",
        include_str!("../../templates/overview.html"),
    ),
    (
        "instance.html",
        include_str!("../../templates/instance.html"),
    ),
    ("job.html", include_str!("../../templates/job.html")),
    ("login.html", include_str!("../../templates/login.html")),
    ("error.html", include_str!("../../templates/error.html")),
];

/// How long the login cookie lasts, in seconds: a working day.
const COOKIE_SECONDS: u32 = 8 * 60 * 60;
/// How many audit records the overview shows.
const AUDIT_TAIL: usize = 20;
/// How many of the newest jobs the overview shows.
const RECENT_JOBS: i64 = 20;
/// How many active or dead jobs the overview lists at most, of each status.
const LISTED_JOBS: i64 = 100;
/// The most audit records read back from the head to fill the tail: a scoped token sees
/// few of them, and the page must not read the whole log to find its twenty.
const MAX_TAIL_SCAN: i64 = 10_000;
/// The order of the instance table's groups: what needs a look first.
const STATUS_ORDER: &[&str] = &[
    "failed",
    "provisioning",
    "pending",
    "active",
    "suspended",
    "terminated",
];
/// What a page may load: its own inline style and nothing else, since it has no script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The pages that need a token.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(overview))
        .route("/instances/{name}", get(instance))
        .route("/jobs/{id}", get(job))
}

/// The login form and the logout: open, but rate limited per address by the router.
pub fn login_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
}

/// Who is signed in, as every page's header shows it.
#[derive(Debug, Serialize)]
struct Viewer {
    token: String,
    role: &'static str,
    /// The partner or tenant the token is limited to.
    scope: Option<String>,
}

/// The overview at `/`.
#[derive(Debug, Serialize)]
struct Overview {
    /// The status, its instances in the order the table shows them.
    status: Status,
    sort: &'static str,
    counts: Counts,
    work: Work,
    /// The active jobs (running, cancelling, pending), the newest, and the dead letters:
    /// jobs that failed their last attempt.
    jobs: Vec<JobSection>,
    /// The newest audit records, newest first, as the API exports them.
    audit: Vec<serde_json::Value>,
}

/// How many instances have each status, version and channel.
#[derive(Debug, Default, Serialize)]
struct Counts {
    status: Vec<Count>,
    version: Vec<Count>,
    channel: Vec<Count>,
}

#[derive(Debug, Serialize)]
struct Count {
    value: String,
    instances: usize,
}

/// The plan's work by what it waits for; `unavailable` says why there is none to show.
#[derive(Debug, Default, Serialize)]
struct Work {
    revision: Option<String>,
    unavailable: Option<String>,
    /// Ready, deferred and blocked actions, then the advisories: releases available that
    /// nothing approves yet, which the daemon does nothing about.
    sections: Vec<WorkSection>,
}

#[derive(Debug, Serialize)]
struct WorkSection {
    id: &'static str,
    title: &'static str,
    items: Vec<WorkItem>,
}

/// One action of the plan.
#[derive(Debug, Serialize)]
struct WorkItem {
    kind: &'static str,
    resource: &'static str,
    id: String,
    status: &'static str,
    /// When a deferred action's maintenance window next opens.
    not_before: Option<String>,
    blocked_reason: Option<&'static str>,
    from: Option<String>,
    to: Option<String>,
    reason: String,
}

/// A list of jobs on the overview.
#[derive(Debug, Serialize)]
struct JobSection {
    id: &'static str,
    title: &'static str,
    jobs: Vec<JobRow>,
}

/// A job and the step it runs now.
#[derive(Debug, Serialize)]
struct JobRow {
    #[serde(flatten)]
    job: JobSummary,
    step: Option<String>,
}

/// One instance's page.
#[derive(Debug, Serialize)]
struct InstancePage {
    detail: InstanceDetail,
    work: Work,
}

/// The login page.
#[derive(Debug, Serialize)]
struct LoginPage {
    error: Option<&'static str>,
}

/// An error page.
#[derive(Debug, Serialize)]
struct ErrorPage {
    code: u16,
    reason: &'static str,
    message: String,
}

/// The query of `/`: the column the instance table is sorted by.
#[derive(Debug, Default, Deserialize)]
struct OverviewQuery {
    sort: Option<String>,
}

/// The login form's fields.
#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

impl Templates {
    /// The templates of `templates/`, parsed.
    ///
    /// # Panics
    /// When a template does not parse: they are compiled in, so that is a bug of this build,
    /// which the unit tests below catch.
    pub fn new() -> Templates {
        let mut environment = minijinja::Environment::new();
        // A misspelt field fails the page (and the tests) instead of showing nothing; an
        // absent optional field may still be tested with `if`.
        environment.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
        for (name, source) in TEMPLATES {
            environment
                .add_template(name, source)
                .expect("the dashboard's templates parse: they are compiled in and unit tested");
        }
        Templates { environment }
    }

    /// Renders the template `name` with `page` inside the layout.
    ///
    /// # Errors
    /// When a template refers to what its page does not hold: a bug of this build.
    fn render(
        &self,
        name: &str,
        title: &str,
        viewer: Option<&Viewer>,
        page: &impl Serialize,
    ) -> Result<String, minijinja::Error> {
        let content = self.environment.get_template(name)?.render(Serde(page))?;
        self.environment
            .get_template("layout.html")?
            .render(minijinja::context! {
                title => title,
                viewer => Serde(viewer),
                content => Value::from_safe_string(content),
            })
    }
}

impl Default for Templates {
    fn default() -> Templates {
        Templates::new()
    }
}

impl Viewer {
    fn of(caller: &Caller) -> Viewer {
        Viewer {
            token: caller.token.clone(),
            role: caller.role.as_str(),
            scope: match &caller.scope {
                Scope::All => None,
                Scope::Partner(partner) => Some(format!("partner {partner}")),
                Scope::Tenant(tenant) => Some(format!("tenant {tenant}")),
            },
        }
    }
}

impl WorkItem {
    fn of(action: &Action) -> WorkItem {
        WorkItem {
            kind: action.kind.as_str(),
            resource: action.resource_type.as_str(),
            id: action.id.clone(),
            status: action.status.as_str(),
            not_before: action
                .not_before
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            blocked_reason: action.blocked_reason.map(policy::BlockedReason::as_str),
            from: action.from.as_ref().map(ToString::to_string),
            to: action.to.as_ref().map(ToString::to_string),
            reason: action.reason.clone(),
        }
    }
}

impl Work {
    /// The plan's actions for which `keep` holds, by status.
    fn of(plan: &Plan, revision: String, keep: impl Fn(&Action) -> bool) -> Work {
        let with = |status: policy::Status| -> Vec<WorkItem> {
            plan.actions
                .iter()
                .filter(|action| action.status == status && keep(action))
                .map(WorkItem::of)
                .collect()
        };
        let section = |id, title, items| WorkSection { id, title, items };
        let advisories = plan
            .advisories
            .iter()
            .filter(|action| keep(action))
            .map(WorkItem::of)
            .collect();
        Work {
            revision: Some(revision),
            unavailable: None,
            sections: vec![
                section(
                    "ready",
                    "Ready: runs on the next pass",
                    with(policy::Status::Ready),
                ),
                section(
                    "deferred",
                    "Deferred: waits for its maintenance window",
                    with(policy::Status::Deferred),
                ),
                section("blocked", "Blocked", with(policy::Status::Blocked)),
                section(
                    "advisories",
                    "Available, not approved: the daemon does nothing about these",
                    advisories,
                ),
            ],
        }
    }

    /// The plan as `caller` sees it, or why there is none: a process that holds no revision
    /// still shows the rest of the page.
    async fn read(
        app: &App,
        caller: &Caller,
        keep: impl Fn(&Action) -> bool,
    ) -> Result<Work, ApiError> {
        match api::plan_for(app, caller).await {
            Ok((plan, revision)) => Ok(Work::of(&plan, revision, keep)),
            Err(error) if error.code == crate::http::error::Code::ServiceUnavailable => Ok(Work {
                unavailable: Some(error.message),
                ..Work::default()
            }),
            Err(error) => Err(error),
        }
    }
}

/// `GET /`: the overview.
async fn overview(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<OverviewQuery>,
) -> Response {
    let viewer = Viewer::of(&caller);
    match overview_page(&app, &caller, &query).await {
        Ok(page) => page_response(&app, "overview.html", "Fleet", &viewer, &page),
        Err(error) => error_response(&app, Some(&viewer), &error),
    }
}

async fn overview_page(
    app: &App,
    caller: &Caller,
    query: &OverviewQuery,
) -> Result<Overview, ApiError> {
    let mut status = api::status_for(app, caller).await?;
    let sort = sort_instances(&mut status.instances, query.sort.as_deref());
    let counts = Counts::of(&status.instances);
    let work = Work::read(app, caller, |_| true).await?;
    // The step a job runs now is in its instance's entry of the status.
    let steps: BTreeMap<&str, &str> = status
        .instances
        .iter()
        .filter_map(|instance| instance.job.as_ref())
        .filter_map(|job| Some((job.id.as_str(), job.step.as_deref()?)))
        .collect();
    let rows = |jobs: Vec<JobSummary>| -> Vec<JobRow> {
        jobs.into_iter()
            .map(|job| JobRow {
                step: steps.get(job.id.as_str()).map(|step| step.to_string()),
                job,
            })
            .collect()
    };
    let mut active = Vec::new();
    for state in ["running", "cancelling", "pending"] {
        active.extend(rows(
            jobs_with(app, caller, Some(state), LISTED_JOBS).await?,
        ));
    }
    let recent = rows(jobs_with(app, caller, None, RECENT_JOBS).await?);
    let dead = rows(jobs_with(app, caller, Some("dead"), LISTED_JOBS).await?);
    let section = |id, title, jobs| JobSection { id, title, jobs };
    let jobs = vec![
        section("active-jobs", "Running and waiting", active),
        section("recent-jobs", "Recent", recent),
        section("dead-letters", "Dead letters", dead),
    ];
    let audit = audit_tail(app, caller).await?;
    Ok(Overview {
        status,
        sort,
        counts,
        work,
        jobs,
        audit,
    })
}

async fn jobs_with(
    app: &App,
    caller: &Caller,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<JobSummary>, ApiError> {
    let query = JobQuery {
        status: status.map(str::to_string),
        instance: None,
        limit: Some(limit),
    };
    api::jobs_for(app, caller, &query).await
}

/// Sorts the instances by the column `sort` names (status by default, in
/// [`STATUS_ORDER`]), then by name; returns the column used.
fn sort_instances(instances: &mut [InstanceView], sort: Option<&str>) -> &'static str {
    let column = match sort {
        Some("name") => "name",
        Some("version") => "version",
        Some("channel") => "channel",
        Some("health") => "health",
        _ => "status",
    };
    let rank = |status: &str| {
        STATUS_ORDER
            .iter()
            .position(|known| *known == status)
            .unwrap_or(STATUS_ORDER.len())
    };
    let version = |instance: &InstanceView| {
        instance
            .version
            .as_deref()
            .and_then(|version| semver::Version::parse(version).ok())
    };
    instances.sort_by(|a, b| {
        let first = match column {
            "name" => Ordering::Equal,
            "version" => version(a).cmp(&version(b)),
            "channel" => a.channel.cmp(&b.channel),
            "health" => a.health.cmp(&b.health),
            _ => rank(a.status).cmp(&rank(b.status)),
        };
        first.then_with(|| a.name.cmp(&b.name))
    });
    column
}

impl Counts {
    fn of(instances: &[InstanceView]) -> Counts {
        let count = |value: &dyn Fn(&InstanceView) -> String| {
            let mut counted: BTreeMap<String, usize> = BTreeMap::new();
            for instance in instances {
                *counted.entry(value(instance)).or_default() += 1;
            }
            counted
                .into_iter()
                .map(|(value, instances)| Count { value, instances })
                .collect()
        };
        let none = || "none".to_string();
        Counts {
            status: count(&|instance| instance.status.to_string()),
            version: count(&|instance| instance.version.clone().unwrap_or_else(none)),
            channel: count(&|instance| instance.channel.clone().unwrap_or_else(none)),
        }
    }
}

/// The newest [`AUDIT_TAIL`] records `caller` sees, newest first, read through
/// `api::audit_page` from a little before the head, further back while too few are found.
async fn audit_tail(app: &App, caller: &Caller) -> Result<Vec<serde_json::Value>, ApiError> {
    let head = app.store.audit_head().await?.seq;
    let wanted = AUDIT_TAIL as i64;
    let mut back = wanted;
    loop {
        let from = (head - back).max(0);
        let mut tail = std::collections::VecDeque::with_capacity(AUDIT_TAIL + 1);
        let mut after = Some(from);
        while let Some(cursor) = after {
            let query = AuditQuery {
                after: Some(cursor),
                limit: Some(1000),
                ..AuditQuery::default()
            };
            let page = api::audit_page(app, caller, &query).await?;
            for record in page.records {
                tail.push_back(record);
                if tail.len() > AUDIT_TAIL {
                    tail.pop_front();
                }
            }
            after = page.next_after;
        }
        if tail.len() == AUDIT_TAIL || from == 0 || back >= MAX_TAIL_SCAN {
            return Ok(tail.into_iter().rev().collect());
        }
        back = (back * 10).min(MAX_TAIL_SCAN);
    }
}

/// `GET /instances/{name}`: one instance, its work, jobs and audit records.
async fn instance(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    let viewer = Viewer::of(&caller);
    let page = async {
        let detail = api::instance_detail(&app, &caller, &name).await?;
        let work = Work::read(&app, &caller, |action| {
            action.resource_type == crate::plan::ResourceType::Instance && action.id == name
        })
        .await?;
        Ok::<_, ApiError>(InstancePage { detail, work })
    };
    match page.await {
        Ok(page) => page_response(&app, "instance.html", &name, &viewer, &page),
        Err(error) => error_response(&app, Some(&viewer), &error),
    }
}

/// `GET /jobs/{id}`: one job and its steps with their errors.
async fn job(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let viewer = Viewer::of(&caller);
    match api::job_detail(&app, &caller, &id).await {
        Ok(page) => page_response(&app, "job.html", &job_title(&page), &viewer, &page),
        Err(error) => error_response(&app, Some(&viewer), &error),
    }
}

fn job_title(detail: &JobDetail) -> String {
    format!("{} of {}", detail.job.kind, detail.job.instance)
}

/// `GET /login`: the form.
async fn login_form(State(app): State<Arc<App>>) -> Response {
    login_response(&app, StatusCode::OK, None)
}

/// `POST /login`: a valid token is set as the cookie and the visitor sent to `/`; a wrong one
/// is audited and the form shown again.
async fn login(State(app): State<Arc<App>>, request: Request) -> Response {
    // Read before any await: a request is not `Sync`.
    let refused = auth::Refused::of(&request);
    let secure = forwarded_https(request.headers());
    let token = match Form::<LoginForm>::from_request(request, &app).await {
        Ok(Form(form)) => form.token.trim().to_string(),
        Err(_) => {
            return login_response(&app, StatusCode::BAD_REQUEST, Some("send the form's token"));
        }
    };
    // A valid token is `wf1.<name>.<secret>` in URL-safe base64, so it goes into a cookie
    // as it is; anything else cannot be one and must not reach the header.
    let cookie_safe = token
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || b".-_".contains(&byte));
    let valid = cookie_safe && !token.is_empty() && app.tokens.check(&token).await.is_some();
    if !valid {
        auth::audit_refusal(&app, refused, None, "the token is not valid", 401).await;
        return login_response(
            &app,
            StatusCode::UNAUTHORIZED,
            Some("that token is not valid here"),
        );
    }
    let attributes = if secure { "; Secure" } else { "" };
    let cookie = format!(
        "{}={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age={COOKIE_SECONDS}{attributes}",
        auth::COOKIE
    );
    see_other("/", &cookie)
}

/// `POST /logout`: the cookie is cleared and the visitor sent to the form.
async fn logout(headers: HeaderMap) -> Response {
    let attributes = if forwarded_https(&headers) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{attributes}",
        auth::COOKIE
    );
    see_other("/login", &cookie)
}

/// Whether a proxy in front says the request came over https. The daemon serves plain HTTP
/// itself; a client that claims https falsely only gets a cookie it will not send back.
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

fn see_other(location: &'static str, cookie: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static(location));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match HeaderValue::from_str(cookie) {
        Ok(value) => {
            headers.insert(header::SET_COOKIE, value);
        }
        Err(error) => tracing::warn!(%error, "a login cookie that is no header value"),
    }
    response
}

fn login_response(app: &App, status: StatusCode, error: Option<&'static str>) -> Response {
    let page = LoginPage { error };
    match app.templates.render("login.html", "Sign in", None, &page) {
        Ok(html) => html_response(status, html),
        Err(error) => broken(&error),
    }
}

fn page_response(
    app: &App,
    name: &str,
    title: &str,
    viewer: &Viewer,
    page: &impl Serialize,
) -> Response {
    match app.templates.render(name, title, Some(viewer), page) {
        Ok(html) => html_response(StatusCode::OK, html),
        Err(error) => broken(&error),
    }
}

/// The page of an error an API function returned, with its status code.
fn error_response(app: &App, viewer: Option<&Viewer>, error: &ApiError) -> Response {
    let status = error.code.status();
    let page = ErrorPage {
        code: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error"),
        message: error.message.clone(),
    };
    match app
        .templates
        .render("error.html", page.reason, viewer, &page)
    {
        Ok(html) => html_response(status, html),
        Err(error) => broken(&error),
    }
}

/// A page whose template failed: a bug of this build, so the log says what and the visitor
/// sees only that it failed.
fn broken(error: &minijinja::Error) -> Response {
    tracing::warn!(%error, "rendering a dashboard page");
    html_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "<!doctype html><title>Error</title><p>This page could not be rendered; the daemon's log says why.</p>"
            .to_string(),
    )
}

fn html_response(status: StatusCode, html: String) -> Response {
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if status.is_client_error() || status.is_server_error() {
        response.extensions_mut().insert(Rendered);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        daemon::status::{CommitStatus, JobCounts, JobView, ReconcileStatus},
        http::api::StepView,
    };

    /// Renders page `name` with `page` as the signed-in viewer `ci`, and checks that it holds
    /// every piece of `expected`.
    fn check(name: &str, page: &impl Serialize, expected: &[&str]) -> String {
        let viewer = Viewer {
            token: "ci".into(),
            role: "viewer",
            scope: Some("tenant t1".into()),
        };
        let html = Templates::new()
            .render(name, "Title", Some(&viewer), page)
            .unwrap_or_else(|error| panic!("{name}: {error:#}"));
        for piece in expected {
            assert!(html.contains(piece), "{name} lacks {piece:?}:\n{html}");
        }
        html
    }

    fn instance(name: &str, status: &'static str, version: Option<&str>) -> InstanceView {
        InstanceView {
            name: name.into(),
            status,
            version: version.map(str::to_string),
            health: "unknown".into(),
            job: None,
            waiting: None,
            last_error: None,
            channel: None,
            partner: None,
            tenant: None,
        }
    }

    fn job(id: &str, status: &'static str, error: Option<&str>) -> JobSummary {
        JobSummary {
            id: id.into(),
            kind: "provision",
            instance: "alpha".into(),
            region: "ng-lagos".into(),
            status,
            attempts: 1,
            max_attempts: 3,
            failures: i64::from(error.is_some()),
            commit: None,
            reason: "new instance".into(),
            created_at: "2026-01-31T00:00:00Z".into(),
            not_before: "2026-01-31T00:01:00Z".into(),
            started_at: None,
            finished_at: None,
            worker: None,
            error: error.map(str::to_string),
        }
    }

    fn status(instances: Vec<InstanceView>) -> Status {
        Status {
            format_version: 1,
            at: "2026-01-31T00:00:00Z".into(),
            commit: CommitStatus {
                seen: Some("9ab1".into()),
                applied: None,
                valid: false,
                refusal: Some("a file has an unknown field".into()),
                in_force: Some("3f2c".into()),
                diagnostics: vec![serde_json::json!({
                    "code": "unknown-field", "severity": "error", "file": "instances/a.toml",
                    "line": 3, "column": 1, "message": "unknown field `colour`", "help": null,
                })],
            },
            reconcile: ReconcileStatus {
                paused: true,
                leader: Some("host:1".into()),
                last: None,
                source: None,
            },
            instances,
            jobs: JobCounts::default(),
        }
    }

    fn item(status: &'static str, not_before: Option<&str>) -> WorkItem {
        WorkItem {
            kind: "upgrade",
            resource: "instance",
            id: "alpha".into(),
            status,
            not_before: not_before.map(str::to_string),
            blocked_reason: (status == "blocked").then_some("needs-approval"),
            from: Some("1.0.0".into()),
            to: Some("1.1.0".into()),
            reason: "the channel waits for its window".into(),
        }
    }

    fn work() -> Work {
        let section = |id, items| WorkSection {
            id,
            title: "Section",
            items,
        };
        Work {
            revision: Some("3f2c".into()),
            unavailable: None,
            sections: vec![
                section("ready", vec![]),
                section(
                    "deferred",
                    vec![item("deferred", Some("2026-02-01T01:00:00Z"))],
                ),
                section("blocked", vec![item("blocked", None)]),
            ],
        }
    }

    fn audit() -> Vec<serde_json::Value> {
        vec![serde_json::json!({
            "seq": 7, "id": "x", "at": "2026-01-31T00:00:00.000000Z",
            "actor": {"kind": "token", "id": "anonymous"}, "action": "api.refused",
            "resource": "http/", "result": "failure", "error": "refused: no token",
        })]
    }

    #[test]
    fn the_overview_shows_every_part_it_is_given() {
        let mut alpha = instance("alpha", "active", Some("1.0.0"));
        alpha.job = Some(JobView {
            id: "j1".into(),
            kind: "upgrade",
            status: "running",
            step: Some("migrate".into()),
        });
        alpha.waiting = Some("upgrade to 1.1.0 deferred".into());
        alpha.channel = Some("windowed".into());
        let mut broken = instance("broken", "failed", None);
        broken.last_error = Some("the image is not on the engine".into());
        let page = Overview {
            status: status(vec![alpha, broken]),
            sort: "status",
            counts: Counts::default(),
            work: work(),
            jobs: vec![JobSection {
                id: "recent-jobs",
                title: "Recent",
                jobs: vec![JobRow {
                    job: job("j2", "pending", Some("step `containers` failed")),
                    step: Some("containers".into()),
                }],
            }],
            audit: audit(),
        };
        check(
            "overview.html",
            &page,
            &[
                "Signed in with the token <strong>ci</strong> (viewer, tenant t1 only)",
                r#"id="instance-alpha" data-status="active" data-version="1.0.0" data-channel="windowed""#,
                r#"id="instance-broken" data-status="failed" data-version="""#,
                "the image is not on the engine",
                "step <code>migrate</code>",
                r#"data-not-before="2026-02-01T01:00:00Z""#,
                "until <time datetime=\"2026-02-01T01:00:00Z\">",
                "blocked: needs-approval",
                "1.0.0 → 1.1.0",
                "pending, retrying",
                "step `containers` failed",
                "unknown field `colour`",
                "refused: no token",
                r#"data-paused="yes""#,
            ],
        );
    }

    #[test]
    fn an_empty_fleet_and_a_missing_plan_read_as_such() {
        let mut page_status = status(Vec::new());
        page_status.commit = CommitStatus {
            seen: None,
            applied: None,
            valid: true,
            refusal: None,
            in_force: None,
            diagnostics: Vec::new(),
        };
        let page = Overview {
            status: page_status,
            sort: "status",
            counts: Counts::default(),
            work: Work {
                unavailable: Some("this process holds no revision in force".into()),
                ..Work::default()
            },
            jobs: Vec::new(),
            audit: Vec::new(),
        };
        let html = check(
            "overview.html",
            &page,
            &[
                "No instance yet.",
                "The plan cannot be shown here: this process holds no revision in force.",
                "No record yet.",
            ],
        );
        assert!(
            !html.contains("none</code>"),
            "no `none` printed as a value"
        );
    }

    #[test]
    fn the_instance_and_job_pages_show_their_details() {
        let detail = InstanceDetail {
            instance: instance("alpha", "active", Some("1.0.0")),
            jobs: vec![job("j1", "dead", Some("it broke"))],
            audit: audit(),
        };
        check(
            "instance.html",
            &InstancePage {
                detail,
                work: work(),
            },
            &[r#"data-status="dead""#, "it broke", "2026-02-01T01:00:00Z"],
        );
        let detail = JobDetail {
            job: job("j1", "pending", Some("step `containers` failed")),
            steps: vec![StepView {
                position: 0,
                name: "containers".into(),
                status: "failed",
                attempts: 1,
                started_at: "2026-01-31T00:00:00Z".into(),
                finished_at: None,
                error: Some("the image is not on the engine".into()),
            }],
        };
        check(
            "job.html",
            &detail,
            &[
                r#"data-step="containers" data-status="failed""#,
                "the image is not on the engine",
                "retrying after",
            ],
        );
    }

    #[test]
    fn text_from_the_fleet_is_escaped() {
        let page = ErrorPage {
            code: 404,
            reason: "Not Found",
            message: "no instance `<script>alert(1)</script>`".into(),
        };
        let html = check("error.html", &page, &["&lt;script&gt;alert(1)&lt;"]);
        assert!(!html.contains("<script>"), "{html}");
        check(
            "login.html",
            &LoginPage {
                error: Some("that token is not valid here"),
            },
            &["that token is not valid here.", r#"name="token""#],
        );
    }

    #[test]
    fn instances_are_grouped_by_status_then_sorted_by_name() {
        let mut instances = vec![
            instance("b", "active", Some("1.10.0")),
            instance("c", "failed", Some("1.2.0")),
            instance("a", "active", Some("1.9.0")),
            instance("d", "pending", None),
        ];
        let names = |instances: &[InstanceView]| -> Vec<String> {
            instances
                .iter()
                .map(|instance| instance.name.clone())
                .collect()
        };
        assert_eq!(sort_instances(&mut instances, None), "status");
        assert_eq!(names(&instances), ["c", "d", "a", "b"]);
        assert_eq!(sort_instances(&mut instances, Some("version")), "version");
        assert_eq!(names(&instances), ["d", "c", "a", "b"], "semver order");
        assert_eq!(sort_instances(&mut instances, Some("nonsense")), "status");
    }
}
