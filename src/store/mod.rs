//! The store: what wakafleet remembers (the actual state of instances, the fleet commits it
//! has seen and applied, jobs and their steps, schedules) and the audit log that proves what
//! it did.
//!
//! One interface over two backends through sqlx's `Any` driver: PostgreSQL in production and
//! SQLite, one file, as the embedded default. Both run the same SQL; the schema differs only
//! where the databases do (migrations under `migrations/postgres/` and `migrations/sqlite/`,
//! embedded in the binary and applied when the store is opened). Times are stored as
//! microseconds since the Unix epoch, identically on both.

pub mod audit;
pub mod checkpoint;
pub mod daemon_state;
pub mod jobs;
pub mod leadership;
pub mod metrics;
pub mod secrets;
pub mod state;

mod migrate;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use sqlx::{
    Any, AnyPool, Arguments, Encode, Type,
    any::{AnyArguments, AnyPoolOptions},
};

use crate::secret::{Secret, redact_url};

/// Where the store is when neither `--store` nor `WAKAFLEET_STORE` says.
pub const DEFAULT_URL: &str = "sqlite://.wakafleet/state.db";

/// The database behind a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// The backend a store URL names.
    pub fn of_url(url: &str) -> Option<Backend> {
        let scheme = url.split_once(':')?.0;
        match scheme {
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "sqlite" => Some(Backend::Sqlite),
            _ => None,
        }
    }
}

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long to keep retrying, with exponential backoff, while the database cannot be
    /// reached: at start and for every write.
    pub retry_for: Duration,
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long a job waits after its first failed attempt; the wait doubles with each
    /// attempt after that, up to an hour, plus jitter.
    pub job_backoff: chrono::TimeDelta,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retry_for: Duration::from_secs(30),
            max_connections: 8,
            job_backoff: chrono::TimeDelta::seconds(30),
        }
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL as shown: [`Error::url`] redacts it.
    #[error("`{0}` is not a store URL: use postgres://USER@HOST/DATABASE or sqlite://PATH")]
    Url(String),
    #[error(
        "the store at {url} could not be reached for {waited:?} ({attempts} attempts); is the database running?"
    )]
    Unreachable {
        url: String,
        waited: Duration,
        attempts: u32,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "{path} is not a wakafleet store: the file is not a usable SQLite database ({reason}); move it aside to start afresh, or restore it from a backup"
    )]
    Corrupt { path: String, reason: String },
    #[error("the store at {url} could not be opened")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the store at {url} could not be migrated to this version of wakafleet")]
    Migrate {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("a query on the store failed")]
    Sql(#[from] sqlx::Error),
    #[error("the store holds a value wakafleet cannot read: {0}")]
    Stored(String),
    #[error("{0}")]
    Invalid(String),
    /// A worker's write for a job it no longer holds.
    #[error("job {job}: attempt {attempt} no longer holds the job ({reason}); nothing was written")]
    Fenced {
        job: String,
        attempt: i64,
        reason: String,
    },
    /// A step was to start on a job asked to stop.
    #[error("job {0} is being cancelled: no step starts")]
    Cancelling(String),
    /// A leader's write, or the renewal of its term, after a later term began.
    #[error(
        "the leader of epoch {epoch} was deposed: the store is at epoch {current}; nothing was written"
    )]
    Deposed { epoch: i64, current: i64 },
}

impl Error {
    /// A URL that names no store, its password redacted.
    fn url(url: &str) -> Error {
        Error::Url(redact_url(url))
    }
}

/// The store.
#[derive(Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The URL without its password, for messages.
    url: String,
    options: Options,
    appender: audit::Appender,
}

impl Store {
    /// Opens the store at `url`, waiting up to `options.retry_for` for the database, and
    /// applies any migration this build has that the store lacks.
    pub async fn open(url: &Secret, options: Options) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let url = url.expose();
        let backend = Backend::of_url(url).ok_or_else(|| Error::url(url))?;
        let shown = redact_url(url);
        let connect_url = match backend {
            Backend::Sqlite => sqlite_url(url)?,
            Backend::Postgres => url.to_string(),
        };
        if backend == Backend::Sqlite {
            prepare_sqlite(&connect_url)
                .await
                .map_err(|error| classify(Error::Sql(error), backend, url, &shown))?;
        }
        let pool_options = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_secs(5));
        let pool = retry(&shown, &options, || {
            pool_options.clone().connect(&connect_url)
        })
        .await
        .map_err(|error| classify(error, backend, url, &shown))?;
        let store = Store {
            pool,
            backend,
            url: shown,
            options,
            appender: audit::Appender::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The store's URL without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool, for the modules of the store.
    pub(crate) fn options(&self) -> &Options {
        &self.options
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Waits for the audit appends under way, those whose callers stopped waiting included,
    /// then closes every connection.
    pub async fn close(&self) {
        self.appender.finish().await;
        self.pool.close().await;
    }

    /// Runs `operation` until it succeeds, fails for good or `retry_for` has passed.
    pub(crate) async fn retrying<T, F, Fut>(&self, operation: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        retry(&self.url, &self.options, operation).await
    }
}

/// Opens a SQLite file once on its own, so a file that is not a database is reported as
/// such (a pool would only time out), and switches it to write-ahead logging, which the file
/// remembers: readers never wait for the writer.
async fn prepare_sqlite(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::{Connection, Executor};
    let mut connection = sqlx::AnyConnection::connect(url).await?;
    connection.execute("PRAGMA journal_mode = WAL").await?;
    connection.close().await
}

/// Runs `operation` with exponential backoff while it fails with a transient error, for at
/// most `options.retry_for`; the last error is returned as [`Error::Unreachable`] when the
/// database stayed away, as it is otherwise.
async fn retry<T, F, Fut>(url: &str, options: &Options, operation: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let started = std::time::Instant::now();
    let mut attempts = 0_u32;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_total_delay(Some(options.retry_for))
        .without_max_times();
    let result = operation
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|error| is_transient(error) && started.elapsed() < options.retry_for)
        .notify(|error, delay| {
            attempts += 1;
            tracing::warn!(store = url, %error, retry_in = ?delay, "the store is unreachable; retrying");
        })
        .await;
    result.map_err(|source| {
        if is_transient(&source) {
            Error::Unreachable {
                url: url.to_string(),
                waited: started.elapsed(),
                attempts: attempts + 1,
                source,
            }
        } else {
            Error::Sql(source)
        }
    })
}

/// Whether an error may go away by itself: the database is down, starting, shutting down,
/// busy or out of connections.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(database) => {
            let code = database.code().unwrap_or_default();
            // PostgreSQL: connection exceptions (08), cannot connect now, admin or crash
            // shutdown (57P0x), too many connections (53300). SQLite: busy (5), locked (6).
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code == "5"
                || code == "6"
        }
        _ => false,
    }
}

/// Maps an error of opening the store to what the user needs to read.
fn classify(error: Error, backend: Backend, url: &str, shown: &str) -> Error {
    match error {
        Error::Sql(source) => {
            if backend == Backend::Sqlite
                && let Some(reason) = sqlite_corruption(&source)
            {
                return Error::Corrupt {
                    path: sqlite_path(url).to_string(),
                    reason,
                };
            }
            Error::Open {
                url: shown.to_string(),
                source,
            }
        }
        other => other,
    }
}

/// The reason a SQLite error says the file is not a database, if it says so.
pub(crate) fn sqlite_corruption(error: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(database) = error else {
        return None;
    };
    // SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), with their extended codes.
    let code: i64 = database.code()?.parse().ok()?;
    matches!(code & 0xff, 11 | 26).then(|| database.message().to_string())
}

/// The file a `sqlite:` URL names.
fn sqlite_path(url: &str) -> &str {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.split('?').next().unwrap_or(rest)
}

/// A `sqlite:` URL that creates the file (and its folder) when missing.
fn sqlite_url(url: &str) -> Result<String, Error> {
    let path = sqlite_path(url);
    if path.is_empty() {
        return Err(Error::url(url));
    }
    if path != ":memory:"
        && let Some(folder) = std::path::Path::new(path).parent()
        && !folder.as_os_str().is_empty()
    {
        std::fs::create_dir_all(folder).map_err(|error| {
            Error::Invalid(format!(
                "cannot create the folder {} for the store: {error}",
                folder.display()
            ))
        })?;
    }
    Ok(if url.contains("mode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

/// SQL built at run time with `$n` placeholders, and the values they stand for.
///
/// sqlx's `QueryBuilder` writes `?` placeholders for the `Any` driver, which PostgreSQL does
/// not read; both databases read `$n`.
#[derive(Default)]
pub(crate) struct Sql<'q> {
    text: String,
    arguments: AnyArguments<'q>,
    count: usize,
    error: Option<sqlx::error::BoxDynError>,
}

impl<'q> Sql<'q> {
    pub(crate) fn new(text: &str) -> Sql<'q> {
        Sql {
            text: text.to_string(),
            ..Sql::default()
        }
    }

    pub(crate) fn push(&mut self, text: &str) -> &mut Sql<'q> {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    pub(crate) fn push_bind<T>(&mut self, value: T) -> &mut Sql<'q>
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        self.count += 1;
        self.text.push('$');
        self.text.push_str(&self.count.to_string());
        if let Err(error) = self.arguments.add(value) {
            self.error.get_or_insert(error);
        }
        self
    }

    /// The text and the values, ready for `sqlx::query_with`.
    pub(crate) fn finish(self) -> Result<(String, AnyArguments<'q>), sqlx::Error> {
        match self.error {
            Some(error) => Err(sqlx::Error::Encode(error)),
            None => Ok((self.text, self.arguments)),
        }
    }
}

/// Microseconds since the Unix epoch, as the store keeps times.
pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// The time `micros` stands for; out-of-range values are a corrupt store.
pub(crate) fn time(micros: i64) -> Result<DateTime<Utc>, Error> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| Error::Stored(format!("{micros} is not a time in microseconds")))
}

/// Now, to the microsecond the store keeps.
pub(crate) fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend() {
        assert_eq!(Backend::of_url("postgres://a@b/c"), Some(Backend::Postgres));
        assert_eq!(Backend::of_url("postgresql://b/c"), Some(Backend::Postgres));
        assert_eq!(Backend::of_url("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("sqlite:x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("mysql://x"), None);
        assert_eq!(Backend::of_url("state.db"), None);
    }

    #[test]
    fn a_url_that_is_not_a_store_url_is_named_without_its_password() {
        let error = sqlite_url("sqlite://").expect_err("no path");
        assert_eq!(
            error.to_string(),
            "`sqlite://` is not a store URL: use postgres://USER@HOST/DATABASE or sqlite://PATH"
        );
        let error = Error::url("postgress://app:s3cr/etpw@localhost/db");
        assert!(!error.to_string().contains("s3cr"), "{error}");
    }

    #[test]
    fn sqlite_urls_create_their_file() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let path = folder.path().join("nested/state.db");
        let url = format!("sqlite://{}", path.display());
        assert_eq!(sqlite_url(&url).expect("a URL"), format!("{url}?mode=rwc"));
        assert!(path.parent().expect("a folder").is_dir());
        assert_eq!(
            sqlite_url("sqlite://x.db?mode=ro").expect("a URL"),
            "sqlite://x.db?mode=ro"
        );
    }
}
