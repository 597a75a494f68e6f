//! What `/metrics` reads of the jobs table at each scrape: how many jobs are in each state by
//! kind, and the queue (ready, deferred, the oldest ready). Aggregates only, no rows read out,
//! so a scrape costs the same on a fleet of ten instances and of ten thousand.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::store::{Error, Store, micros, time};

/// The jobs table as the metrics see it at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobFigures {
    /// `(kind, status, jobs)`, with a running job asked to stop counted as `cancelling`.
    pub by_kind_and_status: Vec<(String, String, i64)>,
    /// Pending jobs whose `not_before` has passed: what workers can claim now.
    pub ready: i64,
    /// Pending jobs waiting for their `not_before` (a window, a backoff).
    pub deferred: i64,
    /// Since when the oldest ready job has been claimable (the later of its creation and its
    /// `not_before`); none when nothing is ready.
    pub oldest_ready_since: Option<DateTime<Utc>>,
}

impl Store {
    /// The jobs by kind and status, and the queue, at `now`.
    ///
    /// # Errors
    /// When the store fails, or holds a time it cannot read.
    pub async fn job_figures(&self, now: DateTime<Utc>) -> Result<JobFigures, Error> {
        let rows = self
            .retrying(|| {
                sqlx::query(
                    "SELECT kind, \
                     CASE WHEN status = 'running' AND cancel_requested_at_us IS NOT NULL \
                          THEN 'cancelling' ELSE status END AS state, \
                     COUNT(*) FROM jobs GROUP BY kind, state ORDER BY kind, state",
                )
                .fetch_all(self.pool())
            })
            .await?;
        let by_kind_and_status = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let row = self
            .retrying(|| {
                sqlx::query(
                    "SELECT \
                     COALESCE(SUM(CASE WHEN not_before_us <= $1 THEN 1 ELSE 0 END), 0), \
                     COALESCE(SUM(CASE WHEN not_before_us > $1 THEN 1 ELSE 0 END), 0), \
                     MIN(CASE WHEN not_before_us <= $1 THEN \
                         CASE WHEN created_at_us > not_before_us THEN created_at_us ELSE not_before_us END \
                     END) \
                     FROM jobs WHERE status = 'pending'",
                )
                .bind(micros(now))
                .fetch_one(self.pool())
            })
            .await?;
        let oldest: Option<i64> = row.try_get(2)?;
        Ok(JobFigures {
            by_kind_and_status,
            ready: row.try_get(0)?,
            deferred: row.try_get(1)?,
            oldest_ready_since: oldest.map(time).transpose()?,
        })
    }
}
