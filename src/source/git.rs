//! Fleet files from a commit of a git repository, read from the object database.

use std::path::Path;

use git2::{ObjectType, Oid, Repository, Tree};

use crate::{
    load::{Content, Input, Kind, Limits},
    source::{Error, content_id},
    validate::{Cache, CachedContent, CachedInput},
};

/// The fleet files of one commit: [`Input`]s from [`read_commit`], [`CachedInput`]s from
/// [`read_commit_cached`].
#[derive(Debug)]
pub struct Snapshot<I = Input> {
    /// The full hash of the commit read.
    pub commit: String,
    pub inputs: Vec<I>,
}

/// Reads the fleet folder `path` as it is in commit `rev` of the repository that holds it.
///
/// `path` is a folder in a work tree (`fleet`, `.`); `rev` is anything `git rev-parse`
/// understands (`HEAD`, `origin/main`, a hash). Nothing is checked out.
///
/// # Errors
/// When no repository holds `path`, `rev` names no commit, or the commit has no such folder.
pub fn read_commit(path: &Path, rev: &str, limits: &Limits) -> Result<Snapshot, Error> {
    let snapshot = read_commit_cached(path, rev, limits, &Cache::default())?;
    Ok(Snapshot {
        commit: snapshot.commit,
        inputs: snapshot
            .inputs
            .into_iter()
            .map(CachedInput::into_input)
            .collect(),
    })
}

/// Reads the fleet folder `path` as it is in commit `rev`, as [`read_commit`] does, but
/// leaves unread the blobs whose bytes `cache` holds: those come back as
/// [`CachedContent::Known`], the others as [`CachedContent::Read`] with their blob id.
/// Every fleet file's path is listed either way; hand the snapshot's inputs to
/// [`crate::validate::check_cached`] with the same cache.
///
/// # Errors
/// As [`read_commit`].
pub fn read_commit_cached(
    path: &Path,
    rev: &str,
    limits: &Limits,
    cache: &Cache,
) -> Result<Snapshot<CachedInput>, Error> {
    let repository = Repository::discover(path).map_err(|source| Error::NoRepository {
        path: path.to_path_buf(),
        source,
    })?;
    let folder = folder_in_repository(&repository, path)?;
    let commit = repository
        .revparse_single(rev)
        .and_then(|object| object.peel_to_commit())
        .map_err(|source| Error::Revision {
            rev: rev.to_string(),
            source,
        })?;
    let commit_id = commit.id().to_string();
    let git_error = |what: &str| {
        let what = what.to_string();
        move |source| Error::Git { what, source }
    };
    let mut tree = commit.tree().map_err(git_error("the commit's tree"))?;
    if !folder.is_empty() {
        let entry = tree
            .get_path(Path::new(&folder))
            .map_err(|_| Error::NoFolder {
                commit: commit_id.clone(),
                path: folder.clone(),
            })?;
        tree = entry
            .to_object(&repository)
            .and_then(|object| object.peel_to_tree())
            .map_err(|_| Error::NoFolder {
                commit: commit_id.clone(),
                path: folder.clone(),
            })?;
    }
    let mut walker = Walker {
        repository: &repository,
        entries: Vec::new(),
    };
    walker.walk(&tree, "")?;
    let inputs = read_blobs(&repository, walker.entries, limits, cache)?;
    Ok(Snapshot {
        commit: commit_id,
        inputs,
    })
}

/// The path of the fleet folder relative to the repository's work tree, `/`-separated.
fn folder_in_repository(repository: &Repository, path: &Path) -> Result<String, Error> {
    let Some(workdir) = repository.workdir() else {
        // A bare repository has no work tree; the fleet is at the top of its trees.
        return Ok(String::new());
    };
    let canonical = |path: &Path| path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let (workdir, path) = (canonical(workdir), canonical(path));
    let relative = path
        .strip_prefix(&workdir)
        .map_err(|_| Error::OutsideWorkTree {
            path: path.clone(),
            workdir: workdir.clone(),
        })?;
    let parts: Vec<String> = relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    Ok(parts.join("/"))
}

/// A fleet file found in the tree: its blob still to be read, or what stands there instead.
enum Found {
    Blob(Oid),
    Other(Content),
}

struct Walker<'r> {
    repository: &'r Repository,
    entries: Vec<(String, Found)>,
}

/// The file mode git gives symbolic links.
const SYMLINK_MODE: i32 = 0o120000;

impl Walker<'_> {
    fn walk(&mut self, tree: &Tree<'_>, prefix: &str) -> Result<(), Error> {
        for entry in tree.iter() {
            let name = String::from_utf8_lossy(entry.name_bytes());
            let path = format!("{prefix}{name}");
            let is_fleet_file = Kind::of_path(&path).is_some();
            let kind = entry.kind();
            if kind == Some(ObjectType::Tree) && !is_fleet_file {
                if Kind::is_fleet_folder(&path) {
                    let subtree =
                        self.repository
                            .find_tree(entry.id())
                            .map_err(|source| Error::Git {
                                what: path.clone(),
                                source,
                            })?;
                    self.walk(&subtree, &format!("{path}/"))?;
                }
                continue;
            }
            if !is_fleet_file {
                continue;
            }
            let found = match kind {
                Some(ObjectType::Blob) if entry.filemode() == SYMLINK_MODE => Found::Other(
                    Content::NotAFile("a symbolic link (links are not followed)"),
                ),
                Some(ObjectType::Blob) => Found::Blob(entry.id()),
                Some(ObjectType::Tree) => Found::Other(Content::NotAFile("a directory")),
                _ => Found::Other(Content::NotAFile("a submodule")),
            };
            self.entries.push((path, found));
        }
        Ok(())
    }
}

/// Blobs per thread below which a second thread costs more than it saves.
const BLOBS_PER_THREAD: usize = 1024;

/// Reads the blobs of the found files that the cache does not hold, on several threads when
/// there are many (each opens the repository itself: a `Repository` is not shared between
/// threads).
fn read_blobs(
    repository: &Repository,
    entries: Vec<(String, Found)>,
    limits: &Limits,
    cache: &Cache,
) -> Result<Vec<CachedInput>, Error> {
    let mut contents: Vec<Option<CachedContent>> = Vec::with_capacity(entries.len());
    let mut unread: Vec<(usize, &str, Oid)> = Vec::new();
    for (index, (path, found)) in entries.iter().enumerate() {
        let content = match found {
            Found::Blob(oid) => match cache.known(&content_id(*oid)) {
                // Only when the limit changed since the cache got the bytes.
                Some(known) if known.len() as u64 > limits.max_file_bytes => {
                    Some(CachedContent::Other(Content::TooLarge {
                        size: known.len() as u64,
                    }))
                }
                Some(known) => Some(CachedContent::Known(known)),
                None => {
                    unread.push((index, path, *oid));
                    None
                }
            },
            Found::Other(content) => Some(CachedContent::Other(content.clone())),
        };
        contents.push(content);
    }
    let path = repository.path();
    let results = crate::parallel::map_chunks(&unread, BLOBS_PER_THREAD, |chunk| {
        let repository = Repository::open(path).map_err(|source| Error::Git {
            what: "the repository".to_string(),
            source,
        })?;
        read_chunk(&repository, chunk, limits)
    });
    let mut read = unread.iter().map(|(index, _, _)| *index);
    for result in results {
        for content in result? {
            let index = read.next().expect("one content is read per unread blob");
            contents[index] = Some(content);
        }
    }
    Ok(entries
        .into_iter()
        .zip(contents)
        .map(|((path, _), content)| CachedInput {
            path,
            content: content.expect("every blob is either known or read"),
        })
        .collect())
}

fn read_chunk(
    repository: &Repository,
    blobs: &[(usize, &str, Oid)],
    limits: &Limits,
) -> Result<Vec<CachedContent>, Error> {
    let odb = repository.odb().map_err(|source| Error::Git {
        what: "the object database".to_string(),
        source,
    })?;
    let mut contents = Vec::with_capacity(blobs.len());
    for &(_, path, oid) in blobs {
        let object = odb.read(oid).map_err(|source| Error::Git {
            what: path.to_string(),
            source,
        })?;
        let size = object.len() as u64;
        contents.push(if size > limits.max_file_bytes {
            CachedContent::Other(Content::TooLarge { size })
        } else {
            CachedContent::Read {
                id: content_id(oid),
                bytes: object.data().to_vec(),
            }
        });
    }
    Ok(contents)
}
