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

/// Prefixes of widely used token formats.
const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "sk_live_",
    "-----BEGIN",
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
fn secret_in(text: &str) -> Option<&'static str> {
    if text.starts_with("env:") {
        return None;
    }
    if let Some((_, rest)) = text.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo
                .split_once(':')
                .is_some_and(|(_, password)| !password.is_empty())
        {
            return Some("a password in a URL");
        }
    }
    // Tokens are long; most strings of a fleet are short and skip this.
    if text.len() >= 16 && TOKEN_PREFIXES.iter().any(|prefix| text.contains(prefix)) {
        return Some("an access token or private key");
    }
    None
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
    }
}
