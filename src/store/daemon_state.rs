//! What the reconcile daemon reports about itself, kept so that other processes (`wakafleet
//! status`, the API of a standby) read what the leader last saw: one JSON document per key,
//! replaced at each pass. It is a report, not history; the audit log is the history.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::store::{Error, Store, micros, time};

impl Store {
    /// Replaces the document under `key`.
    pub async fn put_daemon_state(
        &self,
        key: &str,
        value: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        let text = value.to_string();
        self.retrying(|| {
            sqlx::query(
                "INSERT INTO daemon_state (key, value, updated_at_us) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at_us = excluded.updated_at_us",
            )
            .bind(key)
            .bind(text.as_str())
            .bind(micros(at))
            .execute(self.pool())
        })
        .await?;
        Ok(())
    }

    /// The document under `key` and when it was written, if one was.
    pub async fn daemon_state(
        &self,
        key: &str,
    ) -> Result<Option<(serde_json::Value, DateTime<Utc>)>, Error> {
        let row = self
            .retrying(|| {
                sqlx::query("SELECT value, updated_at_us FROM daemon_state WHERE key = $1")
                    .bind(key)
                    .fetch_optional(self.pool())
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let text: String = row.try_get(0)?;
        let value = serde_json::from_str(&text)
            .map_err(|error| Error::Stored(format!("the daemon's `{key}` report: {error}")))?;
        Ok(Some((value, time(row.try_get(1)?)?)))
    }
}

/// What the recorded actual state is at: it changes whenever an instance or an entity is
/// recorded, changed or forgotten, so a daemon may keep the state it read while this stays
/// the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    instances: (i64, i64),
    entities: (i64, i64),
}

impl Store {
    /// The generation of the recorded actual state: the count and newest change of the
    /// instances and of the entities (cheap: two aggregates, no rows read out).
    pub async fn generation(&self) -> Result<Generation, Error> {
        let row = self
            .retrying(|| {
                sqlx::query(
                    "SELECT (SELECT COUNT(*) FROM instances), \
                     (SELECT COALESCE(MAX(updated_at_us), 0) FROM instances), \
                     (SELECT COUNT(*) FROM entities), \
                     (SELECT COALESCE(MAX(updated_at_us), 0) FROM entities)",
                )
                .fetch_one(self.pool())
            })
            .await?;
        Ok(Generation {
            instances: (row.try_get(0)?, row.try_get(1)?),
            entities: (row.try_get(2)?, row.try_get(3)?),
        })
    }
}

/// What everything `status` reads is at: the instances, the jobs and their steps, the
/// commits and the daemon's reports. Equal fingerprints mean equal status (but for its
/// time), so a reader may keep what it rendered while this stays the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint([i64; 14]);

impl Store {
    /// The fingerprint of what `status` reads: aggregates only, no rows read out.
    pub async fn fingerprint(&self) -> Result<Fingerprint, Error> {
        let row = self
            .retrying(|| {
                sqlx::query(
                    "SELECT (SELECT COUNT(*) FROM instances), \
                     (SELECT COALESCE(MAX(updated_at_us), 0) FROM instances), \
                     (SELECT COUNT(*) FROM jobs), \
                     (SELECT CAST(COALESCE(SUM(attempts), 0) AS BIGINT) FROM jobs), \
                     (SELECT COALESCE(MAX(not_before_us), 0) FROM jobs), \
                     (SELECT COALESCE(MAX(finished_at_us), 0) FROM jobs), \
                     (SELECT COALESCE(MAX(cancel_requested_at_us), 0) FROM jobs), \
                     (SELECT COUNT(*) FROM jobs WHERE status IN ('pending', 'running')), \
                     (SELECT COUNT(*) FROM job_steps), \
                     (SELECT COALESCE(MAX(started_at_us), 0) FROM job_steps), \
                     (SELECT COALESCE(MAX(finished_at_us), 0) FROM job_steps), \
                     (SELECT COUNT(*) FROM job_steps WHERE status = 'running'), \
                     (SELECT COALESCE(MAX(updated_at_us), 0) FROM daemon_state), \
                     (SELECT COUNT(*) FROM commits WHERE applied_at_us IS NOT NULL)",
                )
                .fetch_one(self.pool())
            })
            .await?;
        let mut values = [0_i64; 14];
        for (index, value) in values.iter_mut().enumerate() {
            *value = row.try_get::<i64, _>(index)?;
        }
        Ok(Fingerprint(values))
    }
}
