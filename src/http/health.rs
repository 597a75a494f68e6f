//! Health in the provisioning runbook's shape (step 7): `{"status", "checks", "timestamp"}`,
//! 200 when healthy or degraded, 503 when unhealthy. No token is needed.
//!
//! - `/health`: the process serves, and its store (and Redis, when used) answer;
//! - `/health/database`: the store;
//! - `/health/redis`: the Redis queue (404 with the in-process queue);
//! - `/health/status`: the reconcile loop: who leads, the last pass, the commits seen and
//!   applied, paused or not. A pass older than three intervals is unhealthy; a head that
//!   cannot be applied, or a pause, is degraded.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::Utc;
use serde::Serialize;

use crate::{
    daemon::{control, status},
    http::{ApiError, App},
    queue::Queue,
};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/health", get(health))
        .route("/health/database", get(database))
        .route("/health/redis", get(redis))
        .route("/health/status", get(reconcile))
}

/// One check's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Pass,
    Warn,
    Fail,
}

/// A health answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// healthy | degraded | unhealthy
    pub status: &'static str,
    pub checks: std::collections::BTreeMap<&'static str, Check>,
    pub timestamp: String,
    /// `/health/status` only: what the reconcile loop reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<ReconcileHealth>,
}

/// The reconcile loop, as `/health/status` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReconcileHealth {
    pub leader: Option<String>,
    /// Whether this process leads.
    pub leading: bool,
    pub last: Option<String>,
    pub paused: bool,
    pub seen: Option<String>,
    pub applied: Option<String>,
    pub valid: bool,
}

/// How long a pass may be old before the loop is unhealthy, at the least.
const STALE_FLOOR: Duration = Duration::from_secs(300);

fn answer(
    checks: std::collections::BTreeMap<&'static str, Check>,
    reconcile: Option<ReconcileHealth>,
) -> Response {
    let worst = checks.values().copied().max().unwrap_or(Check::Pass);
    let (status, code) = match worst {
        Check::Pass => ("healthy", StatusCode::OK),
        Check::Warn => ("degraded", StatusCode::OK),
        Check::Fail => ("unhealthy", StatusCode::SERVICE_UNAVAILABLE),
    };
    let body = Health {
        status,
        checks,
        timestamp: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        reconcile,
    };
    // A 503 here is the answer, not an error: it keeps its own body.
    let mut response = (code, Json(body)).into_response();
    response
        .extensions_mut()
        .insert(crate::http::error::Rendered);
    response
}

async fn store_check(app: &App) -> Check {
    match app.store.generation().await {
        Ok(_) => Check::Pass,
        Err(error) => {
            tracing::warn!(%error, "health: the store does not answer");
            Check::Fail
        }
    }
}

async fn redis_check(queue: &Queue) -> Option<Check> {
    let Queue::Redis(_) = queue else {
        return None;
    };
    Some(match queue.ping().await {
        Ok(()) => Check::Pass,
        Err(error) => {
            tracing::warn!(%error, "health: Redis does not answer");
            Check::Fail
        }
    })
}

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "healthy or degraded", body = Health), (status = 503, description = "unhealthy", body = Health)))]
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let mut checks = std::collections::BTreeMap::new();
    checks.insert("database", store_check(&app).await);
    if let Some(redis) = redis_check(&app.queue).await {
        checks.insert("redis", redis);
    }
    answer(checks, None)
}

#[utoipa::path(get, path = "/health/database", tag = "health",
    responses((status = 200, description = "healthy or degraded", body = Health), (status = 503, description = "unhealthy", body = Health)))]
pub async fn database(State(app): State<Arc<App>>) -> Response {
    let mut checks = std::collections::BTreeMap::new();
    checks.insert("database", store_check(&app).await);
    answer(checks, None)
}

#[utoipa::path(get, path = "/health/redis", tag = "health",
    responses((status = 200, description = "healthy or degraded", body = Health), (status = 503, description = "unhealthy", body = Health),
        (status = 404, description = "the queue is in-process", body = crate::http::error::ErrorResponse)))]
pub async fn redis(State(app): State<Arc<App>>) -> Response {
    match redis_check(&app.queue).await {
        Some(check) => answer([("redis", check)].into_iter().collect(), None),
        None => ApiError::not_found("this daemon's queue is in-process: no Redis is used")
            .into_response(),
    }
}

#[utoipa::path(get, path = "/health/status", tag = "health",
    responses((status = 200, description = "healthy or degraded", body = Health), (status = 503, description = "unhealthy", body = Health)))]
pub async fn reconcile(State(app): State<Arc<App>>) -> Response {
    let mut checks = std::collections::BTreeMap::new();
    let now = Utc::now();
    let status = match status::read(&app.store, now).await {
        Ok(status) => status,
        Err(error) => {
            tracing::warn!(%error, "health: the store does not answer");
            checks.insert("database", Check::Fail);
            return answer(checks, None);
        }
    };
    checks.insert("database", Check::Pass);
    let stale = STALE_FLOOR.max(app.interval * 3);
    let last = status
        .reconcile
        .last
        .as_deref()
        .and_then(|last| chrono::DateTime::parse_from_rfc3339(last).ok())
        .map(|last| last.with_timezone(&Utc));
    let paused = match control::pause(&app.store).await {
        Ok(pause) => pause.paused,
        Err(_) => status.reconcile.paused,
    };
    let fresh = last.is_some_and(|last| (now - last).to_std().unwrap_or_default() <= stale);
    checks.insert(
        "reconcile",
        match (fresh || paused, paused) {
            (false, _) => Check::Fail,
            (true, true) => Check::Warn,
            (true, false) => Check::Pass,
        },
    );
    checks.insert(
        "commit",
        if status.commit.valid {
            Check::Pass
        } else {
            Check::Warn
        },
    );
    let reconcile = ReconcileHealth {
        leader: status.reconcile.leader,
        leading: app.control.is_leading(),
        last: status.reconcile.last,
        paused,
        seen: status.commit.seen,
        applied: status.commit.applied,
        valid: status.commit.valid,
    };
    answer(checks, Some(reconcile))
}
