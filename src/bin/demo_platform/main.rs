//! `demo-platform`: a tiny stand-in for the platform application, so that tests and the
//! example fleet have something real to deploy (DESIGN.md, "The demo platform").
//! `wakafleet image build` packs it into one image per release.
//!
//! # Contract
//!
//! The driver relies on exactly this.
//!
//! Subcommands:
//! - `demo-platform serve`: the app (every endpoint below).
//! - `demo-platform worker`: the worker; beats every 2 s (upserts `worker_heartbeat(id = 1,
//!   at = now())`) and serves only the `/health*` endpoints.
//! - `demo-platform migrate`: one-shot; waits up to 60 s for the database to accept
//!   connections, applies the migrations, exits 0, or exits 1 with the error on stderr.
//!
//! `serve` and `worker` first do what `migrate` does (concurrent runs wait for each other on
//! an advisory lock, and each migration is applied once), and only then listen: a process of
//! a release never runs on an older schema, and one whose migration fails exits 1 with the
//! error on stderr before it ever answers. Once started, they keep serving while the database
//! is away, reporting it as failing.
//! - `demo-platform healthcheck`: `GET http://127.0.0.1:$PORT/health`; exits 0 on HTTP 200,
//!   else 1 (the image's Docker `HEALTHCHECK`).
//!
//! Environment:
//! - `DATABASE_URL`: required by serve, worker and migrate. Never logged.
//! - `REDIS_URL`: optional (`redis://[[user]:password@]host[:port][/db]`); unset, the redis
//!   check is `skip`.
//! - `PORT`: the HTTP port, 8080 when unset.
//! - `WAKAFLEET_INSTANCE`: the instance's name, reported by `/health/status` (`null` when unset).
//! - Baked into the image by `wakafleet image build`: `DEMO_VERSION` (its release; `/version`
//!   says `unknown` when unset), `DEMO_MIGRATIONS` (comma-separated: every migration up to and
//!   including its release, in release order) and `DEMO_FAIL_HEALTH` (`1` makes `/health`
//!   report `unhealthy` with HTTP 503).
//!
//! Migrations: table `schema_migrations(version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT
//! NULL DEFAULT now())`. `0000_base` always comes first and creates `items(id BIGSERIAL
//! PRIMARY KEY, name TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
//! `platform_settings(key TEXT PRIMARY KEY, value TEXT NOT NULL)` and `worker_heartbeat(id INT
//! PRIMARY KEY, at TIMESTAMPTZ NOT NULL)`; each migration `<name>` of `DEMO_MIGRATIONS` creates
//! table `"m_<name>"(id INT)`. Each is applied in its own transaction together with its row in
//! `schema_migrations`; applied ones are skipped, so `migrate` is safe to rerun.
//!
//! HTTP (JSON):
//! - `GET /health` → `{"status":"healthy"|"degraded"|"unhealthy","checks":{"database":
//!   "pass"|"fail","redis":"pass"|"fail"|"skip","workers":"pass"|"fail","storage":"pass"},
//!   "timestamp":RFC3339}`; 200 when healthy, else 503. `database` passes when a query works
//!   and `0000_base` and every migration of `DEMO_MIGRATIONS` are recorded; `workers` passes
//!   when `worker_heartbeat` was updated in the last 30 s. A failing database makes the status
//!   `unhealthy`, another failing check `degraded`; `DEMO_FAIL_HEALTH=1` makes it `unhealthy`
//!   whatever the checks say.
//! - `GET /health/database`, `GET /health/redis` → `{"status":"pass"|"fail"|"skip",
//!   "error"?:"..."}`; 200 on pass and skip, 503 on fail. The redis check is a plain TCP
//!   exchange (`AUTH` when the URL has a password, then `PING`, expecting `+PONG`).
//! - `GET /health/status` → 200 `{"status":...,"version":...,"instance":...,"migrations":
//!   [the applied ones, in the order applied],"checks":{...}}`.
//! - `GET /version` → `{"version":"..."}` (serve only).
//! - Items, for smoke tests (serve only): `POST /items {"name":...}` → 201
//!   `{"id":..,"name":..}`; `GET /items[?name=N]` → 200 `[{"id":..,"name":..},...]` by id
//!   (only those named `N`); `GET /items/{id}`, `PUT /items/{id} {"name":...}` → 200
//!   `{"id":..,"name":..}`; `DELETE /items/{id}` → 204; 404 `{"error":"not
//!   found"}` when missing. When `platform_settings` has `maintenance` = `on`, they answer 503
//!   `{"error":"maintenance"}`; a database error is 503 `{"error":"database: ..."}`.
//!
//! Logs go to stderr through tracing, at `info`. SIGTERM and Ctrl-C stop serve and worker
//! gracefully.

mod http;
mod migrations;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use sqlx::{PgPool, postgres::PgPoolOptions};

/// A tiny stand-in for the platform application, for wakafleet's tests and example fleet.
#[derive(Debug, Parser)]
#[command(name = "demo-platform", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the app: health, version and items.
    Serve,
    /// Beat every 2 s and serve the health endpoints.
    Worker,
    /// Apply the migrations and exit.
    Migrate,
    /// Exit 0 when GET /health on 127.0.0.1:$PORT answers 200, else 1.
    Healthcheck,
}

/// What the process learns from its environment, `DATABASE_URL` apart (a secret, passed
/// straight to the pool).
#[derive(Clone, Debug)]
pub struct Config {
    pub redis_url: Option<String>,
    pub port: u16,
    pub instance: Option<String>,
    pub version: String,
    /// `0000_base` first, then `DEMO_MIGRATIONS`.
    pub migrations: Vec<String>,
    pub fail_health: bool,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .init();
    let result = match cli.command {
        Command::Healthcheck => healthcheck(),
        command => run(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode, Error> {
    let config = config()?;
    let database_url = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set: it names the platform's database")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        migrate(&database_url, &config).await?;
        match command {
            Command::Migrate => {}
            Command::Serve => {
                let pool = lazy_pool(&database_url)?;
                http::serve(http::App { pool, config }, http::app_routes()).await?;
            }
            Command::Worker => {
                let pool = lazy_pool(&database_url)?;
                let heartbeat = beat(pool.clone());
                let server = http::serve(http::App { pool, config }, http::health_routes());
                tokio::select! {
                    result = server => result?,
                    never = heartbeat => match never {},
                }
            }
            Command::Healthcheck => unreachable!("healthcheck runs without a runtime"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Brings the database's schema to this release.
async fn migrate(database_url: &str, config: &Config) -> Result<(), Error> {
    let pool = wait_for_database(database_url, Duration::from_secs(60)).await?;
    let applied = migrations::apply(&pool, &config.migrations).await?;
    tracing::info!(applied = applied.len(), "migrations up to date");
    pool.close().await;
    Ok(())
}

fn config() -> Result<Config, Error> {
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    Ok(Config {
        redis_url: var("REDIS_URL"),
        port: port()?,
        instance: var("WAKAFLEET_INSTANCE"),
        version: var("DEMO_VERSION").unwrap_or_else(|| "unknown".to_string()),
        migrations: migrations::list(var("DEMO_MIGRATIONS").as_deref().unwrap_or("")),
        fail_health: var("DEMO_FAIL_HEALTH").as_deref() == Some("1"),
    })
}

fn port() -> Result<u16, Error> {
    match std::env::var("PORT") {
        Ok(text) if !text.is_empty() => Ok(text
            .parse()
            .map_err(|_| format!("PORT `{text}` is not a port number"))?),
        _ => Ok(8080),
    }
}

/// A pool that connects on first use, so the app serves (and reports the database as
/// failing) while the database is away.
fn lazy_pool(url: &str) -> Result<PgPool, Error> {
    Ok(PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(url)?)
}

/// Connects, retrying for `patience` while the server does not accept connections yet
/// (unreachable, starting up, full). Other errors, such as a wrong password, fail at once.
async fn wait_for_database(url: &str, patience: Duration) -> Result<PgPool, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let error = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(error) => error,
        };
        let transient = match &error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
            sqlx::Error::Database(error) => {
                matches!(error.code().as_deref(), Some("57P03" | "53300"))
            }
            _ => false,
        };
        if !transient || tokio::time::Instant::now() >= deadline {
            return Err(error);
        }
        tracing::info!(%error, "waiting for the database");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Upserts the heartbeat every 2 s, forever.
async fn beat(pool: PgPool) -> std::convert::Infallible {
    let mut interval = tokio::time::interval(Duration::from_secs(2));
    let mut failing = false;
    loop {
        interval.tick().await;
        let result = sqlx::query(
            "INSERT INTO worker_heartbeat (id, at) VALUES (1, now()) \
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        )
        .execute(&pool)
        .await;
        match result {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("heartbeat recorded again");
            }
            Ok(_) => tracing::debug!("heartbeat"),
            Err(error) => {
                // Warn once per outage, not every 2 s.
                if !failing {
                    tracing::warn!(%error, "cannot record the heartbeat");
                }
                failing = true;
            }
        }
    }
}

/// `GET /health` on the local port with a bare HTTP/1.0 request: the image has no curl.
fn healthcheck() -> Result<ExitCode, Error> {
    let port = port()?;
    let timeout = Duration::from_secs(3);
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let status = response.lines().next().unwrap_or_default();
    let ok = status.split(' ').nth(1) == Some("200");
    // Docker keeps what a health check prints; the body says which check failed.
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body);
    println!("{status} {}", body.unwrap_or_default());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
