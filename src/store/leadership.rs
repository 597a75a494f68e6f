//! Leadership as the store records it: the term of the one `wakafleet run` process that plans
//! and enqueues, and the fence on everything that process writes.
//!
//! The table `leadership` holds one row: the epoch (the number of terms begun, 0 before the
//! first), the holder of the current term, when it began and when it was last renewed. A
//! process begins a term once it holds the leader lock ([`Store::begin_term`]), and every
//! write it makes as leader names its epoch: [`Store::enqueue_fenced`] and its siblings are
//! refused with [`Error::Deposed`], writing nothing, once a later term has begun. A leader
//! whose lock went with its connection, without it knowing, can therefore not write beside
//! the next one.
//!
//! The lock itself is not the store's business: `daemon::leader` takes it (a PostgreSQL
//! advisory lock on a connection of its own) and decides when a term begins and ends.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{
    Any, Row,
    any::{AnyArguments, AnyRow},
    query::Query,
};

use crate::{
    plan::ResourceType,
    store::{
        Backend, Error, Store,
        jobs::{Job, NewJob},
        micros,
        state::json,
        time,
    },
};

/// A leader's term: the epoch it began, who holds it, since when, and when it was last
/// renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub epoch: i64,
    /// The process holding the term, host and pid as its caller named it.
    pub holder: String,
    pub since: DateTime<Utc>,
    pub renewed: DateTime<Utc>,
}

const TERM_COLUMNS: &str = "epoch, holder, since_us, renewed_us";

impl Store {
    /// Begins a new term for `holder` at `at` and returns it: the epoch is incremented and
    /// the holder recorded in one statement, so two processes that begin terms at once get
    /// two epochs, and the later one deposes the earlier.
    ///
    /// A call retried after an I/O error may have begun a term the first time; the retry
    /// begins another, and the first epoch is simply never used.
    pub async fn begin_term(&self, holder: &str, at: DateTime<Utc>) -> Result<Term, Error> {
        let sql = format!(
            "UPDATE leadership SET epoch = epoch + 1, holder = $1, since_us = $2, renewed_us = $2 \
             RETURNING {TERM_COLUMNS}"
        );
        let row = self
            .retrying(|| {
                sqlx::query(&sql)
                    .bind(holder)
                    .bind(micros(at))
                    .fetch_optional(self.pool())
            })
            .await?;
        match row {
            Some(row) => term_from_row(&row),
            None => Err(no_leadership_row()),
        }
    }

    /// The current term; none before the first began.
    pub async fn term(&self) -> Result<Option<Term>, Error> {
        let sql = format!("SELECT {TERM_COLUMNS} FROM leadership");
        let row = self
            .retrying(|| sqlx::query(&sql).fetch_optional(self.pool()))
            .await?;
        let term = term_from_row(&row.ok_or_else(no_leadership_row)?)?;
        Ok((term.epoch > 0).then_some(term))
    }

    /// Records that the leader of `epoch` still held its lock at `at`.
    ///
    /// Fails with [`Error::Deposed`] when a later term has begun.
    pub async fn renew_term(&self, epoch: i64, at: DateTime<Utc>) -> Result<(), Error> {
        let result = self
            .retrying(|| {
                sqlx::query("UPDATE leadership SET renewed_us = $2 WHERE epoch = $1")
                    .bind(epoch)
                    .bind(micros(at))
                    .execute(self.pool())
            })
            .await?;
        if result.rows_affected() == 1 {
            return Ok(());
        }
        Err(self.deposed(epoch).await)
    }

    /// [`Store::enqueue`] by the leader of `epoch`: the same job, idempotent by its id, or
    /// [`Error::Deposed`] with nothing enqueued once a later term has begun.
    pub async fn enqueue_fenced(
        &self,
        job: &NewJob,
        at: DateTime<Utc>,
        epoch: i64,
    ) -> Result<Job, Error> {
        self.insert_job(job, at, Some(epoch)).await
    }

    /// [`Store::mark_commit_applied`] by the leader of `epoch`; false when the commit is not
    /// recorded, [`Error::Deposed`] with nothing written once a later term has begun.
    pub async fn mark_commit_applied_fenced(
        &self,
        sha: &str,
        at: DateTime<Utc>,
        epoch: i64,
    ) -> Result<bool, Error> {
        let sql = format!(
            "UPDATE commits SET applied_at_us = $2 WHERE sha = $1 AND {} RETURNING sha",
            self.epoch_fence(3)
        );
        let row = self
            .under_epoch(epoch, &sql, |query| query.bind(sha).bind(micros(at)))
            .await?;
        Ok(row.is_some())
    }

    /// [`Store::put_entity`] by the leader of `epoch`, or [`Error::Deposed`] with nothing
    /// written once a later term has begun.
    pub async fn put_entity_fenced(
        &self,
        kind: ResourceType,
        id: &str,
        fields: &BTreeMap<String, String>,
        at: DateTime<Utc>,
        epoch: i64,
    ) -> Result<(), Error> {
        let fields = json(fields);
        let sql = format!(
            "INSERT INTO entities (resource_type, id, fields, updated_at_us) \
             SELECT $1, $2, $3, $4 WHERE {} \
             ON CONFLICT (resource_type, id) DO UPDATE SET fields = excluded.fields, \
             updated_at_us = excluded.updated_at_us RETURNING id",
            self.epoch_fence(5)
        );
        let row = self
            .under_epoch(epoch, &sql, |query| {
                query
                    .bind(kind.as_str())
                    .bind(id)
                    .bind(fields.as_str())
                    .bind(micros(at))
            })
            .await?;
        match row {
            Some(_) => Ok(()),
            None => Err(Error::Stored(format!(
                "{} `{id}` was neither written nor refused",
                kind.as_str()
            ))),
        }
    }

    /// [`Store::delete_entity`] by the leader of `epoch`; false when it was not recorded,
    /// [`Error::Deposed`] with nothing deleted once a later term has begun.
    pub async fn delete_entity_fenced(
        &self,
        kind: ResourceType,
        id: &str,
        epoch: i64,
    ) -> Result<bool, Error> {
        let sql = format!(
            "DELETE FROM entities WHERE resource_type = $1 AND id = $2 AND {} RETURNING id",
            self.epoch_fence(3)
        );
        let row = self
            .under_epoch(epoch, &sql, |query| query.bind(kind.as_str()).bind(id))
            .await?;
        Ok(row.is_some())
    }

    /// The condition under which a statement of the leader writes: the epoch, bound at
    /// placeholder `$placeholder`, is still the current one.
    ///
    /// The check is part of the statement that writes, so nothing comes between the two.
    /// On PostgreSQL the condition locks the leadership row `FOR SHARE`, which conflicts
    /// with the update of [`Store::begin_term`]: a term that begins while the statement
    /// runs waits for it to commit, and a statement that runs while a term begins waits
    /// for the new epoch and then reads it (read committed checks a row locked after a
    /// concurrent update again). Every write of an old epoch has therefore committed
    /// before the next term began, or is refused. Fenced writes only share the lock, so
    /// they do not wait for each other. A transaction that reads the epoch and then writes
    /// would do as well on PostgreSQL, at two more round trips; on SQLite it would not,
    /// since a deferred transaction that read before another connection wrote fails to
    /// write. SQLite has no `FOR SHARE` and needs none: a statement that writes holds the
    /// database's one write lock from its start, its reads included.
    pub(crate) fn epoch_fence(&self, placeholder: usize) -> String {
        let lock = match self.backend {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        };
        format!("EXISTS (SELECT 1 FROM leadership WHERE epoch = ${placeholder}{lock})")
    }

    /// Runs `sql`, a statement holding [`Store::epoch_fence`] at its last placeholder, with the
    /// values `bind` adds and then `epoch`, and returns the row it returned.
    ///
    /// No row means either that the fence refused the statement, reported as
    /// [`Error::Deposed`], or that the statement had nothing to change: epochs only grow,
    /// so an epoch still current after the statement was current while it ran.
    pub(crate) async fn under_epoch<'q, B>(
        &self,
        epoch: i64,
        sql: &'q str,
        bind: B,
    ) -> Result<Option<AnyRow>, Error>
    where
        B: Fn(Query<'q, Any, AnyArguments<'q>>) -> Query<'q, Any, AnyArguments<'q>>,
    {
        let row = self
            .retrying(|| {
                bind(sqlx::query(sql))
                    .bind(epoch)
                    .fetch_optional(self.pool())
            })
            .await?;
        if row.is_none() {
            let current = self.current_epoch().await?;
            if current != epoch {
                return Err(Error::Deposed { epoch, current });
            }
        }
        Ok(row)
    }

    /// [`Error::Deposed`] for the leader of `epoch`, naming the current epoch, or the error
    /// that stopped the store from telling it.
    async fn deposed(&self, epoch: i64) -> Error {
        match self.current_epoch().await {
            Ok(current) => Error::Deposed { epoch, current },
            Err(error) => error,
        }
    }

    async fn current_epoch(&self) -> Result<i64, Error> {
        let epoch: Option<i64> = self
            .retrying(|| {
                sqlx::query_scalar("SELECT epoch FROM leadership").fetch_optional(self.pool())
            })
            .await?;
        epoch.ok_or_else(no_leadership_row)
    }
}

fn term_from_row(row: &AnyRow) -> Result<Term, Error> {
    Ok(Term {
        epoch: row.try_get(0)?,
        holder: row.try_get(1)?,
        since: time(row.try_get(2)?)?,
        renewed: time(row.try_get(3)?)?,
    })
}

/// The migration makes the one row and nothing deletes it.
fn no_leadership_row() -> Error {
    Error::Stored("the leadership table has no row".to_string())
}
