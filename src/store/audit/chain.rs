//! The hash chain of the audit log and its verifier: how a row's hash is computed from the
//! row and the hash before it (the canonical record of the module's documentation), how
//! records are chained onto a head, and how a chain is checked against signed anchors.
//!
//! Everything here is pure: it reads no database and no clock, so it is tested on rows made
//! in memory.

use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::store::{audit::Record, micros};

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

    pub(super) fn from_slice(bytes: &[u8]) -> Option<Hash> {
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
    /// The `idempotency_key` column: a copy of the body's `key`, for looking keys up. It is
    /// not part of the canonical record; the body, which holds the key, is.
    pub key: Option<String>,
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

/// Fills `rows` with `records` chained onto `base`: each record with its body's JSON text
/// and its id.
pub(super) fn chain(
    base: Head,
    records: &[(&Record, &str, &str)],
    at: DateTime<Utc>,
    rows: &mut Vec<StoredRow>,
) {
    rows.clear();
    let mut prev = base;
    let mut buffer = Vec::new();
    for &(record, body, id) in records {
        let mut row = StoredRow {
            seq: prev.seq + 1,
            id: id.to_string(),
            at_us: micros(at),
            actor_kind: record.actor.kind.as_str().to_string(),
            actor_id: record.actor.id.clone(),
            actor_email: record.actor.email.clone(),
            action: record.action.clone(),
            resource: record.resource.clone(),
            commit_sha: record.commit.as_ref().map(|commit| commit.sha.clone()),
            result: record.result.as_str().to_string(),
            body: body.to_string(),
            prev_hash: prev.hash.0.to_vec(),
            hash: Vec::new(),
            key: record.key.clone(),
        };
        let hash = row.compute_hash(&prev.hash, &mut buffer);
        row.hash = hash.0.to_vec();
        prev = Head { seq: row.seq, hash };
        rows.push(row);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        audit::{Actor, body_of},
        time,
    };

    fn rows(count: usize) -> Vec<StoredRow> {
        let bodies: Vec<(Record, String)> = (0..count)
            .map(|n| {
                let mut record = Record::new(
                    Actor::system("test"),
                    "instance.provision",
                    &format!("instance/i{n}"),
                );
                record.reason = Some(format!("reason {n}"));
                record.key = Some(format!("job/j/step/s{n}/attempt/1"));
                let body = body_of(&record).expect("a body");
                (record, body)
            })
            .collect();
        let ids: Vec<String> = (0..count).map(|n| format!("id-{n}")).collect();
        let at = DateTime::from_timestamp_micros(1_700_000_000_000_000).expect("a time");
        let mut rows = Vec::new();
        chain(Head::EMPTY, &links(&bodies, &ids), at, &mut rows);
        rows
    }

    fn links<'a>(
        bodies: &'a [(Record, String)],
        ids: &'a [String],
    ) -> Vec<(&'a Record, &'a str, &'a str)> {
        bodies
            .iter()
            .zip(ids)
            .map(|((record, body), id)| (record, body.as_str(), id.as_str()))
            .collect()
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
            ("key in the body", |row| {
                row.body = row.body.replace("attempt/1", "attempt/2")
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
    fn the_key_column_is_a_copy_outside_the_canonical_record() {
        let original = rows(3);
        assert_eq!(
            original[1].key.as_deref(),
            Some("job/j/step/s1/attempt/1"),
            "chaining copies the key into its column"
        );
        let mut rows = original.clone();
        rows[1].key = None;
        assert!(verify(&rows, &[]).is_ok());
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
            &links(&bodies, &ids),
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
