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
    let odb = repository.odb().map_err(git_error("the object database"))?;
    let mut reader = Reader {
        repository: &repository,
        odb: &odb,
        limits,
        inputs: Vec::new(),
    };
    reader.walk(&tree, "")?;
    Ok(Snapshot {
        commit: commit_id,
        inputs: reader.inputs,
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

struct Reader<'r> {
    repository: &'r Repository,
    odb: &'r git2::Odb<'r>,
    limits: &'r Limits,
    inputs: Vec<Input>,
}

/// The file mode git gives symbolic links.
const SYMLINK_MODE: i32 = 0o120000;

impl Reader<'_> {
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
            let content = match kind {
                Some(ObjectType::Blob) if entry.filemode() == SYMLINK_MODE => {
                    Content::NotAFile("a symbolic link (links are not followed)")
                }
                Some(ObjectType::Blob) => self.blob(entry.id(), &path)?,
                Some(ObjectType::Tree) => Content::NotAFile("a directory"),
                _ => Content::NotAFile("a submodule"),
            };
            self.inputs.push(Input { path, content });
        }
        Ok(())
    }

    fn blob(&self, id: Oid, path: &str) -> Result<Content, Error> {
        let git_error = |source| Error::Git {
            what: path.to_string(),
            source,
        };
        let object = self.odb.read(id).map_err(git_error)?;
        let size = object.len() as u64;
        if size > self.limits.max_file_bytes {
            return Ok(Content::TooLarge { size });
        }
        Ok(Content::Bytes(object.data().to_vec()))
    }
}
