//! Jobs: what each kind of work does, step by step, and the workers that do it.
//!
//! A job kind is a workflow: a sequence of named steps, each idempotent (it checks what is
//! there before it acts), each with a timeout, some with an undo. The [`runner`] carries one
//! claimed job through its workflow under a lease it renews, records every step in the store
//! (fenced by the job and attempt it holds) and appends one audit record per step and
//! attempt; when a step fails it undoes the steps that ran, newest first (the rollback), and
//! the job is retried after a backoff or dead-lettered. A job taken over from a worker that
//! died resumes after its last finished step, and finishes a rollback that was cut off
//! before anything else.
//!
//! What the steps do is an [`Executor`]'s business: [`lifecycle::Lifecycle`] carries out the
//! lifecycle kinds over the driver's primitives; tests and benchmarks register their own.
//! The [`worker`] module runs runners on a pool, fed by a queue, and keeps the queue honest
//! (the reaper, the republishing of due jobs); [`schedule`] enqueues recurring work once per
//! firing however many schedulers run.

pub mod lifecycle;
pub mod payload;
pub mod runner;
pub mod schedule;
pub mod worker;

use std::{collections::BTreeMap, time::Duration};

use futures_util::future::BoxFuture;

use crate::store::jobs::Job;

pub use payload::{Payload, WireTarget};

/// The priority of a job that applies a security patch: claimed before every other ready
/// job; the rest keep the order they were enqueued in (the plan's order).
pub const SECURITY_PATCH: i64 = 100;

/// The priority of a job of `kind`: [`SECURITY_PATCH`] for an upgrade to a release that
/// carries a security fix, 0 for everything else.
pub fn priority(kind: crate::store::jobs::JobKind, security_patch: bool) -> i64 {
    match kind {
        crate::store::jobs::JobKind::Upgrade if security_patch => SECURITY_PATCH,
        _ => 0,
    }
}

/// One step of a workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepDef {
    /// Its name in the store and in the audit log (`instance.<kind>.step.<name>`).
    pub name: &'static str,
    /// How long it may run before it counts as failed.
    pub timeout: Duration,
    /// Whether it has an undo that a rollback runs.
    pub undo: bool,
}

impl StepDef {
    /// A step with no undo.
    pub const fn new(name: &'static str, timeout: Duration) -> StepDef {
        StepDef {
            name,
            timeout,
            undo: false,
        }
    }

    /// A step whose undo a rollback runs.
    pub const fn undone(name: &'static str, timeout: Duration) -> StepDef {
        StepDef {
            name,
            timeout,
            undo: true,
        }
    }
}

/// Why a step failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Worth another attempt after a backoff.
    #[error("{0}")]
    Failed(String),
    /// Retrying cannot mend it (a refused downgrade, a payload that cannot be read): the job
    /// fails at once.
    #[error("{0}")]
    Fatal(String),
}

impl StepError {
    pub fn message(&self) -> &str {
        match self {
            StepError::Failed(message) | StepError::Fatal(message) => message,
        }
    }
}

/// What a step sees: its job, what earlier steps left, and how its own last run ended.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    pub job: &'a Job,
    /// The outputs of the steps that finished, by step name.
    pub outputs: &'a BTreeMap<String, serde_json::Value>,
    /// This step as an earlier attempt left it, if one started it: a step that finds itself
    /// cut off while running (`Running`) knows a crash may have left its work half done.
    pub previous: Option<&'a crate::store::jobs::Step>,
    /// The worker's name.
    pub worker: &'a str,
}

/// What the steps of jobs do.
pub trait Executor: Send + Sync {
    /// The steps of `job`, in order; a fatal error when the job cannot be run at all.
    fn workflow(&self, job: &Job) -> Result<Vec<StepDef>, StepError>;

    /// Runs one step; what it returns is kept as the step's output for later steps.
    fn run<'a>(
        &'a self,
        step: &'a StepDef,
        context: Context<'a>,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>, StepError>>;

    /// Undoes one step that ran (or was cut off, or failed) during a rollback; it must be
    /// safe to repeat.
    fn undo<'a>(
        &'a self,
        step: &'a StepDef,
        context: Context<'a>,
    ) -> BoxFuture<'a, Result<(), StepError>>;
}
