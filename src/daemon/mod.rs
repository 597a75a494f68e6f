//! The reconcile daemon: follows the source, keeps the last good revision in force, and
//! runs reconcile passes as the leader.
//!
//! Passes run on a new revision, on the tick (`Options::interval`, observing the instances
//! for drift), when a job ends, when a deferred action's window opens, and every
//! `Options::poll` while jobs are active. An invalid revision, or with `require_signed_commits`
//! an unsigned one, is recorded as seen and reported, and never applied, not even in part:
//! the last good one stays in force. The newest acceptable revision since the one seen last
//! wins, so a bad commit on top of a good one does not hide the good one.
//!
//! One process leads (`leader`): only the leader plans and enqueues, and its writes carry
//! its term; a process that lost the lead stops at once and waits to lead again. Jobs run on
//! any process's pool; the daemon only hears that one ended.
//!
//! `reconcile` is the pass, `follow` the source, `status` the report other processes read,
//! `leader` the election.

pub mod control;
pub mod follow;
pub mod leader;
pub mod reconcile;
pub mod status;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    diag::render as diag_render,
    driver::Driver,
    load::Limits,
    queue::Queue,
    source::{
        CommitInfo,
        signature::{AllowedSigners, Signer},
    },
    store::{
        self, Store,
        audit::{Actor, ActorKind, Commit, Outcome as AuditOutcome, Person, Record},
        state::CommitRecord,
    },
    validate,
};

use crate::{metrics::Metrics, store::leadership::Term};
use control::Control;
use follow::{Revision, Source};
use leader::Elector;
use reconcile::{Context, Desired, Outcome};

/// The daemon, ready to run.
pub struct Daemon {
    pub store: Arc<Store>,
    pub queue: Arc<Queue>,
    pub source: Arc<Source>,
    /// With `require_signed_commits`: the keys whose signatures are accepted.
    pub signers: Option<AllowedSigners>,
    /// The regions' drivers, for observation.
    pub drivers: Arc<BTreeMap<String, Driver>>,
    pub elector: Elector,
    pub options: Options,
    /// Notified when a job of this process's pool ends.
    pub job_ended: Arc<Notify>,
    /// What the HTTP API asks of the daemon and sees of it.
    pub control: Arc<Control>,
    pub metrics: Arc<Metrics>,
}

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// This process, as the leader and in the audit log (`host:pid`).
    pub holder: String,
    /// The tick: a pass with observation, and a fetch of a remote.
    pub interval: Duration,
    /// How often the branch, and active jobs, are looked at between ticks.
    pub poll: Duration,
    /// Exit once the ready work of the current revision is done, or stuck.
    pub once: bool,
    /// How many failed attempts make a job dead.
    pub max_attempts: i64,
    /// The operator, who approves what a folder outside git holds.
    pub operator: Actor,
    pub limits: Limits,
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by a signal.
    Stopped,
    /// `--once`: the ready work of the current revision is done.
    Converged,
    /// `--once`: work waits on jobs that ended badly, or the current revision cannot be
    /// applied; the reason in words.
    Stuck(String),
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] follow::Error),
    #[error(transparent)]
    Leader(#[from] leader::Error),
    #[error("the store failed")]
    Store(#[from] store::Error),
    #[error("the leadership task failed: {0}")]
    Task(String),
}

/// The key under which the daemon keeps the partner and tenant of each instance in force.
pub const OWNERS: &str = "owners";

/// What the daemon knows of its source between passes.
#[derive(Default)]
struct Seen {
    /// The revision the source stood at when looked at last.
    head: Option<String>,
    /// Whether that revision could be applied; why not, otherwise.
    refusal: Option<String>,
    /// The diagnostics of the head when it was invalid, as JSON entries.
    diagnostics: Vec<serde_json::Value>,
    /// The revision in force.
    good: Option<Arc<Desired>>,
    /// The revision recorded as applied last.
    applied: Option<String>,
    /// When the last pass ran.
    last_pass: Option<DateTime<Utc>>,
    /// The owners document last written, so a revision that changes no owner (most of
    /// them) does not rewrite it: at 10,000 instances it is about a megabyte.
    owners: Option<serde_json::Value>,
}

impl Daemon {
    /// Runs until `stop` (or, with `Options::once`, until converged or stuck).
    ///
    /// # Errors
    /// When the source cannot be watched or the election cannot run at all; a pass that
    /// fails is logged and retried at the next wake.
    pub async fn run(self, stop: CancellationToken) -> Result<Exit, Error> {
        let Daemon {
            store,
            queue,
            source,
            signers,
            drivers,
            mut elector,
            options,
            job_ended,
            control,
            metrics,
        } = self;
        let changed = Arc::new(Notify::new());
        let _watch = source.watch(Arc::clone(&changed))?;
        let mut seen = Seen {
            applied: store.last_applied_commit().await?.map(|commit| commit.sha),
            ..Seen::default()
        };
        let leader = Leader {
            store: Arc::clone(&store),
            queue,
            source,
            signers,
            drivers,
            options,
            job_ended,
            changed,
            control,
            metrics,
            cache: Arc::default(),
            memo: tokio::sync::Mutex::default(),
        };
        loop {
            let Some(term) = elector.acquire(&store, &stop).await? else {
                return Ok(Exit::Stopped);
            };
            tracing::info!(epoch = term.epoch, holder = %leader.options.holder, source = %leader.source.describe(), "leading");
            leader.control.set_leading(true);
            leader.metrics.set_leader(true);
            let release = stop.child_token();
            let lost = CancellationToken::new();
            let holding = {
                let (store, release, lost, term) = (
                    Arc::clone(&store),
                    release.clone(),
                    lost.clone(),
                    term.clone(),
                );
                tokio::spawn(async move {
                    let why = elector.hold(&store, &term, &release).await;
                    lost.cancel();
                    (elector, why)
                })
            };
            let exit = leader.lead(&term, &mut seen, &stop, &lost).await;
            leader.control.set_leading(false);
            leader.metrics.set_leader(false);
            release.cancel();
            let (returned, why) = holding
                .await
                .map_err(|error| Error::Task(error.to_string()))?;
            elector = returned;
            if let Some(exit) = exit {
                return Ok(exit);
            }
            if stop.is_cancelled() {
                return Ok(Exit::Stopped);
            }
            tracing::warn!(reason = %why, "no longer the leader; waiting to lead again");
        }
    }
}

/// The daemon while it leads.
struct Leader {
    store: Arc<Store>,
    queue: Arc<Queue>,
    source: Arc<Source>,
    signers: Option<AllowedSigners>,
    drivers: Arc<BTreeMap<String, Driver>>,
    options: Options,
    job_ended: Arc<Notify>,
    changed: Arc<Notify>,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    /// Every file decoded once per blob: a commit that changes one file decodes one.
    cache: Arc<std::sync::Mutex<validate::Cache>>,
    /// What the last pass read and found, for the next.
    memo: tokio::sync::Mutex<reconcile::Memo>,
}

impl Leader {
    /// Reconciles for the term until the lead is lost or `stop`; `Some` when `--once` is
    /// done.
    async fn lead(
        &self,
        term: &Term,
        seen: &mut Seen,
        stop: &CancellationToken,
        lost: &CancellationToken,
    ) -> Option<Exit> {
        let mut next_tick = Instant::now();
        let mut wake_at: Option<DateTime<Utc>> = None;
        let mut busy = false;
        let mut nudged = true;
        loop {
            if stop.is_cancelled() || lost.is_cancelled() {
                return None;
            }
            let tick = Instant::now() >= next_tick;
            let fetch = self.control.take_fetch();
            if tick {
                next_tick = Instant::now() + self.options.interval;
            }
            // A webhook's push is fetched at once, not at the next tick.
            if (tick || fetch) && self.source.is_remote() {
                let source = Arc::clone(&self.source);
                match tokio::task::spawn_blocking(move || source.fetch()).await {
                    Ok(Ok(())) => self.metrics.fetched(Utc::now()),
                    Ok(Err(error)) => tracing::warn!(%error, "fetching the remote"),
                    Err(error) => tracing::warn!(%error, "fetching the remote"),
                }
            }
            let moved = self.look(term, seen).await;
            let window = wake_at.is_some_and(|at| at <= Utc::now());
            if moved || tick || window || busy || nudged {
                match self.pass(term, seen, moved || tick).await {
                    Some(outcome) => {
                        busy = !outcome.busy.is_empty();
                        wake_at = outcome.wake_at;
                        if self.options.once
                            && let Some(exit) = once_exit(&outcome, seen)
                        {
                            return Some(exit);
                        }
                    }
                    None if self.options.once && seen.good.is_none() => {
                        return Some(Exit::Stuck(seen.refusal.clone().unwrap_or_else(|| {
                            "no revision of the source can be applied".to_string()
                        })));
                    }
                    None => {}
                }
            }
            nudged = false;
            let until_tick = next_tick.saturating_duration_since(Instant::now());
            let until_window = wake_at
                .and_then(|at| (at - Utc::now()).to_std().ok())
                .unwrap_or(Duration::MAX);
            let nap = self.options.poll.min(until_tick).min(until_window);
            tokio::select! {
                () = stop.cancelled() => return None,
                () = lost.cancelled() => return None,
                () = self.job_ended.notified() => nudged = true,
                () = self.changed.notified() => nudged = true,
                () = self.control.woken() => nudged = true,
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// Looks at the source; true when it moved. A moved source's candidates are read newest
    /// first, and the first acceptable one is put in force.
    async fn look(&self, term: &Term, seen: &mut Seen) -> bool {
        let source = Arc::clone(&self.source);
        let limits = self.options.limits;
        let head = match tokio::task::spawn_blocking(move || source.head(&limits)).await {
            Ok(Ok(head)) => head,
            Ok(Err(error)) => {
                tracing::warn!(%error, "reading the source");
                return false;
            }
            Err(error) => {
                tracing::warn!(%error, "reading the source");
                return false;
            }
        };
        if seen.head.as_deref() == Some(head.as_str()) {
            return false;
        }
        let since = seen.head.clone().or_else(|| seen.applied.clone());
        let candidates = match self.source.candidates(since.as_deref(), &head) {
            Ok(candidates) => candidates,
            Err(error) => {
                tracing::warn!(%error, "walking the branch");
                vec![head.clone()]
            }
        };
        seen.refusal = None;
        seen.diagnostics.clear();
        let mut found = false;
        for id in &candidates {
            match self.accept(term, id).await {
                Ok(desired) => {
                    tracing::info!(revision = %desired.revision, "revision in force");
                    self.put_in_force(term, seen, desired).await;
                    found = true;
                    break;
                }
                Err(refused) => {
                    if id == &head {
                        seen.refusal = Some(refused.reason.clone());
                        seen.diagnostics = refused.diagnostics;
                    }
                }
            }
        }
        // Nothing since is acceptable, and nothing is in force yet: the revision applied
        // last stays in force.
        if !found
            && seen.good.is_none()
            && let Some(applied) = seen.applied.clone()
            && let Ok(desired) = self.accept(term, &applied).await
        {
            self.put_in_force(term, seen, desired).await;
        }
        seen.head = Some(head);
        true
    }

    /// Reads revision `id` and accepts it when it is valid (and signed, when signatures are
    /// required); either way records and audits what was seen.
    async fn accept(&self, term: &Term, id: &str) -> Result<Desired, Refused> {
        let source = Arc::clone(&self.source);
        let (limits, rev) = (self.options.limits, id.to_string());
        let cache = Arc::clone(&self.cache);
        let read = tokio::task::spawn_blocking(move || {
            // A poisoned cache (a panic while validating) is only a cache: start afresh.
            let mut cache = cache.lock().unwrap_or_else(|poisoned| {
                let mut cache = poisoned.into_inner();
                *cache = validate::Cache::default();
                cache
            });
            let mut revision = source.read(&rev, &limits, &cache)?;
            let inputs = std::mem::take(&mut revision.inputs);
            let validation = validate::check_cached(inputs, &limits, &mut cache);
            Ok::<_, follow::Error>((revision, validation))
        })
        .await;
        let (revision, mut validation) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => return Err(Refused::new(format!("revision {id}: {error}"))),
            Err(error) => return Err(Refused::new(format!("revision {id}: {error}"))),
        };
        let signer = self.signature(&revision).await;
        let Revision { id, commit, .. } = revision;
        let commit_audit = commit.as_ref().map(audit_commit);
        let approver = commit.as_ref().map_or_else(
            || self.options.operator.clone(),
            |commit| Actor {
                kind: ActorKind::Git,
                id: commit.author.name.clone(),
                email: Some(commit.author.email.clone()),
            },
        );
        let errors = validation
            .diagnostics
            .iter()
            .filter(|diagnostic| diagnostic.is_error())
            .count();
        let refusal = match (&signer, validation.take_valid()) {
            (Some(Err(refusal)), _) => Some(format!("revision {id} is not applied: {refusal}")),
            (_, None) => Some(format!(
                "revision {id} is not applied: it has {errors} error(s); the last good revision stays in force"
            )),
            (_, Some(fleet)) => {
                let desired = Desired {
                    fleet,
                    sources: std::mem::take(&mut validation.sources),
                    revision: id.clone(),
                    commit: commit_audit.clone(),
                    approver: approver.clone(),
                };
                self.record_seen(term, &id, commit.as_ref(), &signer, None)
                    .await;
                return Ok(desired);
            }
        };
        let reason = refusal.unwrap_or_default();
        let diagnostics = diag_render::entries(&validation.diagnostics, &validation.sources)
            .iter()
            .map(|entry| serde_json::to_value(entry).unwrap_or_default())
            .collect();
        if errors > 0 {
            let text = diag_render::text(
                &validation.diagnostics,
                &validation.sources,
                diag_render::Color::Never,
            );
            tracing::warn!(revision = %id, errors, diagnostics = %text, "{reason}");
        } else {
            tracing::warn!(revision = %id, "{reason}");
        }
        self.record_seen(term, &id, commit.as_ref(), &signer, Some(&reason))
            .await;
        Err(Refused {
            reason,
            diagnostics,
        })
    }

    /// The signature check of a revision, when signatures are required.
    async fn signature(&self, revision: &Revision) -> Option<Result<Signer, String>> {
        let signers = self.signers.clone()?;
        let Some(repository) = self.source.repository() else {
            return Some(Err(
                "signed commits are required, but the source is a folder outside git".to_string(),
            ));
        };
        let id = revision.id.clone();
        let checked = tokio::task::spawn_blocking(move || {
            crate::source::signature::verify_commit(&repository, &id, &signers)
                .map_err(|refusal| refusal.to_string())
        })
        .await;
        Some(checked.unwrap_or_else(|error| Err(error.to_string())))
    }

    /// Records a revision as seen, and audits it: `commit.seen` (with the signer) or
    /// `commit.refused` (with the reason); for a folder, `folder.changed`.
    async fn record_seen(
        &self,
        term: &Term,
        id: &str,
        commit: Option<&CommitInfo>,
        signer: &Option<Result<Signer, String>>,
        refusal: Option<&str>,
    ) {
        let now = Utc::now();
        let (action, resource) = match (commit, refusal) {
            (Some(_), None) => ("commit.seen", format!("commit/{id}")),
            (Some(_), Some(_)) => ("commit.refused", format!("commit/{id}")),
            (None, _) => ("folder.changed", format!("folder/{id}")),
        };
        let actor = commit.map_or_else(
            || self.options.operator.clone(),
            |_| Actor::system(&self.options.holder),
        );
        let mut record = Record::new(actor, action, &resource);
        record.commit = commit.map(audit_commit);
        record.key = Some(format!("{resource}/{action}"));
        if let Some(refusal) = refusal {
            record.result = AuditOutcome::Failure;
            record.error = Some(refusal.to_string());
        }
        match signer {
            Some(Ok(signer)) => {
                record.metadata.insert(
                    "signer".to_string(),
                    serde_json::json!({"principal": signer.principal, "fingerprint": signer.fingerprint}),
                );
            }
            Some(Err(refusal)) => {
                record
                    .metadata
                    .insert("signature".to_string(), serde_json::json!(refusal));
            }
            None => {}
        }
        record
            .metadata
            .insert("epoch".to_string(), serde_json::json!(term.epoch));
        if let Err(error) = self.store.append_one(record).await {
            tracing::warn!(%error, revision = %id, "auditing a revision seen");
        }
        if let Some(commit) = commit {
            let record = CommitRecord {
                sha: id.to_string(),
                seen_at: now,
                applied_at: None,
                author: person(&commit.author),
                committer: person(&commit.committer),
                summary: commit.summary.clone(),
                approved_by: commit.approved_by.clone(),
                reviewed_by: commit.reviewed_by.clone(),
                valid: refusal.is_none(),
            };
            if let Err(error) = self.store.record_commit(&record).await {
                tracing::warn!(%error, revision = %id, "recording a commit seen");
            }
        }
    }

    /// One pass over the revision in force, recorded for `status`; none without one. A pass
    /// that did not observe and finds the work done observes before it says so: converged
    /// means the instances run as applied, not only that their jobs ended.
    async fn pass(&self, term: &Term, seen: &mut Seen, observe: bool) -> Option<Outcome> {
        let desired = Arc::clone(seen.good.as_ref()?);
        match control::pause(&self.store).await {
            Ok(pause) if pause.paused => {
                self.report(term, seen, None, true).await;
                return None;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "reading the pause; trying again at the next wake");
                return None;
            }
        }
        let desired = desired.as_ref();
        let mut observe = observe;
        let (outcome, now) = loop {
            let ctx = Context {
                store: Arc::clone(&self.store),
                queue: Arc::clone(&self.queue),
                drivers: if observe {
                    Arc::clone(&self.drivers)
                } else {
                    Arc::default()
                },
                epoch: term.epoch,
                max_attempts: self.options.max_attempts,
                actor: Actor::system(&self.options.holder),
            };
            let now = Utc::now();
            let span = tracing::info_span!("reconcile", revision = %desired.revision, observe);
            let mut memo = self.memo.lock().await;
            let started = Instant::now();
            let outcome = tracing::Instrument::instrument(
                reconcile::reconcile(&ctx, desired, now, &mut memo),
                span,
            )
            .await;
            self.metrics
                .reconciled(started.elapsed().as_secs_f64(), outcome.is_ok());
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::warn!(%error, "the pass failed; trying again at the next wake");
                    return None;
                }
            };
            if observe || !outcome.converged() || self.drivers.is_empty() {
                break (outcome, now);
            }
            observe = true;
        };
        seen.last_pass = Some(now);
        if !outcome.enqueued.is_empty() {
            tracing::info!(
                jobs = outcome.enqueued.len(),
                entities = outcome.entities,
                "reconciled"
            );
        }
        if outcome.converged() && seen.applied.as_deref() != Some(desired.revision.as_str()) {
            self.mark_applied(desired, term).await;
            seen.applied = Some(desired.revision.clone());
        }
        self.report(term, seen, Some(&outcome), false).await;
        Some(outcome)
    }

    /// Puts a revision in force: for the next passes, for the API, and its instances'
    /// owners for the API's scoped tokens of any process.
    async fn put_in_force(&self, term: &Term, seen: &mut Seen, desired: Desired) {
        let desired = Arc::new(desired);
        let owners: BTreeMap<&String, serde_json::Value> = desired
            .fleet
            .fleet()
            .instances
            .iter()
            .map(|(name, instance)| {
                (
                    name,
                    serde_json::json!({
                        "partner": instance.partner.value,
                        "tenant": instance.tenant.as_ref().map(|tenant| &tenant.value),
                        "channel": instance.channel.value,
                    }),
                )
            })
            .collect();
        let value = serde_json::json!({ "epoch": term.epoch, "instances": owners });
        if seen.owners.as_ref() != Some(&value) {
            match self
                .store
                .put_daemon_state(OWNERS, &value, Utc::now())
                .await
            {
                Ok(()) => seen.owners = Some(value),
                Err(error) => tracing::warn!(%error, "recording the instances' owners"),
            }
        }
        self.control.set_desired(Some(Arc::clone(&desired)));
        seen.good = Some(desired);
    }

    /// Records the revision in force as applied: its ready work is done.
    async fn mark_applied(&self, desired: &Desired, term: &Term) {
        let now = Utc::now();
        let resource = match desired.commit {
            Some(_) => format!("commit/{}", desired.revision),
            None => format!("folder/{}", desired.revision),
        };
        let action = if desired.commit.is_some() {
            "commit.applied"
        } else {
            "folder.applied"
        };
        let mut record = Record::new(desired.approver.clone(), action, &resource);
        record.commit = desired.commit.clone();
        record.key = Some(format!("{resource}/applied"));
        record
            .metadata
            .insert("epoch".to_string(), serde_json::json!(term.epoch));
        if let Err(error) = self.store.append_one(record).await {
            tracing::warn!(%error, "auditing an applied revision");
        }
        if desired.commit.is_some()
            && let Err(error) = self.store.mark_commit_applied(&desired.revision, now).await
        {
            tracing::warn!(%error, "recording an applied commit");
        }
        tracing::info!(revision = %desired.revision, "applied");
    }

    /// Writes what `status` shows; without an outcome (paused), what waits stays as it was.
    async fn report(&self, term: &Term, seen: &Seen, outcome: Option<&Outcome>, paused: bool) {
        let now = Utc::now();
        let desired = seen.good.as_ref();
        let report = serde_json::json!({
            "paused": paused,
            "leader": self.options.holder,
            "epoch": term.epoch,
            "last": seen.last_pass.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "source": self.source.describe(),
            "seen": seen.head,
            "valid": seen.refusal.is_none(),
            "refusal": seen.refusal,
            "diagnostics": seen.diagnostics,
            "in_force": desired.map(|desired| desired.revision.clone()),
            "applied": seen.applied,
            "instances": desired
                .map(|desired| desired.fleet.fleet().instances.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default(),
        });
        let waiting = outcome.map(|outcome| ("waiting", serde_json::json!(outcome.waiting)));
        for (key, value) in std::iter::once(("reconcile", report)).chain(waiting) {
            if let Err(error) = self.store.put_daemon_state(key, &value, now).await {
                tracing::warn!(%error, "recording the daemon's report");
            }
        }
    }
}

/// A revision not put in force.
struct Refused {
    reason: String,
    diagnostics: Vec<serde_json::Value>,
}

impl Refused {
    fn new(reason: String) -> Refused {
        tracing::warn!("{reason}");
        Refused {
            reason,
            diagnostics: Vec::new(),
        }
    }
}

/// Whether `--once` is done after a pass.
fn once_exit(outcome: &Outcome, seen: &Seen) -> Option<Exit> {
    if outcome.stuck() {
        let jobs: Vec<String> = outcome
            .stuck
            .iter()
            .map(|job| {
                format!(
                    "{} ({} of {}, {})",
                    job.id,
                    job.kind.as_str(),
                    job.instance,
                    job.status.as_str()
                )
            })
            .collect();
        return Some(Exit::Stuck(format!(
            "work waits on jobs that ended without success: {}",
            jobs.join(", ")
        )));
    }
    if !outcome.converged() {
        return None;
    }
    match &seen.refusal {
        Some(refusal) => Some(Exit::Stuck(refusal.clone())),
        None => Some(Exit::Converged),
    }
}

/// A commit as the audit log carries it.
fn audit_commit(commit: &CommitInfo) -> Commit {
    Commit {
        sha: commit.sha.clone(),
        author: person(&commit.author),
        committer: person(&commit.committer),
        approved_by: commit.approved_by.clone(),
        reviewed_by: commit.reviewed_by.clone(),
    }
}

/// A person of a commit, as the audit log and the store carry one.
fn person(person: &crate::source::Person) -> Person {
    Person {
        name: person.name.clone(),
        email: person.email.clone(),
    }
}
