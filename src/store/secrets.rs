//! Secrets wakafleet generates and must remember, such as each instance's database
//! password: encrypted with ChaCha20-Poly1305 under a key that only the daemon holds, given
//! as an `env:NAME` reference (64 hex digits). The store never sees a plaintext.

use chacha20poly1305::{
    ChaCha20Poly1305, Key, KeyInit, Nonce,
    aead::{Aead, Payload},
};

use crate::{
    secret::Secret,
    store::{Error, Store, micros, now},
};

/// The key secrets are sealed with.
pub struct SecretKey(ChaCha20Poly1305);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SecretKey(…)")
    }
}

impl SecretKey {
    /// The key an `env:NAME` reference names: the variable holds 32 bytes in hex.
    pub fn from_reference(reference: &str) -> Result<SecretKey, Error> {
        let name = reference.strip_prefix("env:").ok_or_else(|| {
            Error::Invalid("the secrets key must be given as an `env:NAME` reference".into())
        })?;
        let text = std::env::var(name).map(Secret::new).map_err(|_| {
            Error::Invalid(format!(
                "the secrets key is to come from the environment variable {name}, which is not set"
            ))
        })?;
        let mut bytes = [0; 32];
        hex::decode_to_slice(text.expose().trim(), &mut bytes).map_err(|_| {
            Error::Invalid(format!(
                "the environment variable {name} must hold 64 hex digits (a 32-byte key)"
            ))
        })?;
        Ok(SecretKey::from_bytes(&bytes))
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> SecretKey {
        SecretKey(ChaCha20Poly1305::new(Key::from_slice(bytes)))
    }

    fn seal(&self, owner: &str, name: &str, plaintext: &str) -> Result<([u8; 12], Vec<u8>), Error> {
        let mut nonce = [0; 12];
        getrandom::fill(&mut nonce)
            .map_err(|error| Error::Invalid(format!("no randomness for a nonce: {error}")))?;
        let aad = associated_data(owner, name);
        let ciphertext = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Invalid("a secret could not be encrypted".into()))?;
        Ok((nonce, ciphertext))
    }

    fn open(
        &self,
        owner: &str,
        name: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<String, Error> {
        let refused = || {
            Error::Stored(format!(
                "the secret `{name}` of `{owner}` does not decrypt: another key, or it was changed"
            ))
        };
        if nonce.len() != 12 {
            return Err(refused());
        }
        let aad = associated_data(owner, name);
        let plaintext = self
            .0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| refused())?;
        String::from_utf8(plaintext).map_err(|_| refused())
    }
}

fn associated_data(owner: &str, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(owner.len() + name.len() + 1);
    aad.extend_from_slice(owner.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

impl Store {
    /// Seals and keeps a secret, replacing one of the same owner and name.
    pub async fn put_secret(
        &self,
        key: &SecretKey,
        owner: &str,
        name: &str,
        plaintext: &Secret,
    ) -> Result<(), Error> {
        let (nonce, ciphertext) = key.seal(owner, name, plaintext.expose())?;
        self.retrying(|| {
            sqlx::query(
                "INSERT INTO secrets (owner, name, nonce, ciphertext, updated_at_us) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (owner, name) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at_us = excluded.updated_at_us",
            )
            .bind(owner)
            .bind(name)
            .bind(nonce.as_slice())
            .bind(ciphertext.as_slice())
            .bind(micros(now()))
            .execute(self.pool())
        })
        .await?;
        Ok(())
    }

    /// A kept secret, opened.
    pub async fn secret(
        &self,
        key: &SecretKey,
        owner: &str,
        name: &str,
    ) -> Result<Option<Secret>, Error> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .retrying(|| {
                sqlx::query_as(
                    "SELECT nonce, ciphertext FROM secrets WHERE owner = $1 AND name = $2",
                )
                .bind(owner)
                .bind(name)
                .fetch_optional(self.pool())
            })
            .await?;
        row.map(|(nonce, ciphertext)| key.open(owner, name, &nonce, &ciphertext).map(Secret::new))
            .transpose()
    }

    /// Forgets every secret of `owner`.
    pub async fn delete_secrets(&self, owner: &str) -> Result<(), Error> {
        self.retrying(|| {
            sqlx::query("DELETE FROM secrets WHERE owner = $1")
                .bind(owner)
                .execute(self.pool())
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_open_only_with_their_key_owner_and_name() {
        let key = SecretKey::from_bytes(&[1; 32]);
        let (nonce, sealed) = key
            .seal("web", "database_password", "s3cret")
            .expect("sealed");
        assert!(!sealed.windows(6).any(|window| window == b"s3cret"));
        assert_eq!(
            key.open("web", "database_password", &nonce, &sealed)
                .expect("opened"),
            "s3cret"
        );
        assert!(
            key.open("api", "database_password", &nonce, &sealed)
                .is_err()
        );
        assert!(key.open("web", "other", &nonce, &sealed).is_err());
        let other = SecretKey::from_bytes(&[2; 32]);
        assert!(
            other
                .open("web", "database_password", &nonce, &sealed)
                .is_err()
        );
        let (second_nonce, _) = key
            .seal("web", "database_password", "s3cret")
            .expect("sealed");
        assert_ne!(nonce, second_nonce, "every seal has its own nonce");
    }
}
