//! What the rest of the process (the HTTP API) may ask of the daemon and see of it: the
//! revision in force, "reconcile now", "fetch now" (a webhook's push), and whether this
//! process leads. The pause is kept in the store instead, so that it holds for whichever
//! process leads and survives a restart.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicBool, Ordering},
};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::{
    daemon::reconcile::Desired,
    store::{self, Store, audit::Actor},
};

/// The key of the pause in the daemon's state.
const PAUSE: &str = "pause";

/// Shared between the daemon and those who talk to it; cheap to clone behind an `Arc`.
#[derive(Default)]
pub struct Control {
    desired: RwLock<Option<Arc<Desired>>>,
    wake: Notify,
    fetch: AtomicBool,
    leading: AtomicBool,
}

impl Control {
    /// The revision in force in this process, when it leads and one is.
    pub fn desired(&self) -> Option<Arc<Desired>> {
        // A poisoned lock only means a writer panicked between two whole assignments.
        self.desired
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Asks for a pass at once.
    pub fn reconcile_now(&self) {
        self.wake.notify_one();
    }

    /// Asks for a fetch of the remote and a pass at once (a push was announced).
    pub fn fetch_now(&self) {
        self.fetch.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether this process leads.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    pub(crate) fn set_desired(&self, desired: Option<Arc<Desired>>) {
        *self
            .desired
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = desired;
    }

    pub(crate) fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        if !leading {
            self.set_desired(None);
        }
    }

    /// Whether a fetch was asked for since the last call; clears the request.
    pub(crate) fn take_fetch(&self) -> bool {
        self.fetch.swap(false, Ordering::SeqCst)
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

/// Whether reconciliation is paused, who paused it and when.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pause {
    pub paused: bool,
    pub by: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

/// The pause as the store holds it: not paused when nobody ever paused.
///
/// # Errors
/// When the store fails.
pub async fn pause(store: &Store) -> Result<Pause, store::Error> {
    let Some((value, at)) = store.daemon_state(PAUSE).await? else {
        return Ok(Pause::default());
    };
    Ok(Pause {
        paused: value
            .get("paused")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        by: value
            .get("by")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string),
        at: Some(at),
    })
}

/// Pauses (no job is enqueued, running ones finish) or resumes reconciliation.
///
/// # Errors
/// When the store fails.
pub async fn set_pause(
    store: &Store,
    paused: bool,
    by: &Actor,
    at: DateTime<Utc>,
) -> Result<(), store::Error> {
    let value = serde_json::json!({ "paused": paused, "by": by.id });
    store.put_daemon_state(PAUSE, &value, at).await
}
