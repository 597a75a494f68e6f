//! The audit log: one record per change of fleet state and per job step, append-only and
//! chained by hashes so that any change, removal or reordering is found.
//!
//! Each record's `hash` is `sha256(prev_hash ‖ canonical record)`, `prev_hash` being the hash
//! of the record before it (32 zero bytes for the first). The canonical record is, in this
//! order: `seq` and `at_us` as 8-byte big-endian integers, then `id`, `actor_kind`,
//! `actor_id`, `actor_email`, `action`, `resource`, `commit_sha`, `result` and `body`, each as
//! a 4-byte big-endian length and its UTF-8 bytes (`0xFFFFFFFF` and nothing for a null).
//! `body` is the JSON text of everything else (the commit's people and trailers, where, why,
//! before and after, error, metadata) exactly as stored, so verifying never re-serializes.
//!
//! Appends are serialized within a process and combined: while one batch is being written,
//! the records of other appenders queue and go out together in the next statement (a group
//! commit). Across processes the primary key on `seq` stops two chains from forming: an
//! appender whose head is stale fails on the key, reloads the head and tries again.

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Row, any::AnyRow};
use tokio::sync::oneshot;

use crate::store::{Error, Sql, Store, is_transient, micros, now, time};

/// A SHA-256 hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `prev_hash` of the first record.
    pub const GENESIS: Hash = Hash([0; 32]);

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Hash> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Hash(bytes))
    }

    fn from_slice(bytes: &[u8]) -> Option<Hash> {
        Some(Hash(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Hash({self})")
    }
}

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
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::System => "system",
            ActorKind::Operator => "operator",
            ActorKind::Git => "git",
        }
    }

    fn parse(text: &str) -> Option<ActorKind> {
        [ActorKind::System, ActorKind::Operator, ActorKind::Git]
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
}

/// The most bytes one record's body may take.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A record as stored: its row, exactly, so the hash can be checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRow {
    pub seq: i64,
    pub id: String,
    pub at_us: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub actor_email: Option<String>,
    pub action: String,
    pub resource: String,
    pub commit_sha: Option<String>,
    pub result: String,
    pub body: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl StoredRow {
    /// The hash this row should carry, given the hash before it.
    pub fn compute_hash(&self, prev: &Hash, buffer: &mut Vec<u8>) -> Hash {
        buffer.clear();
        buffer.extend_from_slice(&prev.0);
        buffer.extend_from_slice(&self.seq.to_be_bytes());
        buffer.extend_from_slice(&self.at_us.to_be_bytes());
        for field in [
            Some(&self.id),
            Some(&self.actor_kind),
            Some(&self.actor_id),
            self.actor_email.as_ref(),
            Some(&self.action),
            Some(&self.resource),
            self.commit_sha.as_ref(),
            Some(&self.result),
            Some(&self.body),
        ] {
            match field {
                Some(text) => {
                    // Fields are far below 4 GiB: bodies are limited to MAX_BODY_BYTES.
                    let length = u32::try_from(text.len()).unwrap_or(u32::MAX - 1);
                    buffer.extend_from_slice(&length.to_be_bytes());
                    buffer.extend_from_slice(text.as_bytes());
                }
                None => buffer.extend_from_slice(&u32::MAX.to_be_bytes()),
            }
        }
        Hash(Sha256::digest(buffer.as_slice()).into())
    }

    fn from_row(row: &AnyRow) -> Result<StoredRow, sqlx::Error> {
        Ok(StoredRow {
            seq: row.try_get(0)?,
            id: row.try_get(1)?,
            at_us: row.try_get(2)?,
            actor_kind: row.try_get(3)?,
            actor_id: row.try_get(4)?,
            actor_email: row.try_get(5)?,
            action: row.try_get(6)?,
            resource: row.try_get(7)?,
            commit_sha: row.try_get(8)?,
            result: row.try_get(9)?,
            body: row.try_get(10)?,
            prev_hash: row.try_get(11)?,
            hash: row.try_get(12)?,
        })
    }

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
            },
            prev_hash: Hash::from_slice(&self.prev_hash)
                .ok_or_else(|| bad("its prev_hash is not 32 bytes"))?,
            hash: Hash::from_slice(&self.hash).ok_or_else(|| bad("its hash is not 32 bytes"))?,
        })
    }
}

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

/// The newest record of the chain: its `seq` (0 for an empty chain) and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: Hash,
}

impl Head {
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: Hash::GENESIS,
    };
}

const COLUMNS: &str = "seq, id, at_us, actor_kind, actor_id, actor_email, action, resource, commit_sha, result, body, prev_hash, hash";

/// Rows per INSERT statement: 13 parameters each stays below both databases' limits.
const ROWS_PER_STATEMENT: usize = 1_000;

/// One appender's records waiting to be written, and where to send the outcome.
#[derive(Debug)]
struct Pending {
    records: Vec<Record>,
    reply: oneshot::Sender<Result<Vec<Entry>, Error>>,
}

/// Serializes and combines the appends of one store (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct Appender {
    /// The head as last written by this process; `None` when it must be read again.
    head: tokio::sync::Mutex<Option<Head>>,
    queue: std::sync::Mutex<Vec<Pending>>,
}

impl Store {
    /// Appends `records` as consecutive records of the chain, atomically: all or none.
    ///
    /// Waits, with backoff, up to the store's `retry_for` while the database is away; an
    /// error means none of the records was appended.
    pub async fn append(&self, records: Vec<Record>) -> Result<Vec<Entry>, Error> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, mut outcome) = oneshot::channel();
        self.appender
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Pending { records, reply });
        loop {
            // Either another appender writes ours while we wait, or we get the lock and
            // write everything queued: ours and whatever came while the last write ran.
            let mut head = tokio::select! {
                biased;
                result = &mut outcome => {
                    return result.unwrap_or_else(|_| {
                        Err(Error::Invalid(
                            "the append was abandoned by the task writing it".into(),
                        ))
                    });
                }
                head = self.appender.head.lock() => head,
            };
            let batch = std::mem::take(
                &mut *self
                    .appender
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if batch.is_empty() {
                // A previous holder of the lock wrote ours; its reply is waiting.
                continue;
            }
            self.write_batch(&mut head, batch).await;
        }
    }

    /// Appends one record.
    pub async fn append_one(&self, record: Record) -> Result<Entry, Error> {
        let mut entries = self.append(vec![record]).await?;
        entries
            .pop()
            .ok_or_else(|| Error::Invalid("the append returned no record".into()))
    }

    /// Writes the records of `batch` as one transaction and tells each appender its outcome.
    async fn write_batch(&self, head: &mut Option<Head>, batch: Vec<Pending>) {
        let mut bodies = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut rows = Vec::new();
        for pending in batch {
            match pending
                .records
                .into_iter()
                .map(|record| body_of(&record).map(|body| (record, body)))
                .collect::<Result<Vec<_>, Error>>()
            {
                Ok(records) => {
                    replies.push((pending.reply, records.len()));
                    bodies.extend(records);
                }
                Err(error) => {
                    let _ = pending.reply.send(Err(error));
                }
            }
        }
        if bodies.is_empty() {
            return;
        }
        let at = now();
        let ids: Vec<String> = bodies
            .iter()
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        let result = self
            .write_rows(head, &bodies, &ids, at, &mut rows)
            .await
            .and_then(|()| {
                rows.iter()
                    .zip(bodies.iter())
                    .map(|(row, (record, _))| {
                        let mut entry = row.entry()?;
                        entry.record = record.clone();
                        Ok(entry)
                    })
                    .collect::<Result<Vec<_>, Error>>()
            });
        match result {
            Ok(mut entries) => {
                for (reply, count) in replies.into_iter().rev() {
                    let mine = entries.split_off(entries.len() - count);
                    let _ = reply.send(Ok(mine));
                }
            }
            Err(error) => {
                let message = error.to_string();
                let mut error = Some(error);
                for (reply, _) in replies {
                    let error = error
                        .take()
                        .unwrap_or_else(|| Error::Invalid(message.clone()));
                    let _ = reply.send(Err(error));
                }
            }
        }
    }

    /// Chains and inserts the records, retrying while another process appends first or the
    /// database is away. On success `rows` holds what was written and `head` the new head.
    async fn write_rows(
        &self,
        head: &mut Option<Head>,
        bodies: &[(Record, String)],
        ids: &[String],
        at: DateTime<Utc>,
        rows: &mut Vec<StoredRow>,
    ) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let mut conflicts = 0;
        loop {
            let base = match *head {
                Some(base) => base,
                None => self.retrying(|| read_head(self)).await?,
            };
            // Until the write is known to have landed, the cached head is unknown.
            *head = None;
            chain(base, bodies, ids, at, rows);
            match insert(self, rows).await {
                Ok(()) => {
                    *head = rows.last().map(|row| Head {
                        seq: row.seq,
                        hash: Hash::from_slice(&row.hash).unwrap_or(Hash::GENESIS),
                    });
                    return Ok(());
                }
                Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                    // Another process appended first: chain onto its records instead.
                    conflicts += 1;
                    if conflicts > 1_000 {
                        return Err(Error::Invalid(
                            "the audit log's head kept moving: 1,000 conflicting appends".into(),
                        ));
                    }
                }
                Err(error) if is_transient(&error) => {
                    if started.elapsed() > self.options.retry_for {
                        return Err(Error::Unreachable {
                            url: self.url.clone(),
                            waited: started.elapsed(),
                            attempts: conflicts + 1,
                            source: error,
                        });
                    }
                    tracing::warn!(store = %self.url, %error, "appending to the audit log failed; retrying");
                    // The commit may have landed before the connection broke.
                    let first = ids[0].clone();
                    let landed = self
                        .retrying(|| {
                            sqlx::query_scalar::<_, i64>("SELECT seq FROM audit_log WHERE id = $1")
                                .bind(first.clone())
                                .fetch_optional(self.pool())
                        })
                        .await?;
                    if landed.is_some() {
                        *head = rows.last().map(|row| Head {
                            seq: row.seq,
                            hash: Hash::from_slice(&row.hash).unwrap_or(Hash::GENESIS),
                        });
                        return Ok(());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => return Err(Error::Sql(error)),
            }
        }
    }

    /// The newest record's `seq` and hash.
    pub async fn audit_head(&self) -> Result<Head, Error> {
        self.retrying(|| read_head(self)).await
    }

    /// The stored rows with `seq` above `after`, oldest first, at most `limit`.
    pub async fn audit_rows(&self, after: i64, limit: i64) -> Result<Vec<StoredRow>, Error> {
        let sql = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(StoredRow::from_row)
            .collect::<Result<_, _>>()
            .map_err(Error::Sql)
    }

    /// The records `filter` selects, oldest first, at most `limit`.
    pub async fn audit_query(&self, filter: &Filter, limit: i64) -> Result<Vec<StoredRow>, Error> {
        let mut query = Sql::new(&format!("SELECT {COLUMNS} FROM audit_log"));
        filter.push_where(&mut query);
        query.push(" ORDER BY seq LIMIT ").push_bind(limit);
        let (text, arguments) = query.finish()?;
        let rows = sqlx::query_with(&text, arguments)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(StoredRow::from_row)
            .collect::<Result<_, _>>()
            .map_err(Error::Sql)
    }

    /// Calls `each` with every record `filter` selects, oldest first, reading `page` rows at
    /// a time so memory stays bounded however long the log is.
    pub async fn audit_scan(
        &self,
        filter: &Filter,
        page: i64,
        mut each: impl FnMut(&StoredRow) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let mut filter = filter.clone();
        let mut count = 0;
        loop {
            let rows = self.audit_query(&filter, page).await?;
            for row in &rows {
                each(row)?;
                count += 1;
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == page => filter.after = Some(last.seq),
                _ => return Ok(count),
            }
        }
    }
}

/// The JSON text of a record's body, within the size limit.
fn body_of(record: &Record) -> Result<String, Error> {
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

/// Fills `rows` with the records chained onto `base`.
fn chain(
    base: Head,
    bodies: &[(Record, String)],
    ids: &[String],
    at: DateTime<Utc>,
    rows: &mut Vec<StoredRow>,
) {
    rows.clear();
    let mut prev = base;
    let mut buffer = Vec::new();
    for ((record, body), id) in bodies.iter().zip(ids) {
        let mut row = StoredRow {
            seq: prev.seq + 1,
            id: id.clone(),
            at_us: micros(at),
            actor_kind: record.actor.kind.as_str().to_string(),
            actor_id: record.actor.id.clone(),
            actor_email: record.actor.email.clone(),
            action: record.action.clone(),
            resource: record.resource.clone(),
            commit_sha: record.commit.as_ref().map(|commit| commit.sha.clone()),
            result: record.result.as_str().to_string(),
            body: body.clone(),
            prev_hash: prev.hash.0.to_vec(),
            hash: Vec::new(),
        };
        let hash = row.compute_hash(&prev.hash, &mut buffer);
        row.hash = hash.0.to_vec();
        prev = Head { seq: row.seq, hash };
        rows.push(row);
    }
}

async fn read_head(store: &Store) -> Result<Head, sqlx::Error> {
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(store.pool())
            .await?;
    Ok(match row {
        Some((seq, hash)) => Head {
            seq,
            // A hash of another length is caught by verify; chaining onto it still works.
            hash: Hash::from_slice(&hash).unwrap_or(Hash(Sha256::digest(&hash).into())),
        },
        None => Head::EMPTY,
    })
}

/// Inserts the rows: one statement when they fit, else one transaction.
async fn insert(store: &Store, rows: &[StoredRow]) -> Result<(), sqlx::Error> {
    if rows.len() <= ROWS_PER_STATEMENT {
        let (text, arguments) = insert_statement(rows)?;
        return sqlx::query_with(&text, arguments)
            .execute(store.pool())
            .await
            .map(drop);
    }
    let mut transaction = store.pool().begin().await?;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let (text, arguments) = insert_statement(chunk)?;
        sqlx::query_with(&text, arguments)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await
}

fn insert_statement(
    rows: &[StoredRow],
) -> Result<(String, sqlx::any::AnyArguments<'_>), sqlx::Error> {
    let mut query = Sql::new(&format!("INSERT INTO audit_log ({COLUMNS}) VALUES "));
    for (index, row) in rows.iter().enumerate() {
        query.push(if index == 0 { "(" } else { ", (" });
        query
            .push_bind(row.seq)
            .push(", ")
            .push_bind(row.id.as_str())
            .push(", ")
            .push_bind(row.at_us)
            .push(", ")
            .push_bind(row.actor_kind.as_str())
            .push(", ")
            .push_bind(row.actor_id.as_str())
            .push(", ")
            .push_bind(row.actor_email.as_deref())
            .push(", ")
            .push_bind(row.action.as_str())
            .push(", ")
            .push_bind(row.resource.as_str())
            .push(", ")
            .push_bind(row.commit_sha.as_deref())
            .push(", ")
            .push_bind(row.result.as_str())
            .push(", ")
            .push_bind(row.body.as_str())
            .push(", ")
            .push_bind(row.prev_hash.as_slice())
            .push(", ")
            .push_bind(row.hash.as_slice())
            .push(")");
    }
    query.finish()
}

/// Which records `audit query` and `audit export` select.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// The action, or with a trailing `*` its prefix (`instance.upgrade*`).
    pub action: Option<String>,
    /// The resource, or with a trailing `*` its prefix (`instance/*`).
    pub resource: Option<String>,
    /// The actor's id or email.
    pub actor: Option<String>,
    /// The commit, or a prefix of its sha.
    pub commit: Option<String>,
    /// Only records after this `seq`: the cursor of the next page.
    pub after: Option<i64>,
}

impl Filter {
    fn push_where<'a>(&'a self, query: &mut Sql<'a>) {
        let mut separator = " WHERE ";
        let mut next = |query: &mut Sql<'a>| {
            query.push(separator);
            separator = " AND ";
        };
        if let Some(after) = self.after {
            next(query);
            query.push("seq > ").push_bind(after);
        }
        if let Some(since) = self.since {
            next(query);
            query.push("at_us >= ").push_bind(micros(since));
        }
        if let Some(until) = self.until {
            next(query);
            query.push("at_us < ").push_bind(micros(until));
        }
        for (column, value) in [("action", &self.action), ("resource", &self.resource)] {
            if let Some(value) = value {
                next(query);
                match value.strip_suffix('*') {
                    Some(prefix) => push_prefix(query, column, prefix),
                    None => {
                        query.push(column).push(" = ").push_bind(value.as_str());
                    }
                }
            }
        }
        if let Some(actor) = &self.actor {
            next(query);
            query
                .push("(actor_id = ")
                .push_bind(actor.as_str())
                .push(" OR actor_email = ")
                .push_bind(actor.as_str())
                .push(")");
        }
        if let Some(commit) = &self.commit {
            next(query);
            push_prefix(query, "commit_sha", commit);
        }
    }
}

/// `column` starts with `prefix`, compared character by character on both databases (LIKE
/// would need escaping and ignores case on SQLite; ranges depend on PostgreSQL's collation).
fn push_prefix<'a>(query: &mut Sql<'a>, column: &str, prefix: &'a str) {
    query
        .push("substr(")
        .push(column)
        .push(", 1, CAST(")
        .push_bind(prefix.chars().count() as i64)
        .push(" AS INTEGER)) = ")
        .push_bind(prefix);
}

/// Where a chain stops being what it claims to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Record `seq` is missing: the chain goes on at `found`.
    Missing { seq: i64, found: i64 },
    /// Record `seq` does not follow the record before it: its `prev_hash` is another.
    Unlinked { seq: i64 },
    /// Record `seq`'s contents do not give its hash: it was changed.
    Altered { seq: i64 },
    /// A signed checkpoint says record `seq` had another hash: the chain was rewritten
    /// at or before `seq` (after `since`, the last checkpoint that holds).
    Rewritten {
        seq: i64,
        since: i64,
        checkpoint: usize,
    },
    /// A signed checkpoint names record `seq`, but the chain ends at `ends`: records were
    /// removed from the end.
    Truncated {
        seq: i64,
        ends: i64,
        checkpoint: usize,
    },
}

impl Problem {
    /// The first record that is not as it was written.
    pub fn seq(&self) -> i64 {
        match *self {
            Problem::Missing { seq, .. } | Problem::Unlinked { seq } | Problem::Altered { seq } => {
                seq
            }
            Problem::Rewritten { since, .. } => since + 1,
            Problem::Truncated { ends, .. } => ends + 1,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { seq, found } => write!(
                formatter,
                "record {seq} is missing: the chain goes on at record {found}"
            ),
            Problem::Unlinked { seq } => write!(
                formatter,
                "record {seq} does not follow record {}: its prev_hash is not that record's hash (records were removed, swapped or inserted)",
                seq - 1
            ),
            Problem::Altered { seq } => write!(
                formatter,
                "record {seq} was changed: its contents do not give its hash"
            ),
            Problem::Rewritten {
                seq,
                since,
                checkpoint,
            } => write!(
                formatter,
                "checkpoint {checkpoint} (record {seq}) contradicts the chain: record {seq} has another hash, so the chain was rewritten between records {} and {seq}",
                since + 1
            ),
            Problem::Truncated {
                seq,
                ends,
                checkpoint,
            } => write!(
                formatter,
                "checkpoint {checkpoint} names record {seq}, but the chain ends at record {ends}: records were removed"
            ),
        }
    }
}

/// A point of the chain vouched for from outside the database (see `store::checkpoint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: Hash,
}

/// Checks a chain record by record, in `seq` order, against the anchors it is given.
#[derive(Debug)]
pub struct Verifier {
    prev: Head,
    buffer: Vec<u8>,
    /// Anchors sorted by `seq`, with their index in the checkpoint file.
    anchors: Vec<(usize, Anchor)>,
    next_anchor: usize,
    /// The last anchor that held.
    held: i64,
}

impl Verifier {
    pub fn new(anchors: &[Anchor]) -> Verifier {
        let mut anchors: Vec<(usize, Anchor)> = anchors.iter().copied().enumerate().collect();
        anchors.sort_by_key(|(_, anchor)| anchor.seq);
        Verifier {
            prev: Head::EMPTY,
            buffer: Vec::with_capacity(1024),
            anchors,
            next_anchor: 0,
            held: 0,
        }
    }

    /// Checks the next row; the first problem found is returned.
    pub fn check(&mut self, row: &StoredRow) -> Result<(), Problem> {
        let expected = self.prev.seq + 1;
        if row.seq != expected {
            return Err(Problem::Missing {
                seq: expected,
                found: row.seq,
            });
        }
        if row.prev_hash != self.prev.hash.0 {
            return Err(Problem::Unlinked { seq: row.seq });
        }
        let hash = row.compute_hash(&self.prev.hash, &mut self.buffer);
        if row.hash != hash.0 {
            return Err(Problem::Altered { seq: row.seq });
        }
        self.prev = Head { seq: row.seq, hash };
        self.check_anchors()
    }

    fn check_anchors(&mut self) -> Result<(), Problem> {
        while let Some(&(index, anchor)) = self.anchors.get(self.next_anchor) {
            if anchor.seq > self.prev.seq {
                break;
            }
            // Anchors at or before the current record: only one at exactly this record
            // can be checked here (earlier ones were checked on their own record, or name
            // seq 0, the empty chain).
            if anchor.seq == self.prev.seq && anchor.hash != self.prev.hash
                || anchor.seq == 0 && anchor.hash != Hash::GENESIS
            {
                return Err(Problem::Rewritten {
                    seq: anchor.seq,
                    since: self.held,
                    checkpoint: index + 1,
                });
            }
            self.held = anchor.seq;
            self.next_anchor += 1;
        }
        Ok(())
    }

    /// Ends the check: anchors past the end of the chain mean records were removed.
    pub fn finish(mut self) -> Result<Head, Problem> {
        self.check_anchors()?;
        if let Some(&(index, anchor)) = self.anchors.get(self.next_anchor) {
            return Err(Problem::Truncated {
                seq: anchor.seq,
                ends: self.prev.seq,
                checkpoint: index + 1,
            });
        }
        Ok(self.prev)
    }
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Records read.
    pub records: u64,
    /// The head of the chain, when it holds.
    pub outcome: Result<Head, Problem>,
}

impl Store {
    /// Walks the whole chain, `page` records at a time, and reports the first problem.
    pub async fn audit_verify(&self, anchors: &[Anchor], page: i64) -> Result<Verification, Error> {
        let mut verifier = Verifier::new(anchors);
        let mut after = 0;
        let mut records = 0;
        loop {
            let rows = self.audit_rows(after, page).await?;
            for row in &rows {
                records += 1;
                if let Err(problem) = verifier.check(row) {
                    return Ok(Verification {
                        records,
                        outcome: Err(problem),
                    });
                }
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == page => after = last.seq,
                _ => break,
            }
        }
        Ok(Verification {
            records,
            outcome: verifier.finish(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(count: usize) -> Vec<StoredRow> {
        let bodies: Vec<(Record, String)> = (0..count)
            .map(|n| {
                let mut record = Record::new(
                    Actor::system("test"),
                    "instance.provision",
                    &format!("instance/i{n}"),
                );
                record.reason = Some(format!("reason {n}"));
                let body = body_of(&record).expect("a body");
                (record, body)
            })
            .collect();
        let ids: Vec<String> = (0..count).map(|n| format!("id-{n}")).collect();
        let at = DateTime::from_timestamp_micros(1_700_000_000_000_000).expect("a time");
        let mut rows = Vec::new();
        chain(Head::EMPTY, &bodies, &ids, at, &mut rows);
        rows
    }

    fn verify(rows: &[StoredRow], anchors: &[Anchor]) -> Result<Head, Problem> {
        let mut verifier = Verifier::new(anchors);
        for row in rows {
            verifier.check(row)?;
        }
        verifier.finish()
    }

    fn anchor(row: &StoredRow) -> Anchor {
        Anchor {
            seq: row.seq,
            hash: Hash::from_slice(&row.hash).expect("a hash"),
        }
    }

    #[test]
    fn an_untouched_chain_holds() {
        let rows = rows(10);
        let head = verify(&rows, &[anchor(&rows[4]), anchor(&rows[9])]).expect("a valid chain");
        assert_eq!(head.seq, 10);
        assert_eq!(rows[0].prev_hash, Hash::GENESIS.0);
        assert_eq!(rows[5].prev_hash, rows[4].hash);
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let original = rows(3);
        type Edit = fn(&mut StoredRow);
        let edits: Vec<(&str, Edit)> = vec![
            ("id", |row| row.id.push('x')),
            ("at", |row| row.at_us += 1),
            ("actor kind", |row| row.actor_kind = "operator".into()),
            ("actor id", |row| row.actor_id.push('x')),
            ("actor email", |row| row.actor_email = Some(String::new())),
            ("action", |row| row.action.push('x')),
            ("resource", |row| row.resource.push('x')),
            ("commit", |row| row.commit_sha = Some("abc".into())),
            ("result", |row| row.result = "failure".into()),
            ("body", |row| {
                row.body = row.body.replace("reason 1", "reason 2")
            }),
            ("hash", |row| row.hash[31] ^= 1),
        ];
        for (what, edit) in edits {
            let mut rows = original.clone();
            edit(&mut rows[1]);
            assert_eq!(
                verify(&rows, &[]),
                Err(Problem::Altered { seq: 2 }),
                "changing the {what}"
            );
        }
    }

    #[test]
    fn field_boundaries_cannot_be_moved() {
        // "ab" + "c" and "a" + "bc" must hash differently.
        let mut one = rows(1);
        let mut two = one.clone();
        one[0].action = "ab".into();
        one[0].resource = "c".into();
        two[0].action = "a".into();
        two[0].resource = "bc".into();
        let mut buffer = Vec::new();
        assert_ne!(
            one[0].compute_hash(&Hash::GENESIS, &mut buffer),
            two[0].compute_hash(&Hash::GENESIS, &mut buffer)
        );
    }

    #[test]
    fn removed_swapped_and_rewritten_records_are_named() {
        let original = rows(10);

        let mut removed = original.clone();
        removed.remove(3);
        assert_eq!(
            verify(&removed, &[]),
            Err(Problem::Missing { seq: 4, found: 5 })
        );

        let mut swapped = original.clone();
        swapped.swap(2, 6);
        let (a, b) = (swapped[2].seq, swapped[6].seq);
        swapped[2].seq = b;
        swapped[6].seq = a;
        assert_eq!(verify(&swapped, &[]), Err(Problem::Unlinked { seq: 3 }));

        // Rewriting the chain from record 6 on is consistent in itself; the checkpoint
        // at record 8 catches it.
        let mut rewritten = original.clone();
        rewritten[5].body = rewritten[5].body.replace("reason 5", "reason X");
        let bodies: Vec<(Record, String)> = rewritten[5..]
            .iter()
            .map(|row| {
                (
                    Record::new(Actor::system("test"), &row.action, &row.resource),
                    row.body.clone(),
                )
            })
            .collect();
        let ids: Vec<String> = rewritten[5..].iter().map(|row| row.id.clone()).collect();
        let base = Head {
            seq: 5,
            hash: Hash::from_slice(&rewritten[4].hash).expect("a hash"),
        };
        let mut tail = Vec::new();
        chain(
            base,
            &bodies,
            &ids,
            time(rewritten[5].at_us).expect("a time"),
            &mut tail,
        );
        rewritten.truncate(5);
        rewritten.extend(tail);
        assert!(verify(&rewritten, &[]).is_ok());
        assert_eq!(
            verify(&rewritten, &[anchor(&original[2]), anchor(&original[7])]),
            Err(Problem::Rewritten {
                seq: 8,
                since: 3,
                checkpoint: 2
            })
        );

        let truncated = &original[..6];
        assert_eq!(
            verify(truncated, &[anchor(&original[7])]),
            Err(Problem::Truncated {
                seq: 8,
                ends: 6,
                checkpoint: 1
            })
        );
        assert_eq!(
            verify(&[], &[anchor(&original[0])]),
            Err(Problem::Truncated {
                seq: 1,
                ends: 0,
                checkpoint: 1
            })
        );
    }
}
