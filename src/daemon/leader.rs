// TEMPORARY stand-in until the leadership work lands; replaced at merge.
use crate::{secret::Secret, store::Store};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
#[derive(Clone, Debug)]
pub struct Term {
    pub epoch: i64,
    pub holder: String,
    pub since: DateTime<Utc>,
    pub renewed: DateTime<Utc>,
}
pub struct Elector {
    holder: String,
}
#[derive(Debug)]
pub enum Lost {
    Stopped,
}
impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped")
    }
}
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Task(String),
}
impl Elector {
    pub fn postgres(_url: &Secret, holder: String, _check: Duration) -> Elector {
        Elector { holder }
    }
    pub fn single(holder: String) -> Elector {
        Elector { holder }
    }
    pub async fn acquire(
        &mut self,
        _store: &Store,
        stop: &CancellationToken,
    ) -> Result<Option<Term>, Error> {
        if stop.is_cancelled() {
            return Ok(None);
        }
        Ok(Some(Term {
            epoch: 1,
            holder: self.holder.clone(),
            since: Utc::now(),
            renewed: Utc::now(),
        }))
    }
    pub async fn hold(&mut self, _store: &Store, _term: &Term, stop: &CancellationToken) -> Lost {
        stop.cancelled().await;
        Lost::Stopped
    }
}
