//! Appending to the audit log: records are chained onto the head this process last wrote
//! and inserted, several appenders' records in one statement (see the module's
//! documentation for the group commit and for appends of several processes).

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use sqlx::AnyPool;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::store::{
    Error, Options, Sql, Store,
    audit::{
        Entry, Record, body_of,
        chain::{Hash, Head, StoredRow, chain},
        query::{COLUMNS, read_head},
    },
    is_transient, now, retry,
};

/// Rows per INSERT statement (14 parameters each) and keys per lookup: below both
/// databases' limits on parameters.
const ROWS_PER_STATEMENT: usize = 1_000;

/// One appender's records waiting to be written, and where to send the outcome.
#[derive(Debug)]
struct Pending {
    records: Vec<Record>,
    reply: oneshot::Sender<Result<Vec<Entry>, Error>>,
}

/// A record of a batch with its body's JSON text and the id it gets if it is chained.
#[derive(Debug)]
struct Prepared {
    record: Record,
    body: String,
    id: String,
}

/// Where a record of a batch went.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// To this row of those already in the log with the batch's keys.
    Stored(usize),
    /// To this row of those the batch chains.
    Chained(usize),
}

/// Serializes and combines the appends of one store (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct Appender {
    /// The head as last written by this process; `None` when it must be read again. Whoever
    /// holds the lock is the one writer of this process.
    head: Arc<tokio::sync::Mutex<Option<Head>>>,
    queue: std::sync::Mutex<Vec<Pending>>,
    /// The batch writes under way, which `Store::close` waits for.
    writes: TaskTracker,
}

impl Appender {
    /// Waits until no batch is being written, including those whose appenders were dropped.
    pub(crate) async fn finish(&self) {
        self.writes.close();
        self.writes.wait().await;
    }
}

/// What writing a batch needs of its store, owned, so that the write can outlive the
/// appender that started it.
struct Writer {
    pool: AnyPool,
    /// The store's URL without its password, for messages.
    url: String,
    options: Options,
}

/// What an appender hears when the task writing its records ended without a word.
const SILENT: &str = "the task writing the audit records stopped before it could say whether they were written (it panicked, or the runtime shut down)";

impl Store {
    /// Appends `records` as consecutive records of the chain, atomically: all or none.
    ///
    /// Waits, with backoff, up to the store's `retry_for` while the database is away; an
    /// error means none of the records was appended, except [`Error::Unreachable`] when the
    /// database went away during the write and did not come back to say whether it landed.
    ///
    /// Cancel-safe: the records of several appenders are written together by a task of its
    /// own, so dropping this future (in a `select!`, a timeout) never cuts off a write, and
    /// every other appender still hears what happened to its records.
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
                    return result.unwrap_or_else(|_| Err(Error::Invalid(SILENT.into())));
                }
                head = Arc::clone(&self.appender.head).lock_owned() => head,
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
            // The batch holds other appenders' records, and only its writer can tell them
            // whether they landed: the write must not end with this future. The task owns
            // the lock, so the next batch waits for it, dropped appender or not.
            let writer = Writer {
                pool: self.pool().clone(),
                url: self.url.clone(),
                options: self.options.clone(),
            };
            let write = self
                .appender
                .writes
                .spawn(async move { writer.write_batch(&mut head, batch).await }.in_current_span());
            if let Err(error) = write.await
                && error.is_panic()
            {
                std::panic::resume_unwind(error.into_panic());
            }
        }
    }

    /// Appends one record.
    pub async fn append_one(&self, record: Record) -> Result<Entry, Error> {
        let mut entries = self.append(vec![record]).await?;
        entries
            .pop()
            .ok_or_else(|| Error::Invalid("the append returned no record".into()))
    }
}

impl Writer {
    /// Runs `operation` as `Store::retrying` does.
    async fn retrying<T, F, Fut>(&self, operation: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        retry(&self.url, &self.options, operation).await
    }

    /// Writes the records of `batch` as one transaction and tells each appender its outcome.
    async fn write_batch(&self, head: &mut Option<Head>, batch: Vec<Pending>) {
        let mut records = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for pending in batch {
            match pending
                .records
                .into_iter()
                .map(|record| {
                    Ok(Prepared {
                        body: body_of(&record)?,
                        id: uuid::Uuid::new_v4().to_string(),
                        record,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()
            {
                Ok(mine) => {
                    replies.push((pending.reply, mine.len()));
                    records.extend(mine);
                }
                Err(error) => {
                    let _ = pending.reply.send(Err(error));
                }
            }
        }
        if records.is_empty() {
            return;
        }
        match self.write_rows(head, &records, now()).await {
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

    /// Chains and inserts the records whose keys are not in the log yet, retrying while
    /// another process appends first or the database is away; returns one entry per record,
    /// in order. On success `head` is the new head.
    async fn write_rows(
        &self,
        head: &mut Option<Head>,
        records: &[Prepared],
        at: DateTime<Utc>,
    ) -> Result<Vec<Entry>, Error> {
        let started = std::time::Instant::now();
        let mut conflicts = 0;
        let mut keys: Vec<&str> = records
            .iter()
            .filter_map(|prepared| prepared.record.key.as_deref())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut rows = Vec::new();
        loop {
            let base = match *head {
                Some(base) => base,
                None => self.retrying(|| read_head(&self.pool)).await?,
            };
            let stored = if keys.is_empty() {
                Vec::new()
            } else {
                self.retrying(|| rows_with_keys(&self.pool, &keys)).await?
            };
            let (places, fresh) = place(records, &stored);
            if fresh.is_empty() {
                return entries(&places, &stored, &[], &fresh);
            }
            // Until the write is known to have landed, the cached head is unknown.
            *head = None;
            chain(base, &fresh, at, &mut rows);
            match insert(&self.pool, &rows).await {
                Ok(()) => {
                    *head = Some(last(&rows));
                    return entries(&places, &stored, &rows, &fresh);
                }
                Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                    // Another process appended first, or appended one of the keys: chain
                    // onto its records, and resolve the keys it wrote to its records.
                    conflicts += 1;
                    if conflicts > 1_000 {
                        return Err(Error::Invalid(
                            "the audit log's head kept moving: 1,000 conflicting appends".into(),
                        ));
                    }
                }
                Err(error) if is_transient(&error) => {
                    // The commit may have landed before the connection broke: ask before
                    // trying again, and before giving up, so no outcome is reported wrongly.
                    let first = rows[0].id.clone();
                    let landed = self
                        .retrying(|| {
                            sqlx::query_scalar::<_, i64>("SELECT seq FROM audit_log WHERE id = $1")
                                .bind(first.clone())
                                .fetch_optional(&self.pool)
                        })
                        .await?;
                    if landed.is_some() {
                        *head = Some(last(&rows));
                        return entries(&places, &stored, &rows, &fresh);
                    }
                    if started.elapsed() > self.options.retry_for {
                        return Err(Error::Unreachable {
                            url: self.url.clone(),
                            waited: started.elapsed(),
                            attempts: conflicts + 1,
                            source: error,
                        });
                    }
                    tracing::warn!(store = %self.url, %error, "appending to the audit log failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => return Err(Error::Sql(error)),
            }
        }
    }
}

/// Where each of `records` goes, and the records to chain, each with its body and id: a
/// record whose key is in `stored` goes to that row; one whose key an earlier record of the
/// batch has goes where that record goes; any other is chained.
fn place<'a>(
    records: &'a [Prepared],
    stored: &[StoredRow],
) -> (Vec<Place>, Vec<(&'a Record, &'a str, &'a str)>) {
    let mut by_key: HashMap<&str, Place> = stored
        .iter()
        .enumerate()
        .filter_map(|(index, row)| Some((row.key.as_deref()?, Place::Stored(index))))
        .collect();
    let mut places = Vec::with_capacity(records.len());
    let mut fresh = Vec::with_capacity(records.len());
    for prepared in records {
        let key = prepared.record.key.as_deref();
        if let Some(&place) = key.and_then(|key| by_key.get(key)) {
            places.push(place);
            continue;
        }
        let place = Place::Chained(fresh.len());
        fresh.push((
            &prepared.record,
            prepared.body.as_str(),
            prepared.id.as_str(),
        ));
        if let Some(key) = key {
            by_key.insert(key, place);
        }
        places.push(place);
    }
    (places, fresh)
}

/// The entries of a batch, from where its records went: a stored row's entry is the record
/// as it is in the log; a chained row's carries the record as it was given.
fn entries(
    places: &[Place],
    stored: &[StoredRow],
    rows: &[StoredRow],
    fresh: &[(&Record, &str, &str)],
) -> Result<Vec<Entry>, Error> {
    places
        .iter()
        .map(|place| match *place {
            Place::Stored(index) => stored[index].entry(),
            Place::Chained(index) => {
                let mut entry = rows[index].entry()?;
                entry.record = fresh[index].0.clone();
                Ok(entry)
            }
        })
        .collect()
}

/// The head after `rows`, which are not empty.
fn last(rows: &[StoredRow]) -> Head {
    let row = rows.last().expect("a batch writes at least one row");
    Head {
        seq: row.seq,
        hash: Hash::from_slice(&row.hash).expect("chained hashes are 32 bytes"),
    }
}

/// The stored rows whose idempotency key is one of `keys`.
async fn rows_with_keys(pool: &AnyPool, keys: &[&str]) -> Result<Vec<StoredRow>, sqlx::Error> {
    let mut rows = Vec::new();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let mut query = Sql::new(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE idempotency_key IN ("
        ));
        for (index, key) in chunk.iter().enumerate() {
            if index > 0 {
                query.push(", ");
            }
            query.push_bind(*key);
        }
        query.push(")");
        let (text, arguments) = query.finish()?;
        for row in sqlx::query_with(&text, arguments).fetch_all(pool).await? {
            rows.push(StoredRow::from_row(&row)?);
        }
    }
    Ok(rows)
}

/// Inserts the rows: one statement when they fit, else one transaction.
async fn insert(pool: &AnyPool, rows: &[StoredRow]) -> Result<(), sqlx::Error> {
    if rows.len() <= ROWS_PER_STATEMENT {
        let (text, arguments) = insert_statement(rows)?;
        return sqlx::query_with(&text, arguments)
            .execute(pool)
            .await
            .map(drop);
    }
    let mut transaction = pool.begin().await?;
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
            .push(", ")
            .push_bind(row.key.as_deref())
            .push(")");
    }
    query.finish()
}

#[cfg(test)]
mod tests {
    use std::task::Context;

    use futures_util::{FutureExt, task::noop_waker_ref};

    use crate::store::{
        Options, Store,
        audit::{Actor, Filter, Record},
    };

    async fn open(folder: &tempfile::TempDir) -> Store {
        let url = format!("sqlite://{}", folder.path().join("state.db").display());
        Store::open(&url.as_str().into(), Options::default())
            .await
            .expect("a store")
    }

    fn record(resource: &str) -> Record {
        Record::new(Actor::system("test"), "instance.provision", resource)
    }

    /// How many appenders' records wait in the queue.
    fn queued(store: &Store) -> usize {
        store
            .appender
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    #[tokio::test]
    async fn an_appender_cut_off_mid_write_leaves_the_others_their_outcome() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let store = open(&folder).await;
        // The futures are polled by hand, so the test knows where each one stands; the
        // runtime has one thread, so nothing else runs between two polls.
        let mut context = Context::from_waker(noop_waker_ref());

        // C writes a large batch; A and B queue behind it.
        let records = (0..2_000)
            .map(|n| record(&format!("instance/c{n}")))
            .collect();
        let mut c = Box::pin(store.append(records));
        assert!(
            c.poll_unpin(&mut context).is_pending(),
            "C's write is under way"
        );
        assert_eq!(queued(&store), 0, "C took its records");
        let mut a = Box::pin(store.append(vec![record("instance/a")]));
        assert!(a.poll_unpin(&mut context).is_pending());
        let mut b = Box::pin(store.append(vec![record("instance/b")]));
        assert!(b.poll_unpin(&mut context).is_pending());
        assert_eq!(queued(&store), 2, "A and B wait for C's write");
        assert_eq!(c.await.expect("C's records").len(), 2_000);

        // A, first in line for the lock, writes its record and B's; it is cut off while the
        // write runs.
        assert!(
            a.poll_unpin(&mut context).is_pending(),
            "A's write is under way"
        );
        assert_eq!(queued(&store), 0, "A took its record and B's");
        tokio::task::yield_now().await;
        drop(a);

        let b = b.await.expect("B hears that its record was written");
        assert_eq!(b[0].seq, 2_002);
        let written = store
            .audit_query(
                &Filter {
                    resource: Some("instance/a".into()),
                    ..Filter::default()
                },
                10,
            )
            .await
            .expect("a query");
        assert_eq!(
            written.iter().map(|row| row.seq).collect::<Vec<_>>(),
            vec![2_001],
            "A's record was written, although A was not there to hear it"
        );
        let verification = store
            .audit_verify(&[], 1_000)
            .await
            .expect("a verification");
        assert_eq!(verification.outcome.map(|head| head.seq), Ok(2_002));
        store.close().await;
    }
}
