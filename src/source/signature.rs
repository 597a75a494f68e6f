//! Whether an SSH key that an allowed-signers file names signed a git commit, with the verdict
//! `git verify-commit` gets from `ssh-keygen` for `gpg.format = ssh`.
//!
//! Git runs `ssh-keygen -Y find-principals` to find the lines whose key made the signature,
//! then `ssh-keygen -Y verify -n git -I <principal> -Overify-time=<committer time>`. So here:
//! the signature must be an SSH signature (`sshsig`) in the namespace `git` over the commit
//! without its `gpgsig` header, made by a key of a line of [`AllowedSigners`] whose
//! `namespaces` (if any) match `git` and whose `valid-after` and `valid-before` (if any)
//! hold at the commit's committer time, bounds included.
//!
//! The file format is the ALLOWED SIGNERS section of `ssh-keygen(1)`: lines
//! `principals [options] keytype base64-key [comment]`, principals and namespaces as
//! `ssh_config(5)` pattern lists (`*`, `?`, `!` negation, case-sensitive), timestamps
//! `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]` in the local time zone unless they end in `Z`.
//! Deliberately absent: certificates (`cert-authority` lines are refused by
//! [`AllowedSigners::parse`]), revocation lists, and keys other than `ssh-ed25519` (lines
//! with other keys parse, and a commit signed by one is refused as unsupported).
//! Nothing here reads a private key or prints anything but public fingerprints.

use std::path::Path;

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
use git2::ErrorCode;
use ssh_key::{Algorithm, HashAlg, PublicKey, SshSig};

use crate::source::{Error, commit};

/// The sshsig namespace git signs commits in.
const NAMESPACE: &str = "git";

/// The keys allowed to sign commits, parsed from an allowed-signers file.
#[derive(Clone, Debug)]
pub struct AllowedSigners {
    lines: Vec<Line>,
}

/// Who signed a commit: the principal of the allowed-signers line that let the key sign, and
/// the key's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// The first principal of the line; for a wildcard pattern (`*@example.com`), the
    /// committer's email when the line's principals match it, else the pattern itself.
    pub principal: String,
    /// The SHA-256 fingerprint as `ssh-keygen -l` prints it: `SHA256:` and unpadded base64.
    pub fingerprint: String,
}

/// Why a commit's signature is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the commit is not signed")]
    Unsigned,
    #[error("the commit is signed with {kind}, not with an ssh key")]
    NotSsh { kind: &'static str },
    #[error("the commit's ssh signature is malformed: {0}")]
    Malformed(String),
    #[error(
        "the commit is signed with a key of type `{algorithm}`, and only ssh-ed25519 keys are supported"
    )]
    Unsupported { algorithm: String },
    #[error("the signature is for namespace `{namespace}`, not `git`")]
    WrongNamespace { namespace: String },
    #[error("the signature does not match the commit")]
    BadSignature,
    #[error("key {fingerprint} is not in the allowed signers")]
    UnknownKey { fingerprint: String },
    #[error("key {fingerprint} may not sign this commit: {reason}")]
    NotAllowed { fingerprint: String, reason: String },
    #[error("reading the commit to verify")]
    Git(#[from] Error),
}

/// Checks the signature of commit `sha` of the repository that holds `repository_path`
/// against `signers`, at the commit's committer time.
///
/// `sha` is anything `git rev-parse` understands. Only the `gpgsig` header is read (a
/// repository of SHA-1 object names).
///
/// # Errors
/// A [`Refusal`] says why the commit is not accepted: no signature, not an SSH signature, a
/// broken one, a key no line names, or a line that does not allow the key for `git` at that
/// time. The signature is checked before the allowed signers, as `ssh-keygen -Y verify` does,
/// so a tampered commit is [`Refusal::BadSignature`] whoever signed it.
pub fn verify_commit(
    repository_path: &Path,
    sha: &str,
    signers: &AllowedSigners,
) -> Result<Signer, Refusal> {
    let repository = commit::open(repository_path)?;
    let commit = commit::find_commit(&repository, sha)?;
    let (signature, signed_data) = match repository.extract_signature(&commit.id(), None) {
        Ok(pair) => pair,
        Err(error) if error.code() == ErrorCode::NotFound => return Err(Refusal::Unsigned),
        Err(source) => {
            return Err(Refusal::Git(Error::Git {
                what: format!("the signature of commit {}", commit.id()),
                source,
            }));
        }
    };
    let signature = parse_signature(&signature)?;
    let key = PublicKey::from(signature.public_key().clone());
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    if !key.key_data().is_ed25519() {
        return Err(Refusal::Unsupported {
            algorithm: key.algorithm().as_str().to_string(),
        });
    }
    match key.verify(NAMESPACE, &signed_data, &signature) {
        Ok(()) => {}
        Err(ssh_key::Error::Namespace) => {
            return Err(Refusal::WrongNamespace {
                namespace: signature.namespace().to_string(),
            });
        }
        Err(_) => return Err(Refusal::BadSignature),
    }
    let time = commit::commit_time(&commit)?;
    let email = String::from_utf8_lossy(commit.committer().email_bytes()).into_owned();
    signers.allow(&key, time, &email, fingerprint)
}

impl AllowedSigners {
    /// Parses the text of an allowed-signers file.
    ///
    /// # Errors
    /// The first line that is not a valid allowed-signers line, by its number (from 1): bad
    /// quoting, an unknown or repeated option, a bad timestamp, a key that does not decode,
    /// or `cert-authority`, which is not supported.
    pub fn parse(text: &str) -> Result<AllowedSigners, String> {
        let mut lines = Vec::new();
        for (index, text) in text.lines().enumerate() {
            let number = index + 1;
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let line =
                Line::parse(number, text).map_err(|error| format!("line {number}: {error}"))?;
            lines.push(line);
        }
        Ok(AllowedSigners { lines })
    }

    /// The number of keys the file allows (lines other than comments and blank ones).
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether the file allows no key at all.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The signer behind the first line of `key` that allows it for `git` at `time`, or why
    /// none does (the reason of the first line of the key).
    fn allow(
        &self,
        key: &PublicKey,
        time: DateTime<Utc>,
        email: &str,
        fingerprint: String,
    ) -> Result<Signer, Refusal> {
        let mut first_reason = None;
        for line in self
            .lines
            .iter()
            .filter(|line| line.key.key_data() == key.key_data())
        {
            match line.refusal(time) {
                None => {
                    return Ok(Signer {
                        principal: line.principal(email),
                        fingerprint,
                    });
                }
                Some(reason) => {
                    first_reason.get_or_insert(reason);
                }
            }
        }
        match first_reason {
            Some(reason) => Err(Refusal::NotAllowed {
                fingerprint,
                reason,
            }),
            None => Err(Refusal::UnknownKey { fingerprint }),
        }
    }
}

/// One line of an allowed-signers file.
#[derive(Clone, Debug)]
struct Line {
    number: usize,
    /// The principals as written: a comma-separated pattern list.
    principals: String,
    /// The `namespaces` option: a comma-separated pattern list.
    namespaces: Option<String>,
    valid_after: Option<DateTime<Utc>>,
    valid_before: Option<DateTime<Utc>>,
    key: PublicKey,
}

impl Line {
    fn parse(number: usize, text: &str) -> Result<Line, String> {
        let (principals, rest) = split_principals(text)?;
        let rest = rest.trim_start();
        let mut options = Options::default();
        // As ssh-keygen does: the field after the principals is the key if it reads as one,
        // else the options.
        let key = match read_key(rest) {
            Ok(key) => key,
            Err(error) => {
                let first_word = rest.split([' ', '\t']).next().unwrap_or_default();
                let is_key_type = Algorithm::new(first_word)
                    .is_ok_and(|algorithm| !matches!(algorithm, Algorithm::Other(_)));
                if is_key_type {
                    return Err(format!("reading the public key: {error}"));
                }
                let after_options = parse_options(rest, &mut options)?;
                read_key(after_options.trim_start())
                    .map_err(|error| format!("reading the public key: {error}"))?
            }
        };
        // ssh-keygen refuses such a line rather than let it allow nothing.
        if let (Some(after), Some(before)) = (options.valid_after, options.valid_before)
            && before <= after
        {
            return Err("`valid-before` is not after `valid-after`".to_string());
        }
        Ok(Line {
            number,
            principals: principals.to_string(),
            namespaces: options.namespaces,
            valid_after: options.valid_after,
            valid_before: options.valid_before,
            key,
        })
    }

    /// Why this line does not let its key sign a commit made at `time`, if it does not.
    fn refusal(&self, time: DateTime<Utc>) -> Option<String> {
        let number = self.number;
        if let Some(namespaces) = &self.namespaces
            && !matches_pattern_list(NAMESPACE, namespaces)
        {
            return Some(format!(
                "line {number} allows it for namespaces `{namespaces}` only, not `git`"
            ));
        }
        if let Some(after) = self.valid_after
            && time < after
        {
            return Some(format!(
                "line {number} makes it valid from {after} only, and the commit was made at {time}"
            ));
        }
        if let Some(before) = self.valid_before
            && time > before
        {
            return Some(format!(
                "line {number} makes it valid until {before} only, and the commit was made at {time}"
            ));
        }
        None
    }

    /// The principal a signature by this line's key is reported as (see [`Signer`]).
    fn principal(&self, email: &str) -> String {
        let first = self
            .principals
            .split(',')
            .find(|pattern| !pattern.starts_with('!'))
            .unwrap_or(&self.principals);
        if first.contains(['*', '?']) && matches_pattern_list(email, &self.principals) {
            return email.to_string();
        }
        first.to_string()
    }
}

#[derive(Default)]
struct Options {
    namespaces: Option<String>,
    valid_after: Option<DateTime<Utc>>,
    valid_before: Option<DateTime<Utc>>,
}

/// The principals field (unquoted, or in double quotes) and the rest of the line.
fn split_principals(text: &str) -> Result<(&str, &str), String> {
    if let Some(quoted) = text.strip_prefix('"') {
        let Some(end) = quoted.find('"') else {
            return Err("the quoted principals have no closing quote".to_string());
        };
        let rest = &quoted[end + 1..];
        if end == 0 || !rest.starts_with([' ', '\t']) {
            return Err("the quoted principals are empty or not followed by a blank".to_string());
        }
        return Ok((&quoted[..end], rest));
    }
    match text.find([' ', '\t']) {
        Some(end) => Ok((&text[..end], &text[end..])),
        None => Err("a line needs principals, a key type and a key".to_string()),
    }
}

/// A public key from `keytype base64 [comment]`, the comment ignored.
fn read_key(text: &str) -> Result<PublicKey, String> {
    let mut words = text.split_ascii_whitespace();
    let (Some(keytype), Some(base64)) = (words.next(), words.next()) else {
        return Err("a key type and a base64 key are missing".to_string());
    };
    PublicKey::from_openssh(&format!("{keytype} {base64}"))
        .map_err(|error| format!("`{keytype}` key: {error}"))
}

/// Parses the options field at the start of `text` into `options` and returns the text
/// after it: comma-separated, keywords in any case, values in double quotes (`\"` escapes a
/// quote), no blanks outside quotes.
fn parse_options<'t>(text: &'t str, options: &mut Options) -> Result<&'t str, String> {
    let mut rest = text;
    loop {
        let keyword_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(rest.len());
        let keyword = rest[..keyword_end].to_ascii_lowercase();
        rest = &rest[keyword_end..];
        let value = match rest.strip_prefix('=') {
            Some(quoted) => {
                let (value, after) = dequote(quoted)
                    .ok_or_else(|| format!("the value of `{keyword}` must be in double quotes"))?;
                rest = after;
                Some(value)
            }
            None => None,
        };
        match (keyword.as_str(), value) {
            ("cert-authority", None) => {
                return Err("`cert-authority`: certificates are not supported".to_string());
            }
            ("namespaces", Some(value)) => set_once(&mut options.namespaces, value, &keyword)?,
            ("valid-after", Some(value)) => {
                let time = parse_timestamp(&value)?;
                set_once(&mut options.valid_after, time, &keyword)?;
            }
            ("valid-before", Some(value)) => {
                let time = parse_timestamp(&value)?;
                set_once(&mut options.valid_before, time, &keyword)?;
            }
            ("namespaces" | "valid-after" | "valid-before", None) => {
                return Err(format!("option `{keyword}` needs a value"));
            }
            ("", _) => return Err("expected an option or a key type".to_string()),
            (_, _) => return Err(format!("unknown option `{keyword}`")),
        }
        match rest.chars().next() {
            Some(',') => rest = &rest[1..],
            Some(' ' | '\t') => return Ok(rest),
            None => return Err("a key type and a base64 key are missing".to_string()),
            Some(other) => return Err(format!("unexpected `{other}` in the options")),
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, keyword: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("option `{keyword}` is given twice"));
    }
    *slot = Some(value);
    Ok(())
}

/// The value of a double-quoted string at the start of `text` and the text after it.
fn dequote(text: &str) -> Option<(String, &str)> {
    let quoted = text.strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some((value, &quoted[index + 1..])),
            '\\' if quoted[index + 1..].starts_with('"') => {
                chars.next();
                value.push('"');
            }
            _ => value.push(c),
        }
    }
    None
}

/// A `valid-after`/`valid-before` timestamp: `YYYYMMDD`, `YYYYMMDDHHMM` or
/// `YYYYMMDDHHMMSS`, in UTC with a final `Z`, else in the local time zone (as ssh-keygen).
fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    let bad =
        || format!("`{text}` is not a timestamp of the form YYYYMMDD[Z] or YYYYMMDDHHMM[SS][Z]");
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(digits) => (digits, true),
        None => (text, false),
    };
    if !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<u32, String> {
        digits
            .get(range)
            .and_then(|part| part.parse().ok())
            .ok_or_else(bad)
    };
    let (hour, minute, second) = match digits.len() {
        8 => (0, 0, 0),
        12 => (number(8..10)?, number(10..12)?, 0),
        14 => (number(8..10)?, number(10..12)?, number(12..14)?),
        _ => return Err(bad()),
    };
    let year = i32::try_from(number(0..4)?).map_err(|_| bad())?;
    let naive: NaiveDateTime = NaiveDate::from_ymd_opt(year, number(4..6)?, number(6..8)?)
        .and_then(|date| date.and_hms_opt(hour, minute, second))
        .ok_or_else(bad)?;
    if utc {
        return Ok(naive.and_utc());
    }
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|time| time.with_timezone(&Utc))
        .ok_or_else(|| format!("`{text}` does not exist in the local time zone"))
}

/// Whether `text` matches the comma-separated pattern list `patterns` as OpenSSH's
/// `match_pattern_list` decides: some pattern matches it and no negated (`!`) one does.
fn matches_pattern_list(text: &str, patterns: &str) -> bool {
    let mut positive = false;
    for pattern in patterns.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(pattern) => (true, pattern),
            None => (false, pattern),
        };
        if matches_pattern(text.as_bytes(), pattern.as_bytes()) {
            if negated {
                return false;
            }
            positive = true;
        }
    }
    positive
}

/// Whether `text` matches `pattern`, where `*` stands for any bytes and `?` for one.
fn matches_pattern(text: &[u8], pattern: &[u8]) -> bool {
    // Greedy matching that goes back to the last `*` on a mismatch: linear in practice and
    // never exponential, unlike the naive recursion.
    let (mut t, mut p) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                last_star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                t += 1;
                p += 1;
            }
            _ => match last_star {
                Some((star, matched)) => {
                    p = star + 1;
                    t = matched + 1;
                    last_star = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The sshsig in an extracted signature, or why it is not one.
fn parse_signature(signature: &[u8]) -> Result<SshSig, Refusal> {
    let text = String::from_utf8_lossy(signature);
    let text = text.trim_start();
    if text.starts_with("-----BEGIN SSH SIGNATURE-----") {
        return SshSig::from_pem(text.as_bytes())
            .map_err(|error| Refusal::Malformed(error.to_string()));
    }
    if text.starts_with("-----BEGIN PGP SIGNATURE-----")
        || text.starts_with("-----BEGIN PGP MESSAGE-----")
    {
        return Err(Refusal::NotSsh {
            kind: "an OpenPGP signature",
        });
    }
    if text.starts_with("-----BEGIN SIGNED MESSAGE-----") {
        return Err(Refusal::NotSsh {
            kind: "an X.509 signature",
        });
    }
    let start: String = text.chars().take(30).collect();
    Err(Refusal::Malformed(format!(
        "a signature of no kind git knows, starting `{}`",
        start.escape_debug()
    )))
}

#[cfg(test)]
mod tests {
    use super::{AllowedSigners, matches_pattern_list, parse_timestamp};

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAqbDc7cS3JfWxkLl9pVFQYTn9onr0U/XJKuyu9SPYGZ";

    /// The outcome of parsing `text`, as the error or the number of lines allowed.
    fn parse(text: &str) -> Result<usize, String> {
        AllowedSigners::parse(text).map(|signers| signers.len())
    }

    #[test]
    fn lines_with_and_without_options_parse() {
        let text = format!(
            "# a comment\n\nalice@example.com {KEY} alice's laptop\n\
             *@example.com,!mallory@example.com NAMESPACES=\"git,file\",valid-after=\"20240101\",valid-before=\"20300101120000Z\" {KEY}\n\
             \"bob@example.com\"\t{KEY}\n"
        );
        assert_eq!(parse(&text), Ok(3));
    }

    #[test]
    fn errors_name_the_line() {
        let check = |text: &str, expected: &str| {
            let error = parse(text).expect_err("the line is refused");
            assert!(
                error.contains(expected),
                "{error:?} should say {expected:?}"
            );
        };
        check(
            &format!("\nalice@example.com cert-authority {KEY}"),
            "line 2: `cert-authority`: certificates are not supported",
        );
        check(
            &format!("a@example.com nonsense=\"x\" {KEY}"),
            "line 1: unknown option `nonsense`",
        );
        check(
            &format!("a@example.com valid-after=20240101 {KEY}"),
            "must be in double quotes",
        );
        check(
            &format!("a@example.com valid-after=\"2024\" {KEY}"),
            "is not a timestamp",
        );
        check(
            &format!("a@example.com valid-after=\"20241301\" {KEY}"),
            "is not a timestamp",
        );
        check(
            &format!("a@example.com namespaces=\"git\",namespaces=\"file\" {KEY}"),
            "given twice",
        );
        check(
            "a@example.com ssh-ed25519 AAAAnotakey",
            "line 1: reading the public key",
        );
        check("a@example.com", "line 1: a line needs principals");
        check(&format!("\"a@example.com {KEY}"), "no closing quote");
    }

    #[test]
    fn timestamps_are_utc_with_z() {
        let check = |text: &str, expected: &str| {
            let time = parse_timestamp(text).expect("a timestamp");
            assert_eq!(time.to_rfc3339(), expected);
        };
        check("20240102Z", "2024-01-02T00:00:00+00:00");
        check("202401021304Z", "2024-01-02T13:04:00+00:00");
        check("20240102130405Z", "2024-01-02T13:04:05+00:00");
        assert!(parse_timestamp("2024010213Z").is_err());
    }

    #[test]
    fn pattern_lists_match_as_openssh_does() {
        assert!(matches_pattern_list(
            "alice@example.com",
            "alice@example.com"
        ));
        assert!(matches_pattern_list(
            "alice@example.com",
            "bob@example.com,*@example.com"
        ));
        assert!(matches_pattern_list("alice@example.com", "?lice@*.com"));
        assert!(!matches_pattern_list("alice@example.org", "*@example.com"));
        assert!(!matches_pattern_list(
            "mallory@example.com",
            "*@example.com,!mallory@*"
        ));
        assert!(!matches_pattern_list("mallory@example.com", "!mallory@*"));
        assert!(!matches_pattern_list(
            "Alice@example.com",
            "alice@example.com"
        ));
        assert!(matches_pattern_list("git", "file,g*t"));
        assert!(matches_pattern_list("a", "**a*"));
    }
}
