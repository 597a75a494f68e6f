//! The actual state as the store records it: each instance's applied version, configuration,
//! status and health, the partners, tenants, channels and releases as last applied, and the
//! fleet commits seen and applied.
//!
//! [`Store::actual`] turns the records into the [`Actual`] a plan is computed against, through
//! the same snapshot form `plan --state` reads, so the two can never disagree.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{Row, any::AnyRow};

use crate::{
    plan::{
        Actual, ResourceType,
        snapshot::{self, Snapshot},
    },
    store::{Error, Store, audit::Person, micros, time},
};

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceStatus {
    Provisioning,
    Active,
    Suspended,
    Terminated,
    Failed,
}

impl InstanceStatus {
    pub const ALL: &[InstanceStatus] = &[
        InstanceStatus::Provisioning,
        InstanceStatus::Active,
        InstanceStatus::Suspended,
        InstanceStatus::Terminated,
        InstanceStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Provisioning => "provisioning",
            InstanceStatus::Active => "active",
            InstanceStatus::Suspended => "suspended",
            InstanceStatus::Terminated => "terminated",
            InstanceStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<InstanceStatus> {
        InstanceStatus::ALL
            .iter()
            .copied()
            .find(|status| status.as_str() == text)
    }
}

/// One instance as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceRecord {
    pub name: String,
    pub status: InstanceStatus,
    /// The release it runs, once one is applied.
    pub version: Option<String>,
    /// The hash of the configuration applied (the driver's label).
    pub config_hash: Option<String>,
    /// What was last applied, in the snapshot's form; none until the first apply.
    pub spec: Option<snapshot::Instance>,
    /// The last health report, as JSON.
    pub health: Option<serde_json::Value>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A fleet commit as the daemon saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    pub sha: String,
    pub seen_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
    pub author: Person,
    pub committer: Person,
    /// The first line of the message.
    pub summary: String,
    pub approved_by: Vec<String>,
    pub reviewed_by: Vec<String>,
    /// Whether it validated.
    pub valid: bool,
}

const INSTANCE_COLUMNS: &str =
    "name, status, version, config_hash, spec, health, last_error, updated_at_us";
const COMMIT_COLUMNS: &str =
    "sha, seen_at_us, applied_at_us, author, committer, summary, approved_by, reviewed_by, valid";

pub(crate) fn json<T: serde::Serialize>(value: &T) -> String {
    // Our own types always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|error| Error::Stored(format!("{what}: {error}")))
}

fn instance_from_row(row: &AnyRow) -> Result<InstanceRecord, Error> {
    let name: String = row.try_get(0)?;
    let status: String = row.try_get(1)?;
    let spec: Option<String> = row.try_get(4)?;
    let health: Option<String> = row.try_get(5)?;
    Ok(InstanceRecord {
        status: InstanceStatus::parse(&status).ok_or_else(|| {
            Error::Stored(format!(
                "instance `{name}` has the unknown status `{status}`"
            ))
        })?,
        version: row.try_get(2)?,
        config_hash: row.try_get(3)?,
        spec: spec
            .map(|spec| from_json(&spec, &format!("the spec of instance `{name}`")))
            .transpose()?,
        health: health
            .map(|health| from_json(&health, &format!("the health of instance `{name}`")))
            .transpose()?,
        last_error: row.try_get(6)?,
        updated_at: time(row.try_get(7)?)?,
        name,
    })
}

fn person(text: &str) -> Person {
    match text.rsplit_once(" <") {
        Some((name, email)) => Person {
            name: name.to_string(),
            email: email.trim_end_matches('>').to_string(),
        },
        None => Person {
            name: text.to_string(),
            email: String::new(),
        },
    }
}

fn commit_from_row(row: &AnyRow) -> Result<CommitRecord, Error> {
    let sha: String = row.try_get(0)?;
    let author: String = row.try_get(3)?;
    let committer: String = row.try_get(4)?;
    let approved_by: String = row.try_get(6)?;
    let reviewed_by: String = row.try_get(7)?;
    let applied_at: Option<i64> = row.try_get(2)?;
    Ok(CommitRecord {
        seen_at: time(row.try_get(1)?)?,
        applied_at: applied_at.map(time).transpose()?,
        author: person(&author),
        committer: person(&committer),
        summary: row.try_get(5)?,
        approved_by: from_json(&approved_by, &format!("the approvers of commit {sha}"))?,
        reviewed_by: from_json(&reviewed_by, &format!("the reviewers of commit {sha}"))?,
        valid: row.try_get::<i64, _>(8)? != 0,
        sha,
    })
}

impl Store {
    /// Records an instance, replacing what was recorded of it.
    pub async fn put_instance(&self, instance: &InstanceRecord) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (name) DO UPDATE SET status = excluded.status, version = excluded.version, \
             config_hash = excluded.config_hash, spec = excluded.spec, health = excluded.health, \
             last_error = excluded.last_error, updated_at_us = excluded.updated_at_us"
        );
        let spec = instance.spec.as_ref().map(json);
        let health = instance.health.as_ref().map(json);
        self.retrying(|| {
            sqlx::query(&sql)
                .bind(instance.name.as_str())
                .bind(instance.status.as_str())
                .bind(instance.version.as_deref())
                .bind(instance.config_hash.as_deref())
                .bind(spec.as_deref())
                .bind(health.as_deref())
                .bind(instance.last_error.as_deref())
                .bind(micros(instance.updated_at))
                .execute(self.pool())
        })
        .await?;
        Ok(())
    }

    /// Changes an instance's status and last error; false when it is not recorded.
    pub async fn set_instance_status(
        &self,
        name: &str,
        status: InstanceStatus,
        last_error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let result = self
            .retrying(|| {
                sqlx::query(
                    "UPDATE instances SET status = $2, last_error = $3, updated_at_us = $4 WHERE name = $1",
                )
                .bind(name)
                .bind(status.as_str())
                .bind(last_error)
                .bind(micros(at))
                .execute(self.pool())
            })
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Records an instance's last health report; false when the instance is not recorded.
    pub async fn set_instance_health(
        &self,
        name: &str,
        health: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let health = health.to_string();
        let result = self
            .retrying(|| {
                sqlx::query("UPDATE instances SET health = $2, updated_at_us = $3 WHERE name = $1")
                    .bind(name)
                    .bind(health.as_str())
                    .bind(micros(at))
                    .execute(self.pool())
            })
            .await?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn instance(&self, name: &str) -> Result<Option<InstanceRecord>, Error> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE name = $1");
        let row = self
            .retrying(|| sqlx::query(&sql).bind(name).fetch_optional(self.pool()))
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    /// Every recorded instance, by name.
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>, Error> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY name");
        let rows = self
            .retrying(|| sqlx::query(&sql).fetch_all(self.pool()))
            .await?;
        rows.iter().map(instance_from_row).collect()
    }

    /// Records a partner, tenant, channel or release as applied, field by field.
    pub async fn put_entity(
        &self,
        kind: ResourceType,
        id: &str,
        fields: &BTreeMap<String, String>,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        let fields = json(fields);
        self.retrying(|| {
            sqlx::query(
                "INSERT INTO entities (resource_type, id, fields, updated_at_us) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (resource_type, id) DO UPDATE SET fields = excluded.fields, updated_at_us = excluded.updated_at_us",
            )
            .bind(kind.as_str())
            .bind(id)
            .bind(fields.as_str())
            .bind(micros(at))
            .execute(self.pool())
        })
        .await?;
        Ok(())
    }

    /// Forgets a partner, tenant, channel or release; false when it was not recorded.
    pub async fn delete_entity(&self, kind: ResourceType, id: &str) -> Result<bool, Error> {
        let result = self
            .retrying(|| {
                sqlx::query("DELETE FROM entities WHERE resource_type = $1 AND id = $2")
                    .bind(kind.as_str())
                    .bind(id)
                    .execute(self.pool())
            })
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// The recorded state as a snapshot: every entity, and every instance that has had a
    /// configuration applied.
    pub async fn snapshot(&self) -> Result<Snapshot, Error> {
        let entity_rows: Vec<(String, String, String)> = self
            .retrying(|| {
                sqlx::query_as(
                    "SELECT resource_type, id, fields FROM entities ORDER BY resource_type, id",
                )
                .fetch_all(self.pool())
            })
            .await?;
        let mut entities = Vec::with_capacity(entity_rows.len());
        for (kind, id, fields) in entity_rows {
            let fields = from_json(&fields, &format!("the fields of {kind} `{id}`"))?;
            entities.push(snapshot::Entity { kind, id, fields });
        }
        // In the order snapshots list them: partners, tenants, channels, releases.
        let rank = |kind: &str| {
            ["partner", "tenant", "channel", "release"]
                .iter()
                .position(|k| *k == kind)
        };
        entities.sort_by(|a, b| (rank(&a.kind), &a.id).cmp(&(rank(&b.kind), &b.id)));
        let instances = self
            .instances()
            .await?
            .into_iter()
            .filter_map(|instance| Some((instance.name, instance.spec?)))
            .collect();
        Ok(Snapshot {
            format_version: snapshot::FORMAT_VERSION,
            entities,
            instances,
        })
    }

    /// The recorded state, as plans compare against it.
    pub async fn actual(&self) -> Result<Actual, Error> {
        snapshot::into_actual(self.snapshot().await?)
            .map_err(|error| Error::Stored(format!("the recorded state: {error}")))
    }

    /// Replaces the recorded entities and instance configurations by those of `snapshot`,
    /// in one transaction; instances it lacks are forgotten.
    pub async fn import(&self, snapshot: &Snapshot, at: DateTime<Utc>) -> Result<(), Error> {
        // Check it converts before anything changes.
        snapshot::into_actual(snapshot.clone())
            .map_err(|error| Error::Invalid(format!("the snapshot: {error}")))?;
        let mut transaction = self.pool().begin().await?;
        sqlx::query("DELETE FROM entities")
            .execute(&mut *transaction)
            .await?;
        for entity in &snapshot.entities {
            sqlx::query(
                "INSERT INTO entities (resource_type, id, fields, updated_at_us) VALUES ($1, $2, $3, $4)",
            )
            .bind(entity.kind.as_str())
            .bind(entity.id.as_str())
            .bind(json(&entity.fields))
            .bind(micros(at))
            .execute(&mut *transaction)
            .await?;
        }
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM instances")
            .fetch_all(&mut *transaction)
            .await?;
        for name in names {
            if !snapshot.instances.contains_key(&name) {
                sqlx::query("DELETE FROM instances WHERE name = $1")
                    .bind(name)
                    .execute(&mut *transaction)
                    .await?;
            }
        }
        for (name, spec) in &snapshot.instances {
            let status = InstanceStatus::parse(&spec.state).unwrap_or(InstanceStatus::Active);
            sqlx::query(&format!(
                "INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES ($1, $2, $3, NULL, $4, NULL, NULL, $5) \
                 ON CONFLICT (name) DO UPDATE SET status = excluded.status, version = excluded.version, \
                 spec = excluded.spec, updated_at_us = excluded.updated_at_us"
            ))
            .bind(name.as_str())
            .bind(status.as_str())
            .bind(spec.version.as_str())
            .bind(json(spec))
            .bind(micros(at))
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Records a commit the first time it is seen; seeing it again changes nothing.
    pub async fn record_commit(&self, commit: &CommitRecord) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO commits ({COMMIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (sha) DO NOTHING"
        );
        let author = format!("{} <{}>", commit.author.name, commit.author.email);
        let committer = format!("{} <{}>", commit.committer.name, commit.committer.email);
        let approved_by = json(&commit.approved_by);
        let reviewed_by = json(&commit.reviewed_by);
        self.retrying(|| {
            sqlx::query(&sql)
                .bind(commit.sha.as_str())
                .bind(micros(commit.seen_at))
                .bind(commit.applied_at.map(micros))
                .bind(author.as_str())
                .bind(committer.as_str())
                .bind(commit.summary.as_str())
                .bind(approved_by.as_str())
                .bind(reviewed_by.as_str())
                .bind(i64::from(commit.valid))
                .execute(self.pool())
        })
        .await?;
        Ok(())
    }

    /// Marks a recorded commit applied; false when it is not recorded.
    pub async fn mark_commit_applied(&self, sha: &str, at: DateTime<Utc>) -> Result<bool, Error> {
        let result = self
            .retrying(|| {
                sqlx::query("UPDATE commits SET applied_at_us = $2 WHERE sha = $1")
                    .bind(sha)
                    .bind(micros(at))
                    .execute(self.pool())
            })
            .await?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn commit(&self, sha: &str) -> Result<Option<CommitRecord>, Error> {
        let sql = format!("SELECT {COMMIT_COLUMNS} FROM commits WHERE sha = $1");
        let row = self
            .retrying(|| sqlx::query(&sql).bind(sha).fetch_optional(self.pool()))
            .await?;
        row.as_ref().map(commit_from_row).transpose()
    }

    /// The commit applied last.
    pub async fn last_applied_commit(&self) -> Result<Option<CommitRecord>, Error> {
        let sql = format!(
            "SELECT {COMMIT_COLUMNS} FROM commits WHERE applied_at_us IS NOT NULL \
             ORDER BY applied_at_us DESC, sha LIMIT 1"
        );
        let row = self
            .retrying(|| sqlx::query(&sql).fetch_optional(self.pool()))
            .await?;
        row.as_ref().map(commit_from_row).transpose()
    }
}
