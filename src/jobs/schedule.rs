//! Recurring work: an instance's backups on its cron schedule in its time zone, and health
//! checks every so many seconds.
//!
//! A schedule's firing is a job whose id names the schedule and the time it was due
//! (`schedule:<name>@<due>`), so two schedulers that see the same firing enqueue one job
//! (the second finds it recorded), and the schedule moves on only by a compare-and-set on
//! the time it was due: however many schedulers run, each firing runs once. A firing whose
//! instance is busy with another job waits for the next tick. Firings missed while no
//! scheduler ran are not made up for: the next one after now is fired, once.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use crate::{
    jobs::{Payload, WireTarget},
    queue::{Message, Queue},
    store::{
        Error, Store,
        jobs::{JobKind, NewJob, Schedule},
    },
};

/// When a schedule falls due.
#[derive(Clone, Debug, PartialEq)]
pub enum Cadence {
    /// A five-field cron expression, read in a time zone.
    Cron(Box<croner::Cron>, chrono_tz::Tz),
    /// Every so often: `every 30s`.
    Every(TimeDelta),
}

impl Cadence {
    /// The cadence a schedule's `cron` and `timezone` say.
    pub fn of(schedule: &Schedule) -> Result<Cadence, String> {
        if let Some(seconds) = schedule
            .cron
            .strip_prefix("every ")
            .and_then(|rest| rest.strip_suffix('s'))
        {
            return match seconds.parse::<i64>() {
                Ok(seconds) if seconds > 0 => Ok(Cadence::Every(TimeDelta::seconds(seconds))),
                _ => Err(format!(
                    "schedule `{}`: `{}` is not `every <seconds>s`",
                    schedule.name, schedule.cron
                )),
            };
        }
        let cron = crate::model::CronSchedule::parse(&schedule.cron)
            .and_then(|cron| {
                <croner::Cron as std::str::FromStr>::from_str(cron.as_str())
                    .map_err(|error| error.to_string())
            })
            .map_err(|error| format!("schedule `{}`: {error}", schedule.name))?;
        let zone = schedule.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
            format!(
                "schedule `{}`: `{}` is not an IANA time zone",
                schedule.name, schedule.timezone
            )
        })?;
        Ok(Cadence::Cron(Box::new(cron), zone))
    }

    /// The first time after `after` the schedule falls due.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Every(every) => after.checked_add_signed(*every),
            Cadence::Cron(cron, zone) => cron
                .find_next_occurrence(&after.with_timezone(zone), false)
                .ok()
                .map(|next| next.with_timezone(&Utc)),
        }
    }
}

/// The schedule of an instance's backups: `cron` in `timezone`, keeping `retain`.
pub fn backup(
    target: &WireTarget,
    region: &str,
    cron: &str,
    timezone: &str,
    retain: u32,
    now: DateTime<Utc>,
) -> Result<Schedule, String> {
    let mut schedule = Schedule {
        name: format!("backup/{}", target.instance),
        cron: cron.to_string(),
        timezone: timezone.to_string(),
        job_kind: JobKind::Backup,
        instance: Some(target.instance.clone()),
        region: region.to_string(),
        payload: Payload {
            target: Some(target.clone()),
            retain: Some(retain),
            ..Payload::default()
        }
        .encode(),
        enabled: true,
        last_run_at: None,
        next_run_at: now,
    };
    schedule.next_run_at = Cadence::of(&schedule)?
        .next_after(now)
        .ok_or_else(|| format!("schedule `{}` never falls due", schedule.name))?;
    Ok(schedule)
}

/// The schedule of an instance's health check, every `every`, first due at `now`.
pub fn health(target: &WireTarget, region: &str, every: TimeDelta, now: DateTime<Utc>) -> Schedule {
    Schedule {
        name: format!("health/{}", target.instance),
        cron: format!("every {}s", every.num_seconds().max(1)),
        timezone: "UTC".to_string(),
        job_kind: JobKind::Health,
        instance: Some(target.instance.clone()),
        region: region.to_string(),
        payload: Payload {
            target: Some(target.clone()),
            ..Payload::default()
        }
        .encode(),
        enabled: true,
        last_run_at: None,
        next_run_at: now,
    }
}

/// Fires due schedules.
pub struct Scheduler {
    pub store: Arc<Store>,
    /// How many attempts a fired job gets.
    pub max_attempts: i64,
}

impl Scheduler {
    /// Enqueues one job for every due schedule whose firing no other scheduler took, tells
    /// the queue, and moves each schedule on to its next time. Returns how many jobs this
    /// scheduler enqueued.
    pub async fn tick(&self, queue: &Queue, now: DateTime<Utc>) -> Result<usize, Error> {
        let mut fired = 0;
        for schedule in self.store.due_schedules(now).await? {
            let cadence = match Cadence::of(&schedule) {
                Ok(cadence) => cadence,
                Err(reason) => {
                    tracing::warn!(schedule = %schedule.name, %reason, "a schedule that cannot fire is disabled");
                    let disabled = Schedule {
                        enabled: false,
                        ..schedule.clone()
                    };
                    self.store.put_schedule(&disabled).await?;
                    continue;
                }
            };
            let Some(instance) = schedule.instance.clone() else {
                tracing::warn!(schedule = %schedule.name, "a schedule without an instance fires nothing");
                continue;
            };
            let due = schedule.next_run_at;
            let job = NewJob {
                id: Some(format!(
                    "schedule:{}@{}",
                    schedule.name,
                    due.timestamp_micros()
                )),
                kind: schedule.job_kind,
                instance,
                region: schedule.region.clone(),
                priority: 0,
                max_attempts: self.max_attempts,
                payload: schedule.payload.clone(),
                commit_sha: None,
                reason: format!(
                    "due on the schedule `{}` ({})",
                    schedule.name, schedule.cron
                ),
                not_before: due,
            };
            let recorded = match self.store.enqueue(&job, now).await {
                Ok(recorded) => recorded,
                Err(Error::Invalid(reason)) => {
                    // The instance is busy: the firing waits for the next tick.
                    tracing::debug!(schedule = %schedule.name, %reason, "a firing waits");
                    continue;
                }
                Err(error) => return Err(error),
            };
            let next = cadence
                .next_after(now.max(due))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            if !self
                .store
                .advance_schedule(&schedule.name, due, now, next)
                .await?
            {
                // Another scheduler took this firing; the job is the same one.
                continue;
            }
            fired += 1;
            let message = Message {
                job: recorded.id.clone(),
                region: recorded.region.clone(),
            };
            if let Err(error) = queue.publish(&message).await {
                tracing::warn!(job = %recorded.id, %error, "the queue was not told of a firing; the upkeep will tell it");
            }
        }
        Ok(fired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, timezone: &str) -> Schedule {
        Schedule {
            name: "backup/web".into(),
            cron: cron.into(),
            timezone: timezone.into(),
            job_kind: JobKind::Backup,
            instance: Some("web".into()),
            region: "ng-lagos".into(),
            payload: serde_json::json!({}),
            enabled: true,
            last_run_at: None,
            next_run_at: DateTime::UNIX_EPOCH,
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("a time")
    }

    #[test]
    fn cron_is_read_in_the_schedules_time_zone_across_daylight_saving() {
        let cadence = Cadence::of(&schedule("0 2 * * *", "Africa/Lagos")).expect("a cadence");
        // 02:00 in Lagos is 01:00 UTC.
        assert_eq!(
            cadence.next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2026-03-01T01:00:00Z"))
        );
        assert_eq!(
            cadence.next_after(at("2026-03-01T01:00:00Z")),
            Some(at("2026-03-02T01:00:00Z"))
        );
        // 03:30 in Berlin: UTC+1 before 29 March 2026, UTC+2 after.
        let berlin = Cadence::of(&schedule("30 3 * * *", "Europe/Berlin")).expect("a cadence");
        assert_eq!(
            berlin.next_after(at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T01:30:00Z"))
        );
        assert_eq!(
            berlin.next_after(at("2026-03-27T12:00:00Z")),
            Some(at("2026-03-28T02:30:00Z"))
        );
    }

    #[test]
    fn intervals_and_bad_schedules() {
        let every = Cadence::of(&schedule("every 30s", "UTC")).expect("a cadence");
        assert_eq!(
            every.next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2026-03-01T00:00:30Z"))
        );
        for (cron, zone, expected) in [
            ("every 0s", "UTC", "not `every <seconds>s`"),
            ("every xs", "UTC", "not `every <seconds>s`"),
            ("0 2 * *", "UTC", "five"),
            ("0 2 * * *", "Mars/Olympus", "not an IANA time zone"),
        ] {
            let error = Cadence::of(&schedule(cron, zone)).expect_err(cron);
            assert!(error.contains(expected), "{cron}: {error}");
        }
    }
}
