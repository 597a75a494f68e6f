//! The demo platform's HTTP side: the runbook's health endpoints, `/version`, and items for
//! smoke tests. The contract is at the top of `main.rs`.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::{Config, migrations};

pub struct App {
    pub pool: PgPool,
    pub config: Config,
}

type Shared = Arc<App>;

/// The health endpoints, what the worker serves.
pub fn health_routes() -> Router<Shared> {
    Router::new()
        .route("/health", get(health))
        .route("/health/database", get(database_health))
        .route("/health/redis", get(redis_health))
        .route("/health/status", get(status))
}

/// Everything the app serves.
pub fn app_routes() -> Router<Shared> {
    health_routes()
        .route("/version", get(version))
        .route("/items", get(list_items).post(create_item))
        .route(
            "/items/{id}",
            get(get_item).put(update_item).delete(delete_item),
        )
}

/// Serves `routes` on 0.0.0.0:$PORT until SIGTERM or Ctrl-C.
pub async fn serve(app: App, routes: Router<Shared>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", app.config.port)).await?;
    tracing::info!(port = app.config.port, version = %app.config.version, "listening");
    axum::serve(listener, routes.with_state(Arc::new(app)))
        .with_graceful_shutdown(shutdown())
        .await
}

async fn shutdown() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq)]
enum Check {
    Pass,
    Fail(String),
    Skip,
}

impl Check {
    fn word(&self) -> &'static str {
        match self {
            Check::Pass => "pass",
            Check::Fail(_) => "fail",
            Check::Skip => "skip",
        }
    }

    fn of<E: std::fmt::Display>(result: Result<(), E>) -> Check {
        match result {
            Ok(()) => Check::Pass,
            Err(error) => Check::Fail(error.to_string()),
        }
    }

    /// `{"status", "error"?}`, 503 on fail.
    fn response(&self) -> Response {
        match self {
            Check::Fail(error) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "fail", "error": error})),
            )
                .into_response(),
            check => Json(json!({"status": check.word()})).into_response(),
        }
    }
}

struct Checks {
    database: Check,
    redis: Check,
    workers: Check,
    /// The applied migrations, empty when the database cannot say.
    migrations: Vec<String>,
}

/// Checks run at most this long.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl Checks {
    async fn run(app: &App) -> Checks {
        let (database, redis, workers) =
            tokio::join!(check_database(app), check_redis(app), check_workers(app));
        let (database, migrations) = match database {
            Ok(applied) => (Check::Pass, applied),
            Err((error, applied)) => (Check::Fail(error), applied),
        };
        Checks {
            database,
            redis,
            workers,
            migrations,
        }
    }

    fn status(&self, app: &App) -> &'static str {
        if app.config.fail_health || matches!(self.database, Check::Fail(_)) {
            "unhealthy"
        } else if [&self.redis, &self.workers]
            .iter()
            .any(|check| matches!(check, Check::Fail(_)))
        {
            "degraded"
        } else {
            "healthy"
        }
    }

    fn json(&self) -> Value {
        json!({
            "database": self.database.word(),
            "redis": self.redis.word(),
            "workers": self.workers.word(),
            "storage": "pass",
        })
    }
}

async fn health(State(app): State<Shared>) -> Response {
    let checks = Checks::run(&app).await;
    let status = checks.status(&app);
    let code = if status == "healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": status,
        "checks": checks.json(),
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
    });
    (code, Json(body)).into_response()
}

async fn database_health(State(app): State<Shared>) -> Response {
    match check_database(&app).await {
        Ok(_) => Check::Pass,
        Err((error, _)) => Check::Fail(error),
    }
    .response()
}

async fn redis_health(State(app): State<Shared>) -> Response {
    check_redis(&app).await.response()
}

async fn status(State(app): State<Shared>) -> Json<Value> {
    let checks = Checks::run(&app).await;
    Json(json!({
        "status": checks.status(&app),
        "version": app.config.version,
        "instance": app.config.instance,
        "migrations": checks.migrations,
        "checks": checks.json(),
    }))
}

async fn version(State(app): State<Shared>) -> Json<Value> {
    Json(json!({"version": app.config.version}))
}

/// Passes when a query works and every expected migration is recorded; returns the applied
/// migrations either way (empty when they cannot be read).
async fn check_database(app: &App) -> Result<Vec<String>, (String, Vec<String>)> {
    let applied = match tokio::time::timeout(CHECK_TIMEOUT, migrations::applied(&app.pool)).await {
        Ok(Ok(applied)) => applied,
        Ok(Err(error)) => return Err((error.to_string(), Vec::new())),
        Err(_) => return Err(("the database did not answer in time".into(), Vec::new())),
    };
    let missing: Vec<&str> = app
        .config
        .migrations
        .iter()
        .filter(|name| !applied.contains(name))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(applied)
    } else {
        let error = format!("migrations not applied: {}", missing.join(", "));
        Err((error, applied))
    }
}

async fn check_workers(app: &App) -> Check {
    let query = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM worker_heartbeat \
         WHERE id = 1 AND at > now() - interval '30 seconds')",
    )
    .fetch_one(&app.pool);
    match tokio::time::timeout(CHECK_TIMEOUT, query).await {
        Ok(Ok(true)) => Check::Pass,
        Ok(Ok(false)) => Check::Fail("no heartbeat in the last 30 s".into()),
        Ok(Err(error)) => Check::Fail(error.to_string()),
        Err(_) => Check::Fail("the database did not answer in time".into()),
    }
}

async fn check_redis(app: &App) -> Check {
    let Some(url) = &app.config.redis_url else {
        return Check::Skip;
    };
    match tokio::time::timeout(CHECK_TIMEOUT, ping_redis(url)).await {
        Ok(result) => Check::of(result),
        Err(_) => Check::Fail("redis did not answer in time".into()),
    }
}

/// `AUTH` (when the URL has a password) and `PING` over plain TCP.
async fn ping_redis(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or("REDIS_URL must start with redis:// (TLS is not supported)")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (credentials, host) = match authority.rsplit_once('@') {
        Some((credentials, host)) => (Some(credentials), host),
        None => (None, authority),
    };
    let address = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:6379")
    };
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|error| format!("connecting to {address}: {error}"))?;
    let mut stream = BufReader::new(stream);
    if let Some(credentials) = credentials {
        let (user, password) = match credentials.split_once(':') {
            Some((user, password)) => (percent_decode(user), percent_decode(password)),
            None => (String::new(), percent_decode(credentials)),
        };
        let mut words = vec!["AUTH"];
        if !user.is_empty() {
            words.push(&user);
        }
        words.push(&password);
        let reply = exchange(&mut stream, &words).await?;
        if reply != "+OK" {
            // The reply of a failed AUTH names no secret.
            return Err(format!("AUTH failed: {reply}"));
        }
    }
    match exchange(&mut stream, &["PING"]).await? {
        reply if reply == "+PONG" => Ok(()),
        reply => Err(format!("PING answered `{reply}`")),
    }
}

/// Sends one command as a RESP array and reads one line of reply.
async fn exchange(
    stream: &mut BufReader<tokio::net::TcpStream>,
    words: &[&str],
) -> Result<String, String> {
    let mut command = format!("*{}\r\n", words.len());
    for word in words {
        command += &format!("${}\r\n{word}\r\n", word.len());
    }
    let io = |error: std::io::Error| format!("talking to redis: {error}");
    stream
        .get_mut()
        .write_all(command.as_bytes())
        .await
        .map_err(io)?;
    let mut line = String::new();
    let mut limited = (&mut *stream).take(4096);
    limited.read_line(&mut line).await.map_err(io)?;
    Ok(line.trim_end().to_string())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 3;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the item endpoints answer besides success; handlers use `?`.
enum ApiError {
    Maintenance,
    NotFound,
    Database(sqlx::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> ApiError {
        ApiError::Database(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, error) = match self {
            ApiError::Maintenance => (StatusCode::SERVICE_UNAVAILABLE, "maintenance".to_string()),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not found".to_string()),
            ApiError::Database(error) => {
                tracing::warn!(%error, "database error");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("database: {error}"),
                )
            }
        };
        (code, Json(json!({"error": error}))).into_response()
    }
}

#[derive(Debug, Serialize)]
struct Item {
    id: i64,
    name: String,
}

impl From<(i64, String)> for Item {
    fn from((id, name): (i64, String)) -> Item {
        Item { id, name }
    }
}

#[derive(Debug, Deserialize)]
struct NewItem {
    name: String,
}

/// Refuses item requests while `platform_settings` says `maintenance` = `on`.
async fn open(app: &App) -> Result<(), ApiError> {
    let mode: Option<String> =
        sqlx::query_scalar("SELECT value FROM platform_settings WHERE key = 'maintenance'")
            .fetch_optional(&app.pool)
            .await?;
    match mode.as_deref() {
        Some("on") => Err(ApiError::Maintenance),
        _ => Ok(()),
    }
}

/// `GET /items?name=N`: only the items named `N`.
#[derive(Debug, Deserialize)]
struct ItemFilter {
    name: Option<String>,
}

async fn list_items(
    State(app): State<Shared>,
    Query(filter): Query<ItemFilter>,
) -> Result<Json<Vec<Item>>, ApiError> {
    open(&app).await?;
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, name FROM items WHERE $1::text IS NULL OR name = $1 ORDER BY id",
    )
    .bind(filter.name)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(rows.into_iter().map(Item::from).collect()))
}

async fn create_item(
    State(app): State<Shared>,
    Json(new): Json<NewItem>,
) -> Result<(StatusCode, Json<Item>), ApiError> {
    open(&app).await?;
    let row: (i64, String) =
        sqlx::query_as("INSERT INTO items (name) VALUES ($1) RETURNING id, name")
            .bind(new.name)
            .fetch_one(&app.pool)
            .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

async fn get_item(State(app): State<Shared>, Path(id): Path<i64>) -> Result<Json<Item>, ApiError> {
    open(&app).await?;
    let row: Option<(i64, String)> = sqlx::query_as("SELECT id, name FROM items WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.pool)
        .await?;
    row.map(|row| Json(row.into())).ok_or(ApiError::NotFound)
}

async fn update_item(
    State(app): State<Shared>,
    Path(id): Path<i64>,
    Json(new): Json<NewItem>,
) -> Result<Json<Item>, ApiError> {
    open(&app).await?;
    let row: Option<(i64, String)> =
        sqlx::query_as("UPDATE items SET name = $2 WHERE id = $1 RETURNING id, name")
            .bind(id)
            .bind(new.name)
            .fetch_optional(&app.pool)
            .await?;
    row.map(|row| Json(row.into())).ok_or(ApiError::NotFound)
}

async fn delete_item(
    State(app): State<Shared>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    open(&app).await?;
    let deleted = sqlx::query("DELETE FROM items WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("p%40ss%2"), "p@ss%2");
    }
}
