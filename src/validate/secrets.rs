//! The scan for secrets written into fleet files (`secret-in-repo`).
//!
//! Secrets belong in the environment, named by `env:NAME`. This scan looks at every string of
//! every file for a password in a URL, a well-known token format, or a literal value under a
//! key that names a secret. Messages never repeat the secret.

use crate::{
    diag::{Code, Diagnostic},
    load::{Node, Value},
    validate::decode::Ctx,
};

/// Marks of widely used token formats and of PEM private keys. Each ends in `_` or `-`, so
/// only the few places of a string where one of those characters stands are compared.
const TOKEN_MARKS: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "sk_live_",
    "PRIVATE KEY-",
];

/// Keys whose values are secrets by name.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
];

/// Reports every secret found in a document.
pub fn scan(node: &Node<'_>, ctx: &mut Ctx) {
    match &node.value {
        Value::String(text) | Value::Plain(text) => {
            if let Some(what) = secret_in(text) {
                ctx.push(
                    Diagnostic::error(
                        Code::SecretInRepo,
                        node.span,
                        format!("{what} is written into the fleet repository"),
                    )
                    .with_label("literal secret")
                    .with_help("keep secrets in the environment and write `env:NAME` here"),
                );
            }
        }
        Value::Array(items) => items.iter().for_each(|item| scan(item, ctx)),
        Value::Table(entries) => {
            for entry in entries {
                let key = entry.key.as_bytes();
                let names_secret = SECRET_KEYS.iter().any(|name| {
                    key.len() >= name.len()
                        && key[key.len() - name.len()..].eq_ignore_ascii_case(name.as_bytes())
                });
                let literal = match &entry.value.value {
                    Value::String(text) | Value::Plain(text) => {
                        !text.is_empty() && !text.starts_with("env:") && secret_in(text).is_none()
                    }
                    _ => false,
                };
                if names_secret && literal {
                    ctx.push(
                        Diagnostic::error(
                            Code::SecretInRepo,
                            entry.value.span,
                            format!("`{}` holds a literal secret", entry.key),
                        )
                        .with_label("literal secret")
                        .with_help("keep secrets in the environment and write `env:NAME` here"),
                    );
                }
                scan(&entry.value, ctx);
            }
        }
        _ => {}
    }
}

/// What kind of secret `text` holds, if any.
///
/// One pass over the bytes: only at a `:` (a URL's scheme) or at a `_` or `-` (where a
/// token mark ends) is anything compared, which keeps the scan cheap on large fleets.
fn secret_in(text: &str) -> Option<&'static str> {
    if text.starts_with("env:") {
        return None;
    }
    let bytes = text.as_bytes();
    // Tokens are long; most strings of a fleet are short and skip this.
    let may_hold_token = bytes.len() >= 16;
    for (at, byte) in bytes.iter().enumerate() {
        match byte {
            b':' if bytes[at + 1..].starts_with(b"//") && url_has_password(&text[at + 3..]) => {
                return Some("a password in a URL");
            }
            b'_' | b'-'
                if may_hold_token
                    && TOKEN_MARKS
                        .iter()
                        .any(|mark| bytes[..=at].ends_with(mark.as_bytes())) =>
            {
                return Some("an access token or private key");
            }
            _ => {}
        }
    }
    None
}

/// Whether the part of a URL after `scheme://` has a password in its user information.
fn url_has_password(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .is_some_and(|(_, password)| !password.is_empty())
}

#[cfg(test)]
mod tests {
    use super::secret_in;

    #[test]
    fn finds_passwords_in_urls_and_tokens() {
        assert!(secret_in("postgres://admin:hunter2@db:5432/x").is_some());
        assert!(secret_in("ghp_0123456789abcdefghijklmnopqrstuvwxyz").is_some());
        assert!(secret_in("-----BEGIN OPENSSH PRIVATE KEY-----").is_some());
        assert!(secret_in("postgres://admin@db:5432/x").is_none());
        assert!(secret_in("unix:///var/run/docker.sock").is_none());
        assert!(secret_in("env:WAKAFLEET_DATABASE_URL").is_none());
        assert!(secret_in("https://example.com/a:b@c").is_none());
        assert!(secret_in("a-long-instance-name-with_underscores").is_none());
        assert!(secret_in("xoxb-0123456789-abcdefghij").is_some());
    }
}
