//! The one leader among the `wakafleet run` processes of a store: which process plans and
//! enqueues.
//!
//! On PostgreSQL an [`Elector`] takes a session advisory lock on a connection of its own,
//! never one of the store's pool: the lock belongs to the session, and a pooled connection
//! handed back would keep it. Holding the lock, it begins a term in the store
//! ([`Store::begin_term`]), whose epoch the leader names in every write it makes
//! ([`Store::enqueue_fenced`] and its siblings). While it leads it checks the lock's
//! connection and renews the term every `check_every`; when the server ended the session (and
//! so freed the lock) without the process noticing, the check fails and the leader steps
//! down, and should it not notice in time, the next leader's term refuses its writes anyway.
//! On SQLite there is one process, which leads as soon as it has begun its term.
//!
//! This module decides who leads; what the leader does is the rest of `daemon`'s business.

use std::{fmt, str::FromStr, time::Duration};

use sqlx::{
    Connection, PgConnection,
    postgres::{PgAdvisoryLock, PgConnectOptions},
};
use tokio_util::sync::CancellationToken;

use crate::{
    secret::{Secret, redact_url},
    store::{self, Store, leadership::Term},
};

/// How often an [`Elector::single`] renews its term.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Takes and keeps leadership for one process, named by its holder string.
pub struct Elector {
    holder: String,
    lock: Lock,
}

/// Why an elector could not lead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL as shown, its password redacted.
    #[error("`{0}` is not a PostgreSQL URL for the leader lock")]
    Url(String),
    #[error("the leader lock could not be taken on {url}")]
    Lock {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("holding the leader lock, {holder} could not begin a term in the store")]
    Term {
        holder: String,
        #[source]
        source: store::Error,
    },
}

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    /// The stop token was cancelled; the lock was released.
    #[error("the leader was asked to stop")]
    Stopped,
    /// The lock's connection failed its check: the server may have freed the lock.
    #[error("the leader lock's connection failed its check")]
    Connection(#[source] sqlx::Error),
    /// The lock's connection did not answer its check in time.
    #[error("the leader lock's connection did not answer its check within {0:?}")]
    Unanswered(Duration),
    /// A later term began: another process leads.
    #[error("a later term began: the store is at epoch {current}")]
    Deposed { current: i64 },
    /// The store could not renew the term, so this process cannot tell it still leads.
    #[error("the term could not be renewed in the store")]
    Store(#[source] store::Error),
}

enum Lock {
    /// SQLite: the one process leads.
    Single,
    Postgres(Box<Advisory>),
}

/// The advisory lock on a connection of the elector's own.
struct Advisory {
    options: PgConnectOptions,
    /// The URL without its password, for messages.
    url: String,
    key: i64,
    check_every: Duration,
    connection: Option<PgConnection>,
    /// Whether `connection`'s session holds the lock. Session locks stack, so the elector
    /// takes it only when it does not hold it already.
    held: bool,
}

impl Elector {
    /// An elector that takes the leader lock of the PostgreSQL database at `url`, the store's,
    /// for `holder` (host and pid, say), checking it every `check_every`.
    ///
    /// Fails with [`Error::Url`] when `url` is not a PostgreSQL URL; nothing is connected
    /// before [`Elector::acquire`].
    pub fn postgres(url: &Secret, holder: String, check_every: Duration) -> Result<Elector, Error> {
        let shown = redact_url(url.expose());
        if store::Backend::of_url(url.expose()) != Some(store::Backend::Postgres) {
            return Err(Error::Url(shown));
        }
        let options = PgConnectOptions::from_str(url.expose())
            .map_err(|_| Error::Url(shown.clone()))?
            .application_name("wakafleet leader");
        Ok(Elector {
            holder,
            lock: Lock::Postgres(Box::new(Advisory {
                options,
                url: shown,
                key: lock_key(),
                check_every,
                connection: None,
                held: false,
            })),
        })
    }

    /// An elector for a store only one process uses (SQLite): it leads as soon as it has
    /// begun its term, and renews it every [`CHECK_EVERY`].
    pub fn single(holder: String) -> Elector {
        Elector {
            holder,
            lock: Lock::Single,
        }
    }

    /// The process this elector leads for.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Waits until this process holds the leader lock, then begins its term in `store` and
    /// returns it; none when `stop` is cancelled first.
    ///
    /// On PostgreSQL the lock is tried every `check_every`, connecting again whenever the
    /// connection fails for a reason that may pass (the server is down or restarting).
    /// Fails with [`Error::Lock`] when the server refuses the connection for good (a wrong
    /// password, say), and with [`Error::Term`] when the store cannot begin the term; the
    /// lock is kept then, and a later call does not take it twice.
    pub async fn acquire(
        &mut self,
        store: &Store,
        stop: &CancellationToken,
    ) -> Result<Option<Term>, Error> {
        if let Lock::Postgres(advisory) = &mut self.lock
            && !advisory.lock(stop).await?
        {
            return Ok(None);
        }
        if stop.is_cancelled() {
            return Ok(None);
        }
        let term = store
            .begin_term(&self.holder, store::now())
            .await
            .map_err(|source| Error::Term {
                holder: self.holder.clone(),
                source,
            })?;
        tracing::info!(holder = %self.holder, epoch = term.epoch, "leading: began a term");
        Ok(Some(term))
    }

    /// Leads under `term` until leadership is lost, and returns why.
    ///
    /// Every `check_every` the lock's connection is checked (`SELECT 1`, answered within
    /// `check_every`) and the term renewed; a failed check or a later term ends it. When
    /// `stop` is cancelled the lock is released at once, so a waiting process takes it
    /// without waiting for this one's connection to end, and [`Lost::Stopped`] is returned.
    /// Otherwise the lock's connection is dropped, which frees whatever the session held.
    pub async fn hold(&mut self, store: &Store, term: &Term, stop: &CancellationToken) -> Lost {
        let check_every = match &self.lock {
            Lock::Single => CHECK_EVERY,
            Lock::Postgres(advisory) => advisory.check_every,
        };
        let lost = loop {
            let check = async {
                tokio::time::sleep(check_every).await;
                if let Lock::Postgres(advisory) = &mut self.lock {
                    advisory.check().await?;
                }
                match store.renew_term(term.epoch, store::now()).await {
                    Ok(()) => Ok(()),
                    Err(store::Error::Deposed { current, .. }) => Err(Lost::Deposed { current }),
                    Err(error) => Err(Lost::Store(error)),
                }
            };
            // A check cut off by the stop may leave the connection mid-query; the release
            // below then drops it instead of unlocking on it.
            tokio::select! {
                biased;
                () = stop.cancelled() => break Lost::Stopped,
                checked = check => if let Err(lost) = checked { break lost },
            }
        };
        if let Lock::Postgres(advisory) = &mut self.lock {
            advisory.release(&lost).await;
        }
        match &lost {
            Lost::Stopped => {
                tracing::info!(holder = %self.holder, epoch = term.epoch, "stopped leading")
            }
            lost => {
                tracing::warn!(holder = %self.holder, epoch = term.epoch, reason = %lost, "lost leadership")
            }
        }
        lost
    }
}

impl fmt::Debug for Elector {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = formatter.debug_struct("Elector");
        debug.field("holder", &self.holder);
        match &self.lock {
            Lock::Single => debug.field("lock", &"single"),
            Lock::Postgres(advisory) => debug
                .field("url", &advisory.url)
                .field("held", &advisory.held),
        };
        debug.finish()
    }
}

impl Advisory {
    /// Waits until the session holds the lock (true), or `stop` is cancelled (false).
    async fn lock(&mut self, stop: &CancellationToken) -> Result<bool, Error> {
        loop {
            if self.held {
                return Ok(true);
            }
            // The connection is moved into the attempt and comes back only with its outcome:
            // an attempt cut off by the stop drops it, and with the session goes any lock the
            // server granted meanwhile.
            let attempt = try_lock(&self.options, self.connection.take(), self.key);
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(false),
                result = attempt => match result {
                    Ok((connection, held)) => {
                        self.connection = Some(connection);
                        self.held = held;
                        if held {
                            return Ok(true);
                        }
                        tracing::debug!(url = %self.url, "another process holds the leader lock");
                    }
                    Err(error) if store::is_transient(&error) => {
                        tracing::warn!(url = %self.url, %error, "the leader lock's server is unreachable; retrying");
                    }
                    Err(source) => {
                        return Err(Error::Lock {
                            url: self.url.clone(),
                            source,
                        });
                    }
                },
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(false),
                () = tokio::time::sleep(self.check_every) => {}
            }
        }
    }

    /// Checks that the lock's session is alive, within `check_every`.
    async fn check(&mut self) -> Result<(), Lost> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(Lost::Unanswered(Duration::ZERO));
        };
        let ping = sqlx::Executor::execute(&mut *connection, "SELECT 1");
        match tokio::time::timeout(self.check_every, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(Lost::Connection(error)),
            Err(_) => Err(Lost::Unanswered(self.check_every)),
        }
    }

    /// Lets go of the lock after `lost`: unlocked on a stop, so another process takes it at
    /// once, and with the connection dropped otherwise (or when unlocking fails), which ends
    /// the session and whatever it held.
    async fn release(&mut self, lost: &Lost) {
        self.held = false;
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        if !matches!(lost, Lost::Stopped) {
            return;
        }
        let unlock = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .fetch_one(&mut connection);
        match tokio::time::timeout(self.check_every, unlock).await {
            Ok(Ok(true)) => self.connection = Some(connection),
            Ok(Ok(false)) => {
                tracing::warn!(url = %self.url, "the leader lock was no longer held when released");
                self.connection = Some(connection);
            }
            Ok(Err(error)) => {
                tracing::warn!(url = %self.url, %error, "the leader lock could not be released; dropping its connection");
            }
            Err(_) => {
                tracing::warn!(url = %self.url, "releasing the leader lock took too long; dropping its connection");
            }
        }
    }
}

/// Tries the lock once on `connection`, or on a new connection when there is none; returns
/// the connection and whether its session now holds the lock.
async fn try_lock(
    options: &PgConnectOptions,
    connection: Option<PgConnection>,
    key: i64,
) -> Result<(PgConnection, bool), sqlx::Error> {
    let mut connection = match connection {
        Some(connection) => connection,
        None => PgConnection::connect_with(options).await?,
    };
    let held = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut connection)
        .await?;
    Ok((connection, held))
}

/// The leader lock's key: the one sqlx's `PgAdvisoryLock::new("wakafleet")` derives (the
/// first eight bytes of the name's SHA-256). Advisory locks are per database, so stores in
/// two databases of one server have a leader each.
fn lock_key() -> i64 {
    PgAdvisoryLock::new("wakafleet")
        .key()
        .as_bigint()
        .expect("a lock named by a string has a single 64-bit key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_key_is_fixed() {
        assert_eq!(lock_key(), lock_key());
        assert_ne!(lock_key(), 0);
    }

    #[test]
    fn a_url_that_is_not_postgres_is_named_without_its_password() {
        let url = Secret::new("mysql://app:s3cretpw@localhost/db");
        let error = Elector::postgres(&url, "host:1".into(), CHECK_EVERY)
            .expect_err("not a PostgreSQL URL");
        assert!(!error.to_string().contains("s3cretpw"), "{error}");
        let elector = Elector::postgres(
            &Secret::new("postgres://app:s3cretpw@localhost/db"),
            "host:1".into(),
            CHECK_EVERY,
        )
        .expect("a PostgreSQL URL");
        assert!(!format!("{elector:?}").contains("s3cretpw"), "{elector:?}");
    }
}
