//! What the daemon needs to know about commits beyond their files: who made a commit and who
//! approved it ([`commit_info`]), which commit a branch is at ([`resolve_branch`]), and the
//! commits a branch moved through ([`first_parent_chain`]).
//!
//! Approvals are the `Approved-by:` and `Reviewed-by:` trailers of the commit message, found
//! the way `git interpret-trailers` finds them (see [`trailers`]). This module reads them; it
//! does not decide whether they are enough, and it does not check signatures (that is
//! `source::signature`).

use std::path::Path;

use chrono::{DateTime, Utc};
use git2::{BranchType, Commit, Repository, Sort};

use crate::source::Error;

/// A name and an email as git records them in a commit's author or committer line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub email: String,
}

/// A commit's metadata: its authors, its time, its title and its approval trailers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// The full hash of the commit.
    pub sha: String,
    pub author: Person,
    pub committer: Person,
    /// The committer time (the time `ssh-keygen` checks a signing key's validity at).
    pub time: DateTime<Utc>,
    /// The first paragraph of the message, its lines joined with spaces.
    pub summary: String,
    /// The values of the `Approved-by:` trailers, in message order.
    pub approved_by: Vec<String>,
    /// The values of the `Reviewed-by:` trailers, in message order.
    pub reviewed_by: Vec<String>,
}

/// The most commits [`first_parent_chain`] returns.
pub const MAX_CHAIN: usize = 1000;

/// The metadata of commit `rev` of the repository that holds the folder `path`.
///
/// `rev` is anything `git rev-parse` understands. Trailers with an empty value are left out.
/// Names, emails and messages that are not UTF-8 are read lossily.
///
/// # Errors
/// When no repository holds `path`, `rev` names no commit, or the commit's time is out of
/// the range of dates.
pub fn commit_info(path: &Path, rev: &str) -> Result<CommitInfo, Error> {
    let repository = open(path)?;
    let commit = find_commit(&repository, rev)?;
    let sha = commit.id().to_string();
    let time = commit_time(&commit)?;
    let person = |signature: git2::Signature<'_>| Person {
        name: String::from_utf8_lossy(signature.name_bytes()).into_owned(),
        email: String::from_utf8_lossy(signature.email_bytes()).into_owned(),
    };
    let message = String::from_utf8_lossy(commit.message_bytes());
    let mut approved_by = Vec::new();
    let mut reviewed_by = Vec::new();
    for trailer in trailers(&message) {
        if trailer.value.is_empty() {
            continue;
        }
        if trailer.key.eq_ignore_ascii_case("approved-by") {
            approved_by.push(trailer.value);
        } else if trailer.key.eq_ignore_ascii_case("reviewed-by") {
            reviewed_by.push(trailer.value);
        }
    }
    Ok(CommitInfo {
        sha,
        author: person(commit.author()),
        committer: person(commit.committer()),
        time,
        summary: String::from_utf8_lossy(commit.summary_bytes().unwrap_or_default()).into_owned(),
        approved_by,
        reviewed_by,
    })
}

/// The local branch `branch` of the repository that holds `path`, or the branch `HEAD`
/// points at when `branch` is `None`, as its short name and the full hash of its head
/// commit.
///
/// # Errors
/// When no repository holds `path`, there is no such local branch, `HEAD` is detached (the
/// message says to pass `--branch`), or the branch has no commit yet.
pub fn resolve_branch(path: &Path, branch: Option<&str>) -> Result<(String, String), Error> {
    let repository = open(path)?;
    let reference = match branch {
        Some(name) => repository
            .find_branch(name, BranchType::Local)
            .map_err(|source| Error::NoBranch {
                branch: name.to_string(),
                source,
            })?
            .into_reference(),
        None => {
            let detached = repository.head_detached().map_err(|source| Error::Git {
                what: "HEAD".to_string(),
                source,
            })?;
            if detached {
                return Err(Error::DetachedHead {
                    path: path.to_path_buf(),
                });
            }
            repository.head().map_err(|source| Error::Git {
                what: "the branch HEAD points at".to_string(),
                source,
            })?
        }
    };
    let name = String::from_utf8_lossy(reference.shorthand_bytes()).into_owned();
    let commit = reference.peel_to_commit().map_err(|source| Error::Git {
        what: format!("the head commit of branch `{name}`"),
        source,
    })?;
    Ok((name, commit.id().to_string()))
}

/// The commits from `to_sha` back along first parents until `from_sha_exclusive`, oldest
/// first, as full hashes.
///
/// The walk stops at the first commit that `from_sha_exclusive` can reach, so a base on a
/// merged side branch ends it too. Without a base, it goes back to the first commit. At most
/// [`MAX_CHAIN`] commits are returned: the newest ones, ending with `to_sha`. When the base
/// is not an ancestor of `to_sha` (history was rewritten), the chain is `[to_sha]` alone; when
/// it is `to_sha` itself, the chain is empty.
///
/// # Errors
/// When no repository holds `path`, or either hash names no commit.
pub fn first_parent_chain(
    path: &Path,
    from_sha_exclusive: Option<&str>,
    to_sha: &str,
) -> Result<Vec<String>, Error> {
    let repository = open(path)?;
    let to = find_commit(&repository, to_sha)?.id();
    let walk_error = |source: git2::Error| Error::Git {
        what: format!("the first parents of {to}"),
        source,
    };
    let mut walk = repository.revwalk().map_err(walk_error)?;
    walk.set_sorting(Sort::TOPOLOGICAL).map_err(walk_error)?;
    walk.simplify_first_parent().map_err(walk_error)?;
    walk.push(to).map_err(walk_error)?;
    if let Some(from_sha) = from_sha_exclusive {
        let from = find_commit(&repository, from_sha)?.id();
        if from == to {
            return Ok(Vec::new());
        }
        let is_ancestor = repository
            .graph_descendant_of(to, from)
            .map_err(walk_error)?;
        if !is_ancestor {
            return Ok(vec![to.to_string()]);
        }
        walk.hide(from).map_err(walk_error)?;
    }
    let mut chain = Vec::new();
    for id in walk.take(MAX_CHAIN) {
        chain.push(id.map_err(walk_error)?.to_string());
    }
    chain.reverse();
    Ok(chain)
}

/// Opens the repository that holds `path`.
pub(crate) fn open(path: &Path) -> Result<Repository, Error> {
    Repository::discover(path).map_err(|source| Error::NoRepository {
        path: path.to_path_buf(),
        source,
    })
}

/// The commit `rev` names.
pub(crate) fn find_commit<'r>(repository: &'r Repository, rev: &str) -> Result<Commit<'r>, Error> {
    repository
        .revparse_single(rev)
        .and_then(|object| object.peel_to_commit())
        .map_err(|source| Error::Revision {
            rev: rev.to_string(),
            source,
        })
}

/// The committer time of `commit`.
pub(crate) fn commit_time(commit: &Commit<'_>) -> Result<DateTime<Utc>, Error> {
    let seconds = commit.committer().when().seconds();
    DateTime::from_timestamp(seconds, 0).ok_or_else(|| Error::TimeOutOfRange {
        commit: commit.id().to_string(),
        seconds,
    })
}

/// One `key: value` line of a message's trailer block, its continuation lines unfolded.
#[derive(Debug, PartialEq, Eq)]
struct Trailer {
    key: String,
    value: String,
}

/// Lines that make a last paragraph with a quarter of trailer lines a trailer block, as
/// git's own `trailer.c` counts them.
const GIT_GENERATED_PREFIXES: &[&str] = &["Signed-off-by: ", "(cherry picked from commit "];

/// The trailers of a commit message, with the semantics of `git interpret-trailers --parse`
/// on a commit (no `---` divider, no configured trailer keys).
///
/// The trailer block is the last paragraph, and never the title (the first paragraph). It is
/// one when all its lines are trailers (`token: value`, the token made of ASCII letters,
/// digits and `-`, optionally followed by blanks before the colon) or continuation lines (a
/// line starting with a blank continues the trailer above), or when at least a quarter of its
/// lines are and one is git-generated (`Signed-off-by: `, `(cherry picked from commit `).
/// Lines starting with `#` are comments and skipped. Keys keep their spelling; values are
/// trimmed.
fn trailers(message: &str) -> Vec<Trailer> {
    let lines: Vec<&str> = message.lines().collect();
    let Some(start) = trailer_block_start(&lines) else {
        return Vec::new();
    };
    let mut trailers: Vec<Trailer> = Vec::new();
    let mut continues_trailer = false;
    for line in &lines[start..] {
        if line.starts_with('#') {
            continue;
        }
        if continues_trailer && starts_with_blank(line) {
            if let Some(last) = trailers.last_mut() {
                last.value = format!("{} {}", last.value, line.trim()).trim().to_string();
            }
            continue;
        }
        continues_trailer = false;
        if let Some(separator) = separator(line).filter(|&position| position >= 1) {
            trailers.push(Trailer {
                key: line[..separator].trim_end().to_string(),
                value: line[separator + 1..].trim().to_string(),
            });
            continues_trailer = true;
        }
    }
    trailers
}

/// The index of the first line of the trailer block, scanning the message backwards as
/// git's `find_trailer_block_start` does.
fn trailer_block_start(lines: &[&str]) -> Option<usize> {
    // The title ends at the first blank line; a message without one has no trailers.
    let end_of_title = lines
        .iter()
        .position(|line| !line.starts_with('#') && is_blank(line))?;
    let mut trailer_lines = 0usize;
    let mut non_trailer_lines = 0usize;
    let mut possible_continuation_lines = 0usize;
    let mut recognized_prefix = false;
    let mut only_blank_so_far = true;
    for index in (end_of_title..lines.len()).rev() {
        let line = lines[index];
        if line.starts_with('#') {
            non_trailer_lines += possible_continuation_lines;
            possible_continuation_lines = 0;
            continue;
        }
        if is_blank(line) {
            if only_blank_so_far {
                continue;
            }
            non_trailer_lines += possible_continuation_lines;
            let is_block = (recognized_prefix && trailer_lines * 3 >= non_trailer_lines)
                || (trailer_lines > 0 && non_trailer_lines == 0);
            return is_block.then_some(index + 1);
        }
        only_blank_so_far = false;
        if GIT_GENERATED_PREFIXES
            .iter()
            .any(|prefix| line.starts_with(prefix))
        {
            trailer_lines += 1;
            possible_continuation_lines = 0;
            recognized_prefix = true;
        } else if separator(line).is_some_and(|position| position >= 1) && !starts_with_blank(line)
        {
            trailer_lines += 1;
            possible_continuation_lines = 0;
        } else if starts_with_blank(line) {
            possible_continuation_lines += 1;
        } else {
            non_trailer_lines += 1 + possible_continuation_lines;
            possible_continuation_lines = 0;
        }
    }
    None
}

/// The byte index of the `:` ending a trailer token at the start of `line`: git's
/// `find_separator`, which allows letters, digits and `-`, then blanks, before the colon.
fn separator(line: &str) -> Option<usize> {
    let mut blank_found = false;
    for (index, byte) in line.bytes().enumerate() {
        if byte == b':' {
            return Some(index);
        }
        if !blank_found && (byte.is_ascii_alphanumeric() || byte == b'-') {
            continue;
        }
        if index > 0 && (byte == b' ' || byte == b'\t') {
            blank_found = true;
            continue;
        }
        return None;
    }
    None
}

fn is_blank(line: &str) -> bool {
    line.bytes().all(|byte| byte.is_ascii_whitespace())
}

fn starts_with_blank(line: &str) -> bool {
    line.bytes()
        .next()
        .is_some_and(|byte| byte.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::trailers;

    /// The `(key, value)` pairs of the trailers of `message`.
    fn check(message: &str, expected: &[(&str, &str)]) {
        let found: Vec<(String, String)> = trailers(message)
            .into_iter()
            .map(|trailer| (trailer.key, trailer.value))
            .collect();
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        assert_eq!(found, expected, "trailers of {message:?}");
    }

    #[test]
    fn the_last_paragraph_of_trailers_is_the_block() {
        check(
            "Upgrade acme\n\nBecause.\n\nApproved-by: Alice <alice@example.com>\nReviewed-by: Bob\n",
            &[
                ("Approved-by", "Alice <alice@example.com>"),
                ("Reviewed-by", "Bob"),
            ],
        );
    }

    #[test]
    fn keys_keep_their_spelling_values_are_trimmed_and_repeat() {
        check(
            "Title\n\napproved-BY:   Alice  \nApproved-by : Carol\nApproved-by:\tDan\n",
            &[
                ("approved-BY", "Alice"),
                ("Approved-by", "Carol"),
                ("Approved-by", "Dan"),
            ],
        );
    }

    #[test]
    fn a_trailer_line_outside_the_last_paragraph_does_not_count() {
        check("Title\n\nApproved-by: Mallory\n\nJust prose.\n", &[]);
        check("Title\n\nApproved-by: Mallory\nand then some prose\n", &[]);
    }

    #[test]
    fn the_title_is_never_a_trailer_block() {
        check("Approved-by: Mallory\n", &[]);
        check("Title\nApproved-by: Mallory\n", &[]);
        check("Approved-by: Mallory\n\n", &[]);
    }

    #[test]
    fn a_git_generated_line_lets_a_quarter_of_trailers_make_a_block() {
        check(
            "Title\n\nApproved-by: Alice\nSigned-off-by: Bob <bob@example.com>\nsome prose\n",
            &[
                ("Approved-by", "Alice"),
                ("Signed-off-by", "Bob <bob@example.com>"),
            ],
        );
        // One trailer line against four of prose is less than a quarter.
        check("Title\n\nSigned-off-by: Bob\none\ntwo\nthree\nfour\n", &[]);
    }

    #[test]
    fn continuation_lines_are_unfolded() {
        check(
            "Title\n\nApproved-by: Alice\n  Smith\nReviewed-by:\n Bob\n",
            &[("Approved-by", "Alice Smith"), ("Reviewed-by", "Bob")],
        );
    }

    #[test]
    fn blank_lines_at_the_end_and_comments_are_skipped() {
        check(
            "Title\n\nApproved-by: Alice\n# a comment\n\n\n",
            &[("Approved-by", "Alice")],
        );
    }

    #[test]
    fn a_token_with_a_space_inside_is_prose() {
        check("Title\n\nApproved by: Mallory\n", &[]);
        check("Title\n\n: no token\n", &[]);
    }

    #[test]
    fn windows_line_endings_are_lines_too() {
        check(
            "Title\r\n\r\nApproved-by: Alice\r\n",
            &[("Approved-by", "Alice")],
        );
    }
}
