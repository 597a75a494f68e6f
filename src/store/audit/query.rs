//! Reading the audit log: the records a filter selects, a page at a time, the head, and the
//! whole chain checked by the `Verifier`.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row, any::AnyRow};

use crate::store::{
    Error, Sql, Store,
    audit::chain::{Anchor, Hash, Head, Problem, StoredRow, Verifier},
    micros,
};

/// The columns of `audit_log`, in the order `StoredRow::from_row` reads them.
pub(super) const COLUMNS: &str = "seq, id, at_us, actor_kind, actor_id, actor_email, action, resource, commit_sha, result, body, prev_hash, hash, idempotency_key";

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

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Records read.
    pub records: u64,
    /// The head of the chain, when it holds.
    pub outcome: Result<Head, Problem>,
}

impl Store {
    /// The newest record's `seq` and hash.
    pub async fn audit_head(&self) -> Result<Head, Error> {
        self.retrying(|| read_head(self.pool())).await
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

impl StoredRow {
    /// Reads a row selected with `COLUMNS`.
    pub(super) fn from_row(row: &AnyRow) -> Result<StoredRow, sqlx::Error> {
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
            key: row.try_get(13)?,
        })
    }
}

pub(super) async fn read_head(pool: &AnyPool) -> Result<Head, sqlx::Error> {
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(pool)
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

/// One exported record, as `audit query --format json`, `audit export` and the API give it:
/// the columns, with the body's fields in place of the body.
#[derive(serde::Serialize)]
struct ExportRecord<'a> {
    seq: i64,
    id: &'a str,
    at: String,
    actor: &'a crate::store::audit::Actor,
    action: &'a str,
    resource: &'a str,
    result: &'a str,
    #[serde(flatten)]
    body: serde_json::Value,
    prev_hash: String,
    hash: String,
}

impl StoredRow {
    /// The record in its exported form.
    ///
    /// # Errors
    /// When the row does not hold a record.
    pub fn export(&self) -> Result<serde_json::Value, Error> {
        let entry = self.entry()?;
        let body: serde_json::Value = serde_json::from_str(&self.body)
            .map_err(|error| Error::Stored(format!("audit record {}: {error}", self.seq)))?;
        let record = ExportRecord {
            seq: self.seq,
            id: &self.id,
            at: entry
                .at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            actor: &entry.record.actor,
            action: &self.action,
            resource: &self.resource,
            result: &self.result,
            body,
            prev_hash: hex::encode(&self.prev_hash),
            hash: hex::encode(&self.hash),
        };
        serde_json::to_value(record)
            .map_err(|error| Error::Stored(format!("audit record {}: {error}", self.seq)))
    }
}
