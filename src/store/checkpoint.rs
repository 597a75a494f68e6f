//! Signed checkpoints of the audit chain, kept outside the database.
//!
//! A checkpoint is the chain's head (`seq`, hash) at a moment, signed with ed25519. Kept where
//! the database's superuser cannot reach (a git note, an object store with retention), it
//! catches what the chain alone cannot: a chain rewritten from some record on with fresh
//! hashes, or records removed from its end. A checkpoint file holds one JSON object per
//! line, oldest first; `wakafleet audit checkpoint` appends to it.

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{
    secret::Secret,
    store::audit::{Anchor, Hash, Head},
};

/// One line of a checkpoint file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: i64,
    /// The hash of record `seq`, in hex.
    pub hash: String,
    /// When it was signed (RFC 3339).
    pub at: String,
    /// The ed25519 public key that signed it, in hex.
    pub public_key: String,
    /// The signature of [`Checkpoint::message`], in hex.
    pub signature: String,
}

/// Why a key or a checkpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Key(String),
    #[error("checkpoint {line}: {reason}")]
    Invalid { line: usize, reason: String },
}

impl Checkpoint {
    /// The bytes that are signed.
    pub fn message(seq: i64, hash: &str, at: &str) -> String {
        format!("wakafleet audit checkpoint v1\nseq {seq}\nhash {hash}\nat {at}\n")
    }

    /// Signs `head` at `at`.
    pub fn sign(head: Head, at: DateTime<Utc>, key: &SigningKey) -> Checkpoint {
        let hash = head.hash.to_hex();
        let at = at.to_rfc3339_opts(SecondsFormat::Secs, true);
        let signature = key.sign(Checkpoint::message(head.seq, &hash, &at).as_bytes());
        Checkpoint {
            seq: head.seq,
            hash,
            at,
            public_key: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// The point of the chain this checkpoint vouches for, if `trusted` signed it.
    pub fn check(&self, trusted: &VerifyingKey) -> Result<Anchor, String> {
        if self.public_key != hex::encode(trusted.as_bytes()) {
            return Err(format!(
                "it is signed by key {}, not by the trusted key {}",
                self.public_key,
                hex::encode(trusted.as_bytes())
            ));
        }
        let mut signature = [0; 64];
        hex::decode_to_slice(&self.signature, &mut signature)
            .map_err(|_| "its signature is not 64 bytes of hex".to_string())?;
        trusted
            .verify(
                Checkpoint::message(self.seq, &self.hash, &self.at).as_bytes(),
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| "its signature does not match its contents".to_string())?;
        let hash = Hash::from_hex(&self.hash)
            .ok_or_else(|| "its hash is not 32 bytes of hex".to_string())?;
        Ok(Anchor {
            seq: self.seq,
            hash,
        })
    }

    /// This checkpoint as one line of a checkpoint file.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// Reads a checkpoint file and checks every signature against `trusted`.
pub fn parse_file(text: &str, trusted: &VerifyingKey) -> Result<Vec<Anchor>, Error> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let invalid = |reason: String| Error::Invalid {
                line: index + 1,
                reason,
            };
            let checkpoint: Checkpoint = serde_json::from_str(line)
                .map_err(|error| invalid(format!("not a checkpoint: {error}")))?;
            checkpoint.check(trusted).map_err(invalid)
        })
        .collect()
}

/// Reads a key given as `env:NAME` (or as its hex text) into 32 bytes.
fn key_bytes(reference: &str, what: &str) -> Result<[u8; 32], Error> {
    // A signing key's text is a secret; a public key's costs nothing to treat as one.
    let text = match reference.strip_prefix("env:") {
        Some(name) => std::env::var(name).map(Secret::new).map_err(|_| {
            Error::Key(format!(
                "the {what} is to come from the environment variable {name}, which is not set"
            ))
        })?,
        None => Secret::new(reference),
    };
    let mut bytes = [0; 32];
    hex::decode_to_slice(text.expose().trim(), &mut bytes).map_err(|_| {
        Error::Key(format!(
            "the {what} must be 64 hex digits (32 bytes); `wakafleet audit keygen` makes a pair"
        ))
    })?;
    Ok(bytes)
}

/// The signing key an `env:NAME` reference names: the variable holds the 32-byte secret
/// seed in hex. Only `env:` references are accepted, so secrets never appear on a command
/// line.
pub fn signing_key(reference: &str) -> Result<SigningKey, Error> {
    if !reference.starts_with("env:") {
        // Not one character of what was given is shown: it may be the key.
        return Err(Error::Key(
            "the signing key must be an `env:NAME` reference, not the key itself".into(),
        ));
    }
    Ok(SigningKey::from_bytes(&key_bytes(
        reference,
        "signing key",
    )?))
}

/// The public key given in hex or as an `env:NAME` reference.
pub fn verifying_key(reference: &str) -> Result<VerifyingKey, Error> {
    VerifyingKey::from_bytes(&key_bytes(reference, "public key")?)
        .map_err(|error| Error::Key(format!("not an ed25519 public key: {error}")))
}

/// A new key pair: the secret seed and the public key, in hex.
pub fn generate() -> Result<(String, String), Error> {
    let mut seed = [0; 32];
    getrandom::fill(&mut seed)
        .map_err(|error| Error::Key(format!("no randomness for a key: {error}")))?;
    let key = SigningKey::from_bytes(&seed);
    Ok((
        hex::encode(seed),
        hex::encode(key.verifying_key().as_bytes()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    fn head() -> Head {
        Head {
            seq: 42,
            hash: Hash([7; 32]),
        }
    }

    #[test]
    fn a_signed_checkpoint_checks_and_a_changed_one_does_not() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
        let checkpoint = Checkpoint::sign(head(), at, &key(1));
        let trusted = key(1).verifying_key();
        assert_eq!(
            checkpoint.check(&trusted),
            Ok(Anchor {
                seq: 42,
                hash: Hash([7; 32])
            })
        );
        let mut moved = checkpoint.clone();
        moved.seq = 41;
        assert!(moved.check(&trusted).is_err());
        let mut rehashed = checkpoint.clone();
        rehashed.hash = Hash([8; 32]).to_hex();
        assert!(rehashed.check(&trusted).is_err());
        // Signed by another key, even validly: refused.
        let forged = Checkpoint::sign(head(), at, &key(2));
        assert!(forged.check(&trusted).is_err());
    }

    #[test]
    fn files_are_read_line_by_line() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
        let text = Checkpoint::sign(head(), at, &key(1)).to_line()
            + "\n"
            + &Checkpoint::sign(head(), at, &key(2)).to_line();
        match parse_file(&text, &key(1).verifying_key()) {
            Err(Error::Invalid { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected line 3 to be refused, got {other:?}"),
        }
    }

    #[test]
    fn generated_keys_sign_what_their_public_key_checks() {
        let (secret, public) = generate().expect("a key pair");
        let signing = SigningKey::from_bytes(&key_bytes(&secret, "key").expect("hex"));
        let verifying = verifying_key(&public).expect("a public key");
        let at = DateTime::from_timestamp(0, 0).expect("a time");
        assert!(
            Checkpoint::sign(head(), at, &signing)
                .check(&verifying)
                .is_ok()
        );
        assert!(signing_key(&secret).is_err(), "a literal secret is refused");
    }
}
