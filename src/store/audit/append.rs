//! Appending to the audit log: records are chained onto the head this process last wrote
//! and inserted, several appenders' records in one statement (see the module's
//! documentation for the group commit and for appends of several processes).

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::store::{
    Error, Sql, Store,
    audit::{
        Entry, Record, body_of,
        chain::{Hash, Head, StoredRow, chain},
        query::{COLUMNS, read_head},
    },
    is_transient, now,
};

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
