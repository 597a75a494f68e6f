//! The daemon's metrics, in Prometheus's text format (`GET /metrics`).
//!
//! Two kinds live here. What only this process sees (its passes, whether it leads, its last
//! fetch, the HTTP requests it served) is counted as it happens. What the whole fleet did
//! (jobs by kind and result, queue depth, instances by status, audit records) is read from
//! the store at each scrape, so every process reports the same figures whichever ran the
//! work, and the series of an instance that is gone go with it.
//!
//! Names follow Prometheus's rules: the `wakafleet_` prefix, base units, `_total` counters,
//! labels with bounded values (an instance's name is a label only on its `_info` gauge).

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicU64},
};

use chrono::{DateTime, Utc};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use serde::Deserialize;

use crate::{
    daemon::status::Status,
    store::{
        self, Store,
        audit::{Outcome, StoredRow},
        jobs::{JobKind, JobStatus},
        metrics::JobFigures,
    },
};

/// The result of a pass.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// An HTTP request: the route's pattern (never the raw path) and the status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub code: String,
}

/// The process's metrics.
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    reconcile_seconds: Histogram,
    leader: Gauge,
    last_fetch: Gauge<f64, AtomicU64>,
    http_requests: Family<HttpLabels, Counter>,
    /// The audit log's counts, folded as far as the last scrape read.
    tally: tokio::sync::Mutex<Tally>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            reconciles: Family::default(),
            reconcile_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            leader: Gauge::default(),
            last_fetch: Gauge::default(),
            http_requests: Family::default(),
            tally: tokio::sync::Mutex::default(),
        }
    }

    /// A pass ran for `seconds`; `ok` unless it failed.
    pub fn reconciled(&self, seconds: f64, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
        self.reconcile_seconds.observe(seconds);
    }

    /// Whether this process leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The remote was fetched at `at`.
    pub fn fetched(&self, at: DateTime<Utc>) {
        #[expect(
            clippy::cast_precision_loss,
            reason = "a Unix time in milliseconds fits an f64's 53 bits exactly"
        )]
        let seconds = at.timestamp_millis() as f64 / 1000.0;
        self.last_fetch.set(seconds);
    }

    /// An HTTP request on `route` (the pattern it matched) ended with `code`.
    pub fn http_request(&self, route: &str, method: &str, code: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// The fleet's figures as the store holds them now: the status the API shows, the jobs
    /// table's aggregates, and the audit log's counts folded up to its head.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn fleet(&self, store: &Store, status: Arc<Status>) -> Result<Fleet, store::Error> {
        let now = Utc::now();
        let jobs = store.job_figures(now).await?;
        let audit = self.fold_audit(store).await?;
        Ok(Fleet {
            status,
            jobs,
            audit,
            now,
        })
    }

    /// Folds the audit records appended since the last scrape into the tally, and returns
    /// it. The log is append-only, so counts taken from it only grow, whichever process
    /// ran the work; a process starting reads the log once from the start.
    async fn fold_audit(&self, store: &Store) -> Result<Tally, store::Error> {
        let mut tally = self.tally.lock().await;
        loop {
            let rows = store.audit_rows(tally.through, AUDIT_PAGE).await?;
            for row in &rows {
                tally.fold(row);
            }
            if rows.len() < usize::try_from(AUDIT_PAGE).unwrap_or(usize::MAX) {
                return Ok(tally.clone());
            }
        }
    }

    /// The text exposition of every metric: this process's, whether the store answered,
    /// and the fleet's figures when it did.
    pub fn render(&self, fleet: Option<Fleet>) -> String {
        let mut registry = Registry::with_prefix("wakafleet");
        registry.register(
            "reconciles",
            "Reconcile passes this process ran, by result (ok, error)",
            self.reconciles.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "How long a reconcile pass took",
            Unit::Seconds,
            self.reconcile_seconds.clone(),
        );
        registry.register(
            "leader",
            "1 while this process leads the fleet, 0 otherwise",
            self.leader.clone(),
        );
        // Absent until a remote is fetched: a zero would read as a fetch in 1970.
        if self.last_fetch.get() > 0.0 {
            registry.register_with_unit(
                "last_fetch_timestamp",
                "When the remote repository was last fetched, as a Unix time",
                Unit::Seconds,
                self.last_fetch.clone(),
            );
        }
        registry.register(
            "http_requests",
            "HTTP requests served, by route, method and status code",
            self.http_requests.clone(),
        );
        let store_up = Gauge::<i64>::default();
        store_up.set(i64::from(fleet.is_some()));
        registry.register(
            "store_up",
            "1 when the store answered this scrape, 0 when it did not (the fleet's figures are then left out)",
            store_up,
        );
        if let Some(fleet) = fleet {
            registry.register_collector(Box::new(fleet));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String does not fail");
        text
    }
}

/// How many audit records a scrape reads at a time while it catches up.
const AUDIT_PAGE: i64 = 5_000;

/// The upper bounds of the job duration histogram, in seconds: a health look takes a second,
/// a provision a minute, an upgrade with a backup longer.
const JOB_BOUNDS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// The upper bounds of the step duration histogram, in seconds.
const STEP_BOUNDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// Observations of a duration, in the buckets of `bounds`.
#[derive(Clone, Debug, PartialEq)]
struct Durations {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; one more than `bounds`: the last is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Durations {
    fn new(bounds: &'static [f64]) -> Durations {
        Durations {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += seconds;
    }

    fn encode(&self, metric: &mut MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().copied())
            .collect();
        metric.encode_histogram::<NoLabelSet>(self.sum, self.counts.iter().sum(), &buckets, None)
    }
}

/// What the audit log says the jobs did: every attempt's end and every step, with how long
/// it took, through record `through`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    through: i64,
    /// `(kind, result)` → attempts that ended so.
    attempts: BTreeMap<(&'static str, &'static str), u64>,
    /// Per kind: how long its attempts took.
    job_seconds: BTreeMap<&'static str, Durations>,
    /// Per `(kind, step)`: how long the step took.
    step_seconds: BTreeMap<(&'static str, String), Durations>,
}

/// The part of an audit body the tally reads.
#[derive(Deserialize)]
struct Timed {
    #[serde(default)]
    metadata: TimedMetadata,
}

#[derive(Default, Deserialize)]
struct TimedMetadata {
    duration_ms: Option<f64>,
}

impl Tally {
    fn fold(&mut self, row: &StoredRow) {
        self.through = self.through.max(row.seq);
        // `instance.<kind>.end` and `instance.<kind>.step.<step>`, written by the runner.
        let Some(rest) = row.action.strip_prefix("instance.") else {
            return;
        };
        let Some((kind, what)) = rest.split_once('.') else {
            return;
        };
        let Some(kind) = JobKind::parse(kind) else {
            return;
        };
        let kind = kind.as_str();
        let step = match what {
            "end" => None,
            _ => match what.strip_prefix("step.") {
                Some(step) if is_step_name(step) => Some(step),
                _ => return,
            },
        };
        let seconds = serde_json::from_str::<Timed>(&row.body)
            .ok()
            .and_then(|body| body.metadata.duration_ms)
            .filter(|milliseconds| milliseconds.is_finite() && *milliseconds >= 0.0)
            .map(|milliseconds| milliseconds / 1000.0);
        match step {
            None => {
                let result = if row.result == Outcome::Success.as_str() {
                    "success"
                } else {
                    "failure"
                };
                *self.attempts.entry((kind, result)).or_default() += 1;
                if let Some(seconds) = seconds {
                    self.job_seconds
                        .entry(kind)
                        .or_insert_with(|| Durations::new(JOB_BOUNDS))
                        .observe(seconds);
                }
            }
            Some(step) => {
                if let Some(seconds) = seconds {
                    self.step_seconds
                        .entry((kind, step.to_string()))
                        .or_insert_with(|| Durations::new(STEP_BOUNDS))
                        .observe(seconds);
                }
            }
        }
    }

    /// How many attempts of `kind` ended with `result` (`success`, `failure`).
    pub fn attempts(&self, kind: &str, result: &str) -> u64 {
        let attempts: &BTreeMap<(&str, &str), u64> = &self.attempts;
        attempts.get(&(kind, result)).copied().unwrap_or(0)
    }
}

/// A step's name as the workflows spell them: a bounded label value, whatever a hand-made
/// record holds.
fn is_step_name(step: &str) -> bool {
    (1..=48).contains(&step.len())
        && step
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

/// The fleet's figures for one scrape.
#[derive(Debug)]
pub struct Fleet {
    status: Arc<Status>,
    jobs: JobFigures,
    audit: Tally,
    now: DateTime<Utc>,
}

/// Instance statuses, so that every one has a series, zero or not.
const INSTANCE_STATUSES: &[&str] = &[
    "pending",
    "provisioning",
    "active",
    "suspended",
    "terminated",
    "failed",
];

impl Collector for Fleet {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // Instances, from the status the API shows.
        let mut statuses: BTreeMap<&str, i64> = INSTANCE_STATUSES
            .iter()
            .map(|status| (*status, 0))
            .collect();
        for instance in &self.status.instances {
            *statuses.entry(instance.status).or_default() += 1;
        }
        let mut metric = encoder.encode_descriptor(
            "instances",
            "Instances by status, as `wakafleet status` shows them.",
            None,
            MetricType::Gauge,
        )?;
        for (status, count) in &statuses {
            metric
                .encode_family(&[("status", *status)])?
                .encode_gauge(count)?;
        }
        let live = || {
            self.status
                .instances
                .iter()
                .filter(|instance| instance.status != "terminated")
        };
        let mut metric = encoder.encode_descriptor(
            "instance",
            "One series per instance not terminated: its version, channel and status.",
            None,
            MetricType::Info,
        )?;
        for instance in live() {
            metric.encode_info(&[
                ("instance", instance.name.as_str()),
                ("version", instance.version.as_deref().unwrap_or("")),
                ("channel", instance.channel.as_deref().unwrap_or("")),
                ("status", instance.status),
            ])?;
        }
        let mut metric = encoder.encode_descriptor(
            "instance_healthy",
            "1 when the instance's last health look found it healthy, 0 when degraded or unhealthy; absent before its first look.",
            None,
            MetricType::Gauge,
        )?;
        for instance in live().filter(|instance| instance.health != "unknown") {
            metric
                .encode_family(&[("instance", instance.name.as_str())])?
                .encode_gauge(&i64::from(instance.health == "healthy"))?;
        }

        // Jobs, from the jobs table.
        let mut jobs: BTreeMap<(&str, &str), i64> = JobKind::ALL
            .iter()
            .flat_map(|kind| {
                JobStatus::ALL
                    .iter()
                    .map(move |status| ((kind.as_str(), status.as_str()), 0))
            })
            .collect();
        for (kind, status, count) in &self.jobs.by_kind_and_status {
            if let Some(slot) = jobs.get_mut(&(kind.as_str(), status.as_str())) {
                *slot = *count;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "jobs",
            "Jobs in the store by kind and status.",
            None,
            MetricType::Gauge,
        )?;
        for ((kind, status), count) in &jobs {
            metric
                .encode_family(&[("kind", *kind), ("status", *status)])?
                .encode_gauge(count)?;
        }
        let dead: i64 = self
            .jobs
            .by_kind_and_status
            .iter()
            .filter(|(_, status, _)| status == "dead")
            .map(|(_, _, count)| count)
            .sum();
        gauge(
            &mut encoder,
            "dead_jobs",
            "Dead-lettered jobs waiting for an operator (`wakafleet jobs retry`).",
            None,
            dead,
        )?;
        gauge(
            &mut encoder,
            "queue_depth",
            "Pending jobs that workers can claim now.",
            None,
            self.jobs.ready,
        )?;
        gauge(
            &mut encoder,
            "queue_deferred",
            "Pending jobs waiting for their time: a maintenance window, a backoff.",
            None,
            self.jobs.deferred,
        )?;
        #[expect(
            clippy::cast_precision_loss,
            reason = "an age in milliseconds fits an f64's 53 bits exactly"
        )]
        let oldest = self.jobs.oldest_ready_since.map_or(0.0, |since| {
            (self.now - since).num_milliseconds().max(0) as f64 / 1000.0
        });
        let mut metric = encoder.encode_descriptor(
            "queue_oldest_age",
            "How long the oldest claimable job has waited; 0 when none waits.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        metric.encode_gauge(&oldest)?;

        // What the jobs did, from the audit log.
        let mut metric = encoder.encode_descriptor(
            "job_attempts",
            "Job attempts that ended, by kind and result (success, failure), from the audit log.",
            None,
            MetricType::Counter,
        )?;
        for kind in JobKind::ALL {
            for result in ["success", "failure"] {
                let count = self.audit.attempts(kind.as_str(), result);
                metric
                    .encode_family(&[("kind", kind.as_str()), ("result", result)])?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
        for (name, kind, help) in [
            (
                "provisions",
                JobKind::Provision,
                "Provisioning attempts that ended, by result (success, failure).",
            ),
            (
                "upgrades",
                JobKind::Upgrade,
                "Upgrade attempts that ended, by result (success, failure).",
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for result in ["success", "failure"] {
                metric
                    .encode_family(&[("result", result)])?
                    .encode_counter::<NoLabelSet, _, u64>(
                        &self.audit.attempts(kind.as_str(), result),
                        None,
                    )?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "job_duration",
            "How long a job attempt took, by kind, from the audit log.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (kind, durations) in &self.audit.job_seconds {
            durations.encode(&mut metric.encode_family(&[("kind", *kind)])?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "step_duration",
            "How long a job's step took, by kind and step, from the audit log.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for ((kind, step), durations) in &self.audit.step_seconds {
            durations
                .encode(&mut metric.encode_family(&[("kind", *kind), ("step", step.as_str())])?)?;
        }
        let records = u64::try_from(self.audit.through).unwrap_or(0);
        let mut metric = encoder.encode_descriptor(
            "audit_records",
            "Records appended to the audit log.",
            None,
            MetricType::Counter,
        )?;
        metric.encode_counter::<NoLabelSet, _, u64>(&records, None)?;
        Ok(())
    }
}

/// A gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, unit, MetricType::Gauge)?
        .encode_gauge(&value)
}
