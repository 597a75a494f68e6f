//! Edge: where fleet files come from. A folder on disk, or a commit of a git repository read
//! with git2 without checking it out.
//!
//! Sources hand the core `(path, content)` pairs ([`Input`]) and nothing else: they read only
//! the files `load::Kind::of_path` accepts, never read past the size limit, and report
//! directories and links where files belong instead of following them. They do not parse.
//!
//! Beside the files, a commit's metadata and approval trailers ([`commit_info`]), the commits
//! a branch moved through ([`resolve_branch`], [`first_parent_chain`]), and whether an SSH
//! key the allowed signers name signed a commit ([`signature::verify_commit`]).
//!
//! For a `validate::Cache`, they also name each file's bytes by their git blob id:
//! [`read_commit_cached`] takes the id from the commit's tree and reads only the blobs the
//! cache does not hold, and [`identify`] computes the id of bytes read from a folder.

mod commit;
mod folder;
mod git;
pub mod signature;

use std::path::PathBuf;

use git2::{ObjectType, Oid};

use crate::{
    load::{Content, Input},
    validate::{CachedContent, CachedInput, ContentId},
};

pub use commit::{CommitInfo, MAX_CHAIN, Person, commit_info, first_parent_chain, resolve_branch};
pub use folder::read_folder;
pub use git::{Snapshot, read_commit, read_commit_cached};

/// Gives each input's bytes their git blob id, so files from a folder share a
/// `validate::Cache` with the same files of a commit. Inputs without bytes stay as they are.
///
/// The bytes are read already, so this saves no reading, only the parsing and decoding of
/// files the cache knows.
pub fn identify(inputs: Vec<Input>) -> Vec<CachedInput> {
    inputs
        .into_iter()
        .map(|input| {
            let content = match input.content {
                Content::Bytes(bytes) => match Oid::hash_object(ObjectType::Blob, &bytes) {
                    Ok(oid) => CachedContent::Read {
                        id: content_id(oid),
                        bytes,
                    },
                    // libgit2 fails to hash only when it cannot initialise; such a file is
                    // validated without the cache.
                    Err(_) => CachedContent::Other(Content::Bytes(bytes)),
                },
                other => CachedContent::Other(other),
            };
            CachedInput {
                path: input.path,
                content,
            }
        })
        .collect()
}

/// The cache's id of a git object id.
fn content_id(oid: Oid) -> ContentId {
    let bytes: [u8; 20] = oid
        .as_bytes()
        .try_into()
        .expect("git2 is built for SHA-1 object ids, 20 bytes");
    ContentId::from_bytes(bytes)
}

/// Why a source could not be read at all. Problems with single files are not errors; they
/// come back as [`crate::load::Content`] and become diagnostics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading fleet folder `{path}`")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading fleet file `{path}`")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no git repository holds `{path}`")]
    NoRepository {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("`{path}` is not inside the work tree of the git repository at `{workdir}`")]
    OutsideWorkTree { path: PathBuf, workdir: PathBuf },
    #[error("resolving `{rev}` to a commit")]
    Revision {
        rev: String,
        #[source]
        source: git2::Error,
    },
    #[error("commit {commit} has no folder `{path}`")]
    NoFolder { commit: String, path: String },
    #[error("no local branch `{branch}`")]
    NoBranch {
        branch: String,
        #[source]
        source: git2::Error,
    },
    #[error(
        "HEAD of the git repository holding `{path}` is detached; pass --branch to name the branch to follow"
    )]
    DetachedHead { path: PathBuf },
    #[error("commit {commit} has a time out of range ({seconds} seconds since 1970)")]
    TimeOutOfRange { commit: String, seconds: i64 },
    #[error("reading `{what}` from the git repository")]
    Git {
        what: String,
        #[source]
        source: git2::Error,
    },
}
