//! The audit log: one record per change of fleet state and per job step, append-only and
//! chained by hashes so that any change, removal or reordering is found.
//!
//! Each record's `hash` is `sha256(prev_hash ‖ canonical record)`, `prev_hash` being the hash
//! of the record before it (32 zero bytes for the first). The canonical record is, in this
//! order: `seq` and `at_us` as 8-byte big-endian integers, then `id`, `actor_kind`,
//! `actor_id`, `actor_email`, `action`, `resource`, `commit_sha`, `result` and `body`, each as
//! a 4-byte big-endian length and its UTF-8 bytes (`0xFFFFFFFF` and nothing for a null).
//! `body` is the JSON text of everything else (the commit's people and trailers, where, why,
//! before and after, error, metadata, idempotency key) exactly as stored, so verifying never
//! re-serializes.
//!
//! A record's idempotency key, when it has one, is the body's `key` field, so the hash covers
//! it; a record without a key has no such field, so the bodies and hashes of records written
//! before keys existed are unchanged. The column `idempotency_key` holds a copy of it under a
//! unique index, for finding a key without reading bodies; the column is not part of the
//! canonical record. Appending a record whose key is in the log already appends nothing and
//! returns the record there.
//!
//! Appends are serialized within a process and combined: while one batch is being written,
//! the records of other appenders queue and go out together in the next statement (a group
//! commit). Across processes the primary key on `seq` stops two chains from forming: an
//! appender whose head is stale fails on the key, reloads the head and tries again; so does
//! one whose record's idempotency key another process appended first. A batch is written by a
//! task of its own, so an appender that stops waiting (its future dropped by a `select!` or a
//! timeout) cuts off nobody's write, and every waiter hears what became of its records.
//!
//! This module holds the record and its body; `chain` the hashes and their verifier, pure
//! and without a database; `append` the writing of records; `query` their reading.

mod append;
mod chain;
mod query;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Error, time};

pub(crate) use append::Appender;
pub use chain::{Anchor, Hash, Head, Problem, StoredRow, Verifier};
pub use query::{Filter, Verification};

/// Who did it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// wakafleet itself (the daemon, a worker).
    System,
    /// A person through the CLI or the HTTP API.
    Operator,
    /// A commit of the fleet repository.
    Git,
    /// A caller of the HTTP API, by its token's name.
    Token,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::System => "system",
            ActorKind::Operator => "operator",
            ActorKind::Git => "git",
            ActorKind::Token => "token",
        }
    }

    fn parse(text: &str) -> Option<ActorKind> {
        [
            ActorKind::System,
            ActorKind::Operator,
            ActorKind::Git,
            ActorKind::Token,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl Actor {
    pub fn system(id: &str) -> Actor {
        Actor {
            kind: ActorKind::System,
            id: id.to_string(),
            email: None,
        }
    }
}

/// A person as git records one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub name: String,
    pub email: String,
}

/// The fleet commit behind a change: why it happened and who approved it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub sha: String,
    pub author: Person,
    pub committer: Person,
    /// The `Approved-by:` trailers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
    /// The `Reviewed-by:` trailers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviewed_by: Vec<String>,
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }

    fn parse(text: &str) -> Option<Outcome> {
        [Outcome::Success, Outcome::Failure]
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }
}

/// What is appended: who, what, where, why and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub actor: Actor,
    /// `instance.provision`, `instance.upgrade.step.migrate`, `commit.applied`, ...
    pub action: String,
    /// `instance/acme-lagos`, `commit/9f2c...`, ...
    pub resource: String,
    pub result: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<Commit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Why: the plan action's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// The idempotency key: the job, step and attempt it describes, e.g.
    /// `job/<id>/step/<step>/attempt/<n>`; a record whose key is already in the log is not
    /// appended again: `append` returns the entry already there, even when the record given
    /// differs from it. At most [`MAX_KEY_BYTES`], not empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Record {
    /// A successful record with nothing but who, what and which.
    pub fn new(actor: Actor, action: &str, resource: &str) -> Record {
        Record {
            actor,
            action: action.to_string(),
            resource: resource.to_string(),
            result: Outcome::Success,
            commit: None,
            region: None,
            host: None,
            reason: None,
            job: None,
            before: None,
            after: None,
            error: None,
            metadata: BTreeMap::new(),
            key: None,
        }
    }
}

/// The part of a record kept as JSON text in the `body` column.
#[derive(Serialize, Deserialize)]
struct Body {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commit: Option<Commit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, serde_json::Value>,
    /// Last, and absent without a key, so that bodies without one read as before keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

/// The most bytes one record's body may take.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The most bytes an idempotency key may take: PostgreSQL's unique index refuses entries of
/// about 2,700 bytes, and a job, step and attempt need far fewer.
pub const MAX_KEY_BYTES: usize = 512;

/// An appended record.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub seq: i64,
    pub id: String,
    pub at: DateTime<Utc>,
    pub record: Record,
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl StoredRow {
    /// The record this row holds.
    pub fn entry(&self) -> Result<Entry, Error> {
        let bad = |what: &str| Error::Stored(format!("audit record {}: {what}", self.seq));
        let body: Body = serde_json::from_str(&self.body)
            .map_err(|error| bad(&format!("its body is not valid JSON: {error}")))?;
        let actor = Actor {
            kind: ActorKind::parse(&self.actor_kind)
                .ok_or_else(|| bad(&format!("unknown actor kind `{}`", self.actor_kind)))?,
            id: self.actor_id.clone(),
            email: self.actor_email.clone(),
        };
        Ok(Entry {
            seq: self.seq,
            id: self.id.clone(),
            at: time(self.at_us)?,
            record: Record {
                actor,
                action: self.action.clone(),
                resource: self.resource.clone(),
                result: Outcome::parse(&self.result)
                    .ok_or_else(|| bad(&format!("unknown result `{}`", self.result)))?,
                commit: body.commit,
                region: body.region,
                host: body.host,
                reason: body.reason,
                job: body.job,
                before: body.before,
                after: body.after,
                error: body.error,
                metadata: body.metadata,
                key: body.key,
            },
            prev_hash: Hash::from_slice(&self.prev_hash)
                .ok_or_else(|| bad("its prev_hash is not 32 bytes"))?,
            hash: Hash::from_slice(&self.hash).ok_or_else(|| bad("its hash is not 32 bytes"))?,
        })
    }
}

/// The JSON text of a record's body, within the size limit.
fn body_of(record: &Record) -> Result<String, Error> {
    if let Some(key) = &record.key
        && (key.is_empty() || key.len() > MAX_KEY_BYTES)
    {
        return Err(Error::Invalid(format!(
            "an audit record's idempotency key must have 1 to {MAX_KEY_BYTES} bytes, not {}",
            key.len()
        )));
    }
    let body = Body {
        commit: record.commit.clone(),
        region: record.region.clone(),
        host: record.host.clone(),
        reason: record.reason.clone(),
        job: record.job.clone(),
        before: record.before.clone(),
        after: record.after.clone(),
        error: record.error.clone(),
        metadata: record.metadata.clone(),
        key: record.key.clone(),
    };
    let text = serde_json::to_string(&body)
        .map_err(|error| Error::Invalid(format!("an audit record cannot be written: {error}")))?;
    if text.len() > MAX_BODY_BYTES {
        return Err(Error::Invalid(format!(
            "an audit record of {} bytes is larger than the limit of {MAX_BODY_BYTES}",
            text.len()
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(key: Option<&str>) -> Result<String, Error> {
        let mut record = Record::new(Actor::system("test"), "instance.provision", "instance/a");
        record.reason = Some("new".into());
        record.key = key.map(str::to_string);
        body_of(&record)
    }

    #[test]
    fn the_key_is_the_last_field_of_the_body_and_absent_without_one() {
        assert_eq!(body(None).expect("a body"), r#"{"reason":"new"}"#);
        assert_eq!(
            body(Some("job/1/step/backup/attempt/1")).expect("a body"),
            r#"{"reason":"new","key":"job/1/step/backup/attempt/1"}"#
        );
    }

    #[test]
    fn keys_are_neither_empty_nor_too_long() {
        assert!(matches!(body(Some("")), Err(Error::Invalid(_))));
        assert!(body(Some(&"k".repeat(MAX_KEY_BYTES))).is_ok());
        assert!(matches!(
            body(Some(&"k".repeat(MAX_KEY_BYTES + 1))),
            Err(Error::Invalid(_))
        ));
    }
}
