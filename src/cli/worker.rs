//! `wakafleet worker`: runs jobs from the store, woken by a queue, on any host.
//!
//! The regions' Docker engines, PostgreSQL servers and backup folders come from the fleet's
//! `fleet.toml` (`--fleet`), their `env:` references resolved here; with `--regions` the
//! worker takes only the jobs of instances in those regions, so it can sit beside their
//! engine. SIGTERM or Ctrl-C: no new claim, running jobs finish their step and are handed
//! back, exit 0.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use chrono::TimeDelta;
use tokio_util::sync::CancellationToken;

use wakafleet::{
    driver::{self, Driver, Region},
    jobs::{
        lifecycle::Lifecycle,
        schedule::Scheduler,
        worker::{Options, Pool},
    },
    load::Limits,
    model::Settings,
    queue::{self, Queue},
    secret::Secret,
    source,
    store::secrets::SecretKey,
    validate,
};

use crate::cli::{self, store::StoreArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The queue that wakes workers: `local` (this process only; due jobs are found by the
    /// store's scan) or redis://HOST:PORT.
    #[arg(long, value_name = "URL", default_value = "local")]
    pub queue: String,
    /// How many jobs run at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Only jobs of instances in these regions (comma-separated); every region by default.
    #[arg(long, value_name = "R,...", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// The fleet folder whose `fleet.toml` names each region's engine, server and backups.
    #[arg(long, value_name = "PATH", default_value = "fleet")]
    pub fleet: PathBuf,
    /// The key that seals instance passwords: an `env:NAME` reference to 64 hex digits.
    #[arg(long, value_name = "REF", default_value = "env:WAKAFLEET_SECRETS_KEY")]
    pub secrets_key: String,
    /// The worker's name in the store and the audit log; the host and process by default.
    #[arg(long)]
    pub name: Option<String>,
    /// How long a claim holds a job unless renewed (renewed every third of it).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub lease: u64,
    /// How often the reaper, the republishing of due jobs and the schedules run.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub upkeep: u64,
    /// How often a job may stall (its worker gone before its lease ran out) before the
    /// reaper gives it up as dead.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_stalls: i64,
    /// Fire due schedules (backups, health checks) too.
    #[arg(long)]
    pub schedules: bool,
    /// A label (KEY=VALUE) put on every container, network and volume this worker makes,
    /// beside wakafleet's own; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

pub fn run(args: &Args) -> Result<ExitCode, cli::Error> {
    let driver_options = driver::Options {
        labels: args.labels.iter().cloned().collect(),
        ..driver::Options::default()
    };
    let drivers = drivers(&args.fleet, &args.regions, &driver_options)?;
    let key = SecretKey::from_reference(&args.secrets_key)?;
    let host = hostname();
    let name = args.name.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            host.as_deref().unwrap_or("worker"),
            std::process::id()
        )
    });
    let options = Options {
        host,
        regions: (!args.regions.is_empty()).then(|| args.regions.clone()),
        lease: TimeDelta::seconds(i64::try_from(args.lease.max(3)).unwrap_or(30)),
        upkeep_every: Duration::from_secs(args.upkeep.max(1)),
        max_stalls: args.max_stalls.max(0),
        ..Options::new(&name, args.concurrency)
    };
    cli::store::block_on(async {
        let store = Arc::new(args.store.open(true).await?);
        let queue = Arc::new(Queue::open(&args.queue, queue::Options::default()).await?);
        let executor = Arc::new(Lifecycle {
            store: Arc::clone(&store),
            key,
            drivers,
        });
        let scheduler = args.schedules.then(|| {
            Arc::new(Scheduler {
                store: Arc::clone(&store),
                max_attempts: 3,
            })
        });
        let stop = CancellationToken::new();
        tokio::spawn(stop_on_signal(stop.clone()));
        tracing::info!(worker = %name, concurrency = args.concurrency, "worker started");
        Pool {
            store: Arc::clone(&store),
            queue,
            executor,
            scheduler,
            options,
        }
        .run(stop)
        .await;
        store.close().await;
        tracing::info!(worker = %name, "worker stopped");
        Ok::<_, cli::Error>(ExitCode::SUCCESS)
    })?
}

/// A driver for each region of the fleet at `folder` (only `only`, when given), with the
/// regions' `env:` references resolved.
pub fn drivers(
    folder: &std::path::Path,
    only: &[String],
    options: &driver::Options,
) -> Result<BTreeMap<String, Driver>, cli::Error> {
    let limits = Limits::default();
    let inputs = source::read_folder(folder, &limits)?;
    let validation = validate::check(inputs, &limits);
    drivers_of(
        &validation.fleet.settings,
        only,
        options,
        &folder.display().to_string(),
    )
}

/// A driver for each region of `settings` (only `only`, when given), with the regions'
/// `env:` references resolved; `what` names where the settings come from in errors.
pub fn drivers_of(
    settings: &Settings,
    only: &[String],
    options: &driver::Options,
    what: &str,
) -> Result<BTreeMap<String, Driver>, cli::Error> {
    let regions = &settings.regions;
    if regions.is_empty() {
        return Err(format!(
            "{what} names no region: jobs need the regions of `fleet.toml` (run `wakafleet validate`)"
        )
        .into());
    }
    if let Some(unknown) = only.iter().find(|name| !regions.contains_key(*name)) {
        return Err(format!(
            "--regions names `{unknown}`, which {what} does not define (it has {})",
            regions.keys().cloned().collect::<Vec<_>>().join(", ")
        )
        .into());
    }
    let mut drivers = BTreeMap::new();
    for (name, region) in regions {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let region = Region {
            name: name.clone(),
            docker: resolve(&region.docker.value, name, "docker")?
                .expose()
                .to_string(),
            database: resolve(&region.database.value, name, "database")?,
            backups: PathBuf::from(&region.backups),
        };
        drivers.insert(name.clone(), Driver::new(&region, options.clone())?);
    }
    Ok(drivers)
}

/// A region setting, its `env:` reference resolved.
fn resolve(value: &str, region: &str, field: &str) -> Result<Secret, cli::Error> {
    match value.strip_prefix("env:") {
        None => Ok(Secret::new(value)),
        Some(variable) => std::env::var(variable).map(Secret::new).map_err(|_| {
            format!(
                "region `{region}`: its {field} is to come from the environment variable {variable}, which is not set"
            )
            .into()
        }),
    }
}

/// The machine's name, when it has one.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

/// Cancels `stop` on SIGTERM or Ctrl-C.
pub async fn stop_on_signal(stop: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "SIGTERM cannot be caught");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("stopping: no new claims; running jobs are handed back at their next step");
    stop.cancel();
}
