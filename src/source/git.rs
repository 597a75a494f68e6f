//! Fleet files from a commit of a git repository, read from the object database.

use std::path::Path;

use git2::{ObjectType, Oid, Repository, Tree};

use crate::{
    load::{Content, Input, Kind, Limits},
    source::Error,
};

/// The fleet files of one commit.
#[derive(Debug)]
pub struct Snapshot {
    /// The full hash of the commit read.
    pub commit: String,
    pub inputs: Vec<Input>,
}

/// Reads the fleet folder `path` as it is in commit `rev` of the repository that holds it.
///
/// `path` is a folder in a work tree (`fleet`, `.`); `rev` is anything `git rev-parse`
/// understands (`HEAD`, `origin/main`, a hash). Nothing is checked out.
///
/// # Errors
/// When no repository holds `path`, `rev` names no commit, or the commit has no such folder.
pub fn read_commit(path: &Path, rev: &str, limits: &Limits) -> Result<Snapshot, Error> {
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
    let inputs = read_blobs(&repository, &walker.entries, limits)?;
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

/// Reads the blobs of the found files, on several threads when there are many (each opens
/// the repository itself: a `Repository` is not shared between threads).
fn read_blobs(
    repository: &Repository,
    entries: &[(String, Found)],
    limits: &Limits,
) -> Result<Vec<Input>, Error> {
    let path = repository.path();
    let results = crate::parallel::map_chunks(entries, BLOBS_PER_THREAD, |chunk| {
        let repository = Repository::open(path).map_err(|source| Error::Git {
            what: "the repository".to_string(),
            source,
        })?;
        read_chunk(&repository, chunk, limits)
    });
    let mut inputs = Vec::with_capacity(entries.len());
    for result in results {
        inputs.extend(result?);
    }
    Ok(inputs)
}

fn read_chunk(
    repository: &Repository,
    entries: &[(String, Found)],
    limits: &Limits,
) -> Result<Vec<Input>, Error> {
    let odb = repository.odb().map_err(|source| Error::Git {
        what: "the object database".to_string(),
        source,
    })?;
    let mut inputs = Vec::with_capacity(entries.len());
    for (path, found) in entries {
        let content = match found {
            Found::Blob(id) => {
                let object = odb.read(*id).map_err(|source| Error::Git {
                    what: path.clone(),
                    source,
                })?;
                let size = object.len() as u64;
                if size > limits.max_file_bytes {
                    Content::TooLarge { size }
                } else {
                    Content::Bytes(object.data().to_vec())
                }
            }
            Found::Other(content) => content.clone(),
        };
        inputs.push(Input {
            path: path.clone(),
            content,
        });
    }
    Ok(inputs)
}
