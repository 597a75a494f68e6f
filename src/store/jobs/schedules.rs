//! Schedules: work that recurs, enqueued on a cron expression read in a time zone.

use chrono::{DateTime, Utc};
use sqlx::{Row, any::AnyRow};

use crate::store::{
    Error, Store,
    jobs::{JobKind, payload_from},
    micros, time,
};

/// Work that recurs: a job enqueued on a cron schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Unique among schedules.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone the cron expression is read in.
    pub timezone: String,
    /// The kind of job it enqueues.
    pub job_kind: JobKind,
    /// The instance the job is for; none for a schedule over the whole fleet.
    pub instance: Option<String>,
    /// The region of the jobs it enqueues.
    pub region: String,
    /// The payload of the jobs it enqueues.
    pub payload: serde_json::Value,
    pub enabled: bool,
    pub last_run_at: Option<DateTime<Utc>>,
    /// When it is due next.
    pub next_run_at: DateTime<Utc>,
}

const SCHEDULE_COLUMNS: &str = "name, cron, timezone, job_kind, instance, payload, enabled, \
     last_run_at_us, next_run_at_us, region";

impl Store {
    /// Records a schedule, replacing the one of the same name.
    pub async fn put_schedule(&self, schedule: &Schedule) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, timezone = excluded.timezone, \
             job_kind = excluded.job_kind, instance = excluded.instance, payload = excluded.payload, \
             enabled = excluded.enabled, region = excluded.region, last_run_at_us = excluded.last_run_at_us, \
             next_run_at_us = excluded.next_run_at_us"
        );
        let payload = schedule.payload.to_string();
        self.retrying(|| {
            sqlx::query(&sql)
                .bind(schedule.name.as_str())
                .bind(schedule.cron.as_str())
                .bind(schedule.timezone.as_str())
                .bind(schedule.job_kind.as_str())
                .bind(schedule.instance.as_deref())
                .bind(payload.as_str())
                .bind(i64::from(schedule.enabled))
                .bind(schedule.last_run_at.map(micros))
                .bind(micros(schedule.next_run_at))
                .bind(schedule.region.as_str())
                .execute(self.pool())
        })
        .await?;
        Ok(())
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<Schedule>, Error> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name");
        let rows = self
            .retrying(|| sqlx::query(&sql).fetch_all(self.pool()))
            .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// The enabled schedules due at `now` (`next_run_at` passed), the longest due first.
    pub async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<Schedule>, Error> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE enabled = 1 AND next_run_at_us <= $1 \
             ORDER BY next_run_at_us, name"
        );
        let rows = self
            .retrying(|| sqlx::query(&sql).bind(micros(now)).fetch_all(self.pool()))
            .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Records that a schedule ran and when it is due next; false when there is no such
    /// schedule.
    pub async fn mark_schedule_ran(
        &self,
        name: &str,
        ran_at: DateTime<Utc>,
        next_run_at: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let result = self
            .retrying(|| {
                sqlx::query(
                    "UPDATE schedules SET last_run_at_us = $2, next_run_at_us = $3 WHERE name = $1",
                )
                .bind(name)
                .bind(micros(ran_at))
                .bind(micros(next_run_at))
                .execute(self.pool())
            })
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Moves a schedule that was due at `due` on to `next_run_at`, recording that it ran at
    /// `ran_at`, if no one did so first: true for the one scheduler among many whose firing
    /// it is, false for every other (and when there is no such schedule).
    pub async fn advance_schedule(
        &self,
        name: &str,
        due: DateTime<Utc>,
        ran_at: DateTime<Utc>,
        next_run_at: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let result = self
            .retrying(|| {
                sqlx::query(
                    "UPDATE schedules SET last_run_at_us = $3, next_run_at_us = $4 \
                     WHERE name = $1 AND next_run_at_us = $2",
                )
                .bind(name)
                .bind(micros(due))
                .bind(micros(ran_at))
                .bind(micros(next_run_at))
                .execute(self.pool())
            })
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Removes a schedule; false when there was none of that name.
    pub async fn delete_schedule(&self, name: &str) -> Result<bool, Error> {
        let result = self
            .retrying(|| {
                sqlx::query("DELETE FROM schedules WHERE name = $1")
                    .bind(name)
                    .execute(self.pool())
            })
            .await?;
        Ok(result.rows_affected() == 1)
    }
}

fn schedule_from_row(row: &AnyRow) -> Result<Schedule, Error> {
    let name: String = row.try_get(0)?;
    let job_kind: String = row.try_get(3)?;
    let payload: String = row.try_get(5)?;
    let last_run_at: Option<i64> = row.try_get(7)?;
    Ok(Schedule {
        cron: row.try_get(1)?,
        timezone: row.try_get(2)?,
        job_kind: JobKind::parse(&job_kind).ok_or_else(|| {
            Error::Stored(format!(
                "schedule `{name}` has the unknown job kind `{job_kind}`"
            ))
        })?,
        instance: row.try_get(4)?,
        payload: payload_from(&payload, &format!("the payload of schedule `{name}`"))?,
        enabled: row.try_get::<i64, _>(6)? != 0,
        last_run_at: last_run_at.map(time).transpose()?,
        next_run_at: time(row.try_get(8)?)?,
        region: row.try_get(9)?,
        name,
    })
}
