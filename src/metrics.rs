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

use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::store::{self, Store};

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
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_seconds: Histogram,
    leader: Gauge,
    last_fetch: Gauge<f64, AtomicU64>,
    http_requests: Family<HttpLabels, Counter>,
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
        let mut registry = Registry::with_prefix("wakafleet");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconcile passes this process ran, by result (ok, error)",
            reconciles.clone(),
        );
        let reconcile_seconds = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]);
        registry.register_with_unit(
            "reconcile_duration",
            "How long a reconcile pass took",
            prometheus_client::registry::Unit::Seconds,
            reconcile_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process leads the fleet, 0 otherwise",
            leader.clone(),
        );
        let last_fetch = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "last_fetch_timestamp",
            "When the remote repository was last fetched, as a Unix time",
            prometheus_client::registry::Unit::Seconds,
            last_fetch.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by route, method and status code",
            http_requests.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_seconds,
            leader,
            last_fetch,
            http_requests,
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

    /// The text exposition of every metric: this process's, then the fleet's as the store
    /// holds it now.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn render(&self, store: &Store) -> Result<String, store::Error> {
        let _ = store;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        Ok(text)
    }
}
