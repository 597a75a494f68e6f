//! Secrets in transit: a type that cannot print what it holds, and the one redaction of a
//! URL that is shown to a person.
//!
//! A password, a URL with a password in it, a value of an `env:` reference or a key travels
//! as a [`Secret`]: its `Debug` and `Display` print `***`, so a `{:?}` in a log line, a panic
//! message or an error cannot leak it, and reading it takes a call to [`Secret::expose`] that
//! a reviewer can search for. [`redact_url`] is how a URL is written into a message: it never
//! fails, whatever the user typed.

use std::{fmt, str::FromStr};

/// A value that must not be printed, logged, planned or audited.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it (a connection, an environment
    /// variable, a cipher).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Secret, Self::Err> {
        Ok(Secret::from(value))
    }
}

/// `url` as it may be shown: the password of its user information and the values of
/// password-like query parameters replaced by `***`.
///
/// It takes any text, a URL or not: no scheme (`app:pw@db/x`), a mistyped scheme
/// (`postgress://…`), a password holding `/`, `@`, `?`, `#` or `%`-escapes. The user
/// information is everything before the last `@` that comes before the host, so a password
/// with an unescaped `@` or `/` is still taken whole; when in doubt, more is hidden, not
/// less.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let mut shown = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        shown.push_str(scheme);
        shown.push_str("://");
    }
    // Without a scheme, only text shaped `user:password@host` has user information: an `@`
    // alone (a path, an email address) hides nothing.
    let rest = match rest.rfind('@') {
        Some(at) if scheme.is_some() || rest[..at].contains(':') => {
            let (user_information, after) = (&rest[..at], &rest[at..]);
            match user_information.split_once(':') {
                Some((user, _password)) => {
                    shown.push_str(user);
                    shown.push_str(":***");
                }
                None => shown.push_str(user_information),
            }
            after
        }
        _ => rest,
    };
    match rest.split_once('?') {
        Some((before, query)) => {
            shown.push_str(before);
            shown.push('?');
            shown.push_str(&redact_query(query));
        }
        None => shown.push_str(rest),
    }
    shown
}

/// A query string with the values of its password-like parameters replaced by `***`.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _value)) if is_secret_parameter(name) => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "passwd", "pwd", "secret", "token", "key"]
        .iter()
        .any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_nothing_of_itself() {
        let secret = Secret::new("hunter2");
        assert_eq!(
            format!("{secret:?} {secret} {secret:#?}"),
            "Secret(***) *** Secret(***)"
        );
        assert_eq!(secret.expose(), "hunter2");
        #[derive(Debug)]
        #[allow(dead_code, reason = "read through Debug only")]
        struct Holder {
            url: Secret,
        }
        let holder = Holder {
            url: Secret::new("postgres://a:hunter2@h/d"),
        };
        assert!(!format!("{holder:?}").contains("hunter2"));
    }

    #[test]
    fn every_form_of_url_loses_its_password() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/fleet",
                "postgres://app:***@db:5432/fleet",
            ),
            (
                "postgres://app:s3cr/etpw@127.0.0.1:1/db",
                "postgres://app:***@127.0.0.1:1/db",
            ),
            (
                "postgress://app:s3cretpw@localhost/db",
                "postgress://app:***@localhost/db",
            ),
            ("postgres://app:p@ss@w0rd@db/x", "postgres://app:***@db/x"),
            ("postgres://app:p%40ss%2Fx@db/x", "postgres://app:***@db/x"),
            ("postgres://app:pa?ss#wd@db/x", "postgres://app:***@db/x"),
            ("app:s3cret@localhost/db", "app:***@localhost/db"),
            ("postgres://app:@db/x", "postgres://app:***@db/x"),
            (
                "postgres://db/x?user=app&password=s3cret&sslmode=require",
                "postgres://db/x?user=app&password=***&sslmode=require",
            ),
            ("postgres://app@db/fleet", "postgres://app@db/fleet"),
            (
                "sqlite://.wakafleet/state.db",
                "sqlite://.wakafleet/state.db",
            ),
            ("ops@example.org", "ops@example.org"),
            ("", ""),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
