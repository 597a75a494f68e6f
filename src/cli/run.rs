//! `wakafleet run [PATH] [--branch NAME] [--repo URL] [--interval SECONDS] [--store URL]
//! [--queue local|redis://HOST:PORT] [--workers N] [--config FILE] [--secrets-key env:NAME]
//! [--once]`: the reconcile daemon.
//!
//! With no arguments it is the whole system on one machine: `./fleet` (the commits of the
//! current branch when a repository holds it), SQLite in `.wakafleet/`, the in-process queue
//! and a pool of four workers on the regions' engines. Flags override the config file
//! (`--config`), which overrides the defaults. SIGTERM or Ctrl-C: no new pass or claim, the
//! running steps end and their jobs are handed back, exit 0.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use wakafleet::{
    daemon::{self, Daemon, Exit, control::Control, follow::Source, leader::Elector},
    driver, http,
    jobs::{
        lifecycle::Lifecycle,
        schedule::Scheduler,
        worker::{self, Pool},
    },
    load::Limits,
    metrics::Metrics,
    queue::{self, Queue},
    secret::Secret,
    source::signature::AllowedSigners,
    store::{Backend, secrets::SecretKey},
    validate,
};

use crate::cli::{self, store::StoreArgs, worker::stop_on_signal};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The fleet folder: in a git repository, its commits on the branch are followed.
    #[arg(default_value = "fleet")]
    pub path: PathBuf,
    /// The branch to follow; the one checked out by default (`main` for --repo).
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// A remote repository to mirror and fetch on the interval; PATH is then the fleet
    /// folder inside it.
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,
    /// Seconds between ticks: a pass that observes every instance, and a fetch.
    #[arg(long, value_name = "SECONDS")]
    pub interval: Option<u64>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The queue that wakes workers: `local` (this process) or redis://HOST:PORT.
    #[arg(long, value_name = "URL", default_value = "local")]
    pub queue: String,
    /// How many jobs this process runs at once; 0 only plans and enqueues, for a leader
    /// whose jobs run on `wakafleet worker` processes.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// The daemon's configuration file (TOML: [source], [workers], [api]).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The key that seals instance passwords: an `env:NAME` reference to 64 hex digits.
    /// With SQLite and the variable unset, a key kept in `.wakafleet/secrets.key` (made on
    /// first use, mode 0600).
    #[arg(long, value_name = "REF", default_value = "env:WAKAFLEET_SECRETS_KEY")]
    pub secrets_key: String,
    /// Reconcile until the ready work of the current revision is done, then exit 0; exit 1
    /// when it cannot be (a dead job, an invalid or unsigned head).
    #[arg(long)]
    pub once: bool,
    /// A label (KEY=VALUE) put on every container, network and volume this process makes,
    /// beside wakafleet's own; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = cli::worker::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Where the HTTP API, health, metrics and dashboard listen (127.0.0.1:8080 by
    /// default, nowhere with `--once` unless given); `off` serves nothing.
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<String>,
}

/// The daemon's configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub workers: WorkersConfig,
    /// The HTTP API's settings: where it listens, its tokens, its rate limits.
    #[serde(default)]
    pub api: http::Config,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// `60s`, `5m`, `1h`, or seconds.
    pub interval: Option<String>,
    /// An `env:NAME` reference, for the webhook.
    pub webhook_secret: Option<String>,
    #[serde(default)]
    pub require_signed_commits: bool,
    /// The allowed-signers file (`ssh-keygen -Y verify` format), relative to the config file.
    pub allowed_signers: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    pub concurrency: Option<usize>,
}

/// The default number of workers in the process.
const WORKERS: usize = 4;
/// Where the HTTP face listens by default.
const LISTEN: &str = "127.0.0.1:8080";
/// The default tick.
const INTERVAL: Duration = Duration::from_secs(60);

pub fn run(args: &Args) -> Result<ExitCode, cli::Error> {
    let config = match &args.config {
        Some(file) => read_config(file)?,
        None => Config::default(),
    };
    let interval = match (args.interval, &config.source.interval) {
        (Some(seconds), _) => Duration::from_secs(seconds.max(1)),
        (None, Some(text)) => parse_interval(text)?,
        (None, None) => INTERVAL,
    };
    let workers = args
        .workers
        .or(config.workers.concurrency)
        .unwrap_or(WORKERS);
    let signers = if config.source.require_signed_commits {
        let file = config.source.allowed_signers.clone().ok_or(
            "require_signed_commits needs `allowed_signers`, the file of the keys whose signatures are accepted",
        )?;
        let base = args
            .config
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        let file = base.join(file);
        let text = cli::read_limited(&file, "allowed signers file")?;
        Some(
            AllowedSigners::parse(&text).map_err(|error| {
                format!("the allowed signers file `{}`: {error}", file.display())
            })?,
        )
    } else {
        None
    };
    // A `--once` run is a CI step or a cron job: it serves only when asked to, so two of
    // them never fight over the default port.
    let listen = args
        .listen
        .clone()
        .or(config.api.listen.clone())
        .or_else(|| (!args.once).then(|| LISTEN.to_string()))
        .filter(|listen| listen != "off");
    let webhook_secret = match &config.source.webhook_secret {
        Some(reference) => Some(resolve_env(reference, "webhook_secret")?),
        None => None,
    };
    let tokens = http::auth::Tokens::new(config.api.tokens.clone())
        .map_err(|error| format!("the configuration's [[api.tokens]]: {error}"))?;
    let repo = args.repo.clone().or(config.source.repo.clone());
    let branch = args.branch.clone().or(config.source.branch.clone());
    let state = state_folder(&args.store.url);
    let limits = Limits::default();
    let source = Source::open(&args.path, branch.as_deref(), repo.as_deref(), &state)?;
    let driver_options = driver::Options {
        labels: args.labels.iter().cloned().collect(),
        ..driver::Options::default()
    };
    let drivers_of = || -> Result<_, cli::Error> {
        let head = source.head(&limits)?;
        let mut cache = validate::Cache::default();
        let revision = source.read(&head, &limits, &cache)?;
        let settings = validate::check_cached(revision.inputs, &limits, &mut cache)
            .fleet
            .settings;
        cli::worker::drivers_of(&settings, &[], &driver_options, &source.describe())
    };
    let observers = drivers_of()?;
    let executors = drivers_of()?;
    let holder = format!(
        "{}:{}",
        cli::worker::hostname().unwrap_or_else(|| "wakafleet".to_string()),
        std::process::id()
    );
    cli::store::block_on(async {
        let store = Arc::new(args.store.open(true).await?);
        let key = secrets_key(&args.secrets_key, store.backend(), &state)?;
        let queue = Arc::new(Queue::open(&args.queue, queue::Options::default()).await?);
        let elector = match store.backend() {
            Backend::Postgres => {
                Elector::postgres(&args.store.url, holder.clone(), Duration::from_secs(2))?
            }
            Backend::Sqlite => Elector::single(holder.clone()),
        };
        let stop = CancellationToken::new();
        tokio::spawn(stop_on_signal(stop.clone()));
        let job_ended = Arc::new(Notify::new());
        let tasks = TaskTracker::new();
        let pool_stop = CancellationToken::new();
        if workers > 0 {
            let pool = Pool {
                store: Arc::clone(&store),
                queue: Arc::clone(&queue),
                executor: Arc::new(Lifecycle {
                    store: Arc::clone(&store),
                    key,
                    drivers: executors,
                }),
                scheduler: Some(Arc::new(Scheduler {
                    store: Arc::clone(&store),
                    max_attempts: 3,
                })),
                options: worker::Options {
                    host: cli::worker::hostname(),
                    ended: Some(Arc::clone(&job_ended)),
                    ..worker::Options::new(&holder, workers)
                },
            };
            let pool_stop = pool_stop.clone();
            tasks.spawn(pool.run(pool_stop));
        }
        let control = Arc::new(Control::default());
        let metrics = Arc::new(Metrics::new());
        let http_stop = CancellationToken::new();
        if let Some(listen) = listen {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|error| format!("listening on {listen}: {error}"))?;
            let address = listener
                .local_addr()
                .map_or_else(|_| listen.clone(), |address| address.to_string());
            if tokens.is_empty() {
                tracing::warn!(
                    "no [[api.tokens]] are configured: /api/v1, /metrics and the dashboard refuse every call (`wakafleet token create` makes one)"
                );
            }
            let app = Arc::new(http::App {
                store: Arc::clone(&store),
                queue: Arc::clone(&queue),
                control: Arc::clone(&control),
                metrics: Arc::clone(&metrics),
                holder: holder.clone(),
                interval,
                branch: source.branch().map(str::to_string),
                webhook_secret,
                tokens,
                limits: http::limit::Limiters::new(config.api.rate_limit),
                templates: http::dashboard::Templates::new(),
                cache: http::api::Cache::default(),
            });
            tracing::info!(%address, "serving health, metrics, the API and the dashboard");
            tasks.spawn({
                let http_stop = http_stop.clone();
                async move {
                    if let Err(error) = http::serve(listener, app, http_stop).await {
                        tracing::error!(%error, "the HTTP server stopped");
                    }
                }
            });
        }
        tasks.close();
        tracing::info!(source = %source.describe(), workers, interval = interval.as_secs(), "wakafleet run started");
        let daemon = Daemon {
            store: Arc::clone(&store),
            queue,
            source: Arc::new(source),
            signers,
            drivers: Arc::new(observers),
            elector,
            options: daemon::Options {
                holder: holder.clone(),
                interval,
                poll: Duration::from_secs(1),
                once: args.once,
                max_attempts: 3,
                operator: cli::operator(),
                limits,
            },
            job_ended,
            control,
            metrics,
        };
        let exit = daemon.run(stop.clone()).await;
        // The pool and the HTTP face stop with the daemon: running steps end, their jobs
        // are handed back; requests in flight are answered.
        pool_stop.cancel();
        http_stop.cancel();
        tasks.wait().await;
        store.close().await;
        tracing::info!("wakafleet run stopped");
        match exit? {
            Exit::Stopped | Exit::Converged => Ok::<_, cli::Error>(ExitCode::SUCCESS),
            Exit::Stuck(reason) => {
                eprintln!("not converged: {reason}");
                Ok(ExitCode::FAILURE)
            }
        }
    })?
}

/// The value of an `env:NAME` reference; the name alone is in errors, never the value.
fn resolve_env(reference: &str, what: &str) -> Result<Secret, cli::Error> {
    let Some(name) = reference.strip_prefix("env:") else {
        return Err(format!("`{what}` must be an `env:NAME` reference, not a value").into());
    };
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(Secret::new(value)),
        _ => Err(format!("`{what}` names the variable {name}, which is not set").into()),
    }
}

fn read_config(file: &Path) -> Result<Config, cli::Error> {
    let text = cli::read_limited(file, "configuration file")?;
    Ok(toml::from_str(&text)
        .map_err(|error| format!("the configuration file `{}`: {error}", file.display()))?)
}

/// `60s`, `5m`, `1h` or a number of seconds.
fn parse_interval(text: &str) -> Result<Duration, cli::Error> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("interval `{text}` is not a number of seconds such as `60s`"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        _ => return Err(format!("interval `{text}`: the unit is s, m or h").into()),
    };
    Ok(Duration::from_secs(seconds.max(1)))
}

/// Where the daemon keeps what is its own (the key, mirrors): the SQLite store's folder, or
/// `.wakafleet` in the working directory.
fn state_folder(store: &Secret) -> PathBuf {
    let url = store.expose();
    if Backend::of_url(url) == Some(Backend::Sqlite) {
        let path = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let path = path.split('?').next().unwrap_or(path);
        if let Some(parent) = Path::new(path).parent()
            && path != ":memory:"
        {
            return if parent.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                parent.to_path_buf()
            };
        }
    }
    PathBuf::from(".wakafleet")
}

/// The key that seals instance passwords: from the reference when its variable is set;
/// with SQLite otherwise the one in `secrets.key` beside the store, made on first use.
fn secrets_key(reference: &str, backend: Backend, state: &Path) -> Result<SecretKey, cli::Error> {
    let variable = reference.strip_prefix("env:").unwrap_or(reference);
    if std::env::var_os(variable).is_some() || backend == Backend::Postgres {
        return SecretKey::from_reference(reference).map_err(|error| {
            if backend == Backend::Postgres {
                format!("{error}; with a PostgreSQL store every process needs the same key (64 hex digits, e.g. from `openssl rand -hex 32`)").into()
            } else {
                error.into()
            }
        });
    }
    let file = state.join("secrets.key");
    let context =
        |error: std::io::Error| format!("the secrets key file `{}`: {error}", file.display());
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0_u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|error| format!("no randomness for a key: {error}"))?;
            let text = hex::encode(bytes);
            std::fs::create_dir_all(state).map_err(context)?;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .map_err(context)?;
            out.write_all(text.as_bytes()).map_err(context)?;
            eprintln!(
                "generated the key that seals instance passwords into {} (mode 0600); keep it with the store",
                file.display()
            );
            text
        }
        Err(error) => return Err(context(error).into()),
    };
    let mut bytes = [0_u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
        format!(
            "the secrets key file `{}` must hold 64 hex digits",
            file.display()
        )
    })?;
    Ok(SecretKey::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_take_seconds_minutes_and_hours() {
        assert_eq!(parse_interval("60s").ok(), Some(Duration::from_secs(60)));
        assert_eq!(parse_interval("5m").ok(), Some(Duration::from_secs(300)));
        assert_eq!(parse_interval("1h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_interval("90").ok(), Some(Duration::from_secs(90)));
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("5d").is_err());
    }

    #[test]
    fn the_config_file_refuses_unknown_keys() {
        let config: Config = toml::from_str(
            "[source]\nbranch = \"main\"\ninterval = \"30s\"\n[workers]\nconcurrency = 2\n",
        )
        .expect("a config");
        assert_eq!(config.source.branch.as_deref(), Some("main"));
        assert_eq!(config.workers.concurrency, Some(2));
        let refused = toml::from_str::<Config>("[source]\nbrnach = \"main\"\n")
            .expect_err("a typo is refused");
        assert!(refused.to_string().contains("brnach"), "{refused}");
    }
}
