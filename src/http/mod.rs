//! The daemon's HTTP face: health, `/metrics`, the `/api/v1` JSON API with its OpenAPI
//! document, the GitHub webhook and the dashboard. Handlers are thin: they read the store
//! and the daemon's `Control`, and change nothing but through the operator verbs the store
//! already has (retry, cancel, pause).
//!
//! Every response carries an `X-Request-Id`; every error is the seeds' shape
//! `{"error":{"code","message","details","requestId","timestamp"}}`, rendered in one place
//! (`finish`), whoever refused the request. `/api/v1` and the dashboard need a token
//! (`auth`); every call is rate limited (`limit`), per token or, without a valid one, per
//! address. Health needs no token; the webhook proves itself with its HMAC instead.
//!
//! `mod.rs` holds the application state, the router and the middleware every request goes
//! through; `api` the JSON routes, `health`, `webhook`, `dashboard`, `auth`, `limit` and
//! `error` what their names say, `openapi` the document.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod limit;
pub mod openapi;
pub mod webhook;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, header},
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    daemon::control::Control, metrics::Metrics, queue::Queue, secret::Secret, store::Store,
};

pub use error::ApiError;

/// The `[api]` table of the daemon's configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The address to listen on; `127.0.0.1:8080` by default.
    pub listen: Option<String>,
    #[serde(default)]
    pub tokens: Vec<auth::TokenEntry>,
    #[serde(default)]
    pub rate_limit: limit::Config,
}

/// Everything a handler may use.
pub struct App {
    pub store: Arc<Store>,
    /// The queue, for `/health/redis` when it is Redis.
    pub queue: Arc<Queue>,
    pub control: Arc<Control>,
    pub metrics: Arc<Metrics>,
    /// This process, as the leader would be named (`host:pid`).
    pub holder: String,
    /// The daemon's tick: a pass older than three is unhealthy.
    pub interval: Duration,
    /// The branch the daemon follows, for the webhook's pushes; none for a folder.
    pub branch: Option<String>,
    /// The webhook's HMAC secret, resolved from its `env:` reference.
    pub webhook_secret: Option<Secret>,
    pub tokens: auth::Tokens,
    pub limits: limit::Limiters,
    pub templates: dashboard::Templates,
    /// The status and instance list, rendered while nothing they show changes.
    pub cache: api::Cache,
}

/// The id of a request, as its response's `X-Request-Id` and its errors carry it.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The route a request matched, carried from the router to `finish` for the metrics.
#[derive(Clone, Debug)]
struct Route(String);

/// Every route of the daemon.
pub fn router(app: Arc<App>) -> Router {
    let authenticated = Router::new()
        .merge(api::routes())
        .merge(dashboard::routes())
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            auth::require,
        ));
    let open = Router::new()
        .merge(health::routes())
        .merge(webhook::routes())
        .merge(dashboard::login_routes())
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            limit::per_address,
        ));
    Router::new()
        .merge(authenticated)
        .merge(open)
        .route_layer(middleware::from_fn(mark_route))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(Arc::clone(&app), finish))
        .with_state(app)
}

/// Serves the router on `listener` until `stop`; requests in flight are finished.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let sweeper = {
        let (app, stop) = (Arc::clone(&app), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(60)) => app.limits.forget_idle(),
                }
            }
        })
    };
    let router = router(app);
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await;
    sweeper.abort();
    served
}

/// `GET /metrics`: Prometheus's text format; the fleet's figures need an unscoped token.
async fn metrics(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<auth::Caller>,
) -> Result<Response, ApiError> {
    if caller.scope != auth::Scope::All {
        return Err(caller
            .forbid(
                &app,
                "api.refused",
                "http/metrics",
                "the metrics cover the whole fleet: they need a token without a partner or tenant scope",
            )
            .await);
    }
    // A store that does not answer is a figure too: `wakafleet_store_up 0`, with this
    // process's own metrics still served.
    let fleet = match api::current(&app).await {
        Ok((status, _, _)) => app
            .metrics
            .fleet(&app.store, status)
            .await
            .map_err(ApiError::from),
        Err(error) => Err(error),
    };
    let fleet = fleet
        .inspect_err(
            |error| tracing::warn!(error = %error.message, "/metrics: the store did not answer"),
        )
        .ok();
    let text = app.metrics.render(fleet);
    let mut response = Response::new(axum::body::Body::from(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

/// Copies the route a request matched into its response, for `finish`.
async fn mark_route(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| Route(path.as_str().to_string()));
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// What every request goes through last: its id, the error body in the seeds' shape, and
/// the count of requests by route and code.
async fn finish(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    // Label values stay bounded: a method of a client's own invention is `other`.
    let method = match request.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    request.extensions_mut().insert(RequestId(id.clone()));
    let response = next.run(request).await;
    // Whatever a request but a read did (a pause, a retry, a webhook's push) shows in the
    // next status at once.
    if !matches!(method, "GET" | "HEAD") {
        app.cache.invalidate();
    }
    let response = error::render(response, &id).await;
    let route = response
        .extensions()
        .get::<Route>()
        .map_or("unmatched", |route| route.0.as_str());
    app.metrics
        .http_request(route, method, response.status().as_u16());
    let mut response = response;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
