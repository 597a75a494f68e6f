//! Where the daemon's desired state comes from, and how it hears of a change.
//!
//! A fleet folder inside a git repository is followed by the commits of one branch, never
//! by its work tree: only merged work is approved. With a remote (`--repo URL`) the
//! repository is a mirror under the daemon's state folder, fetched on the interval (and on
//! a webhook, later). A folder outside git is read as it is on disk, and watched with
//! notify (debounced) so a saved file is reconciled at once.
//!
//! Nothing here validates; it hands back files and who stands behind them.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use git2::{FetchOptions, Repository};
use notify_debouncer_full::{
    DebounceEventResult, Debouncer, RecommendedCache, new_debouncer, notify::RecommendedWatcher,
    notify::RecursiveMode,
};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::{
    load::Limits,
    secret::redact_url,
    source::{self, CommitInfo},
    validate::{Cache, CachedContent, CachedInput},
};

/// A source of desired state.
#[derive(Debug)]
pub enum Source {
    /// The commits of a branch of a repository: a local one, or a mirror of a remote.
    Git {
        /// The fleet folder, inside the repository's work tree (or mirror).
        folder: PathBuf,
        branch: String,
        /// The remote the mirror fetches, shown with its password hidden.
        remote: Option<String>,
    },
    /// A folder outside git, read from disk.
    Folder { folder: PathBuf },
}

/// The files of one revision of the source.
#[derive(Debug)]
pub struct Revision {
    /// A commit's hash, or `folder:<sha256 of the files>` for a folder.
    pub id: String,
    /// The files, those the cache knows left unread.
    pub inputs: Vec<CachedInput>,
    /// The commit, for a git source.
    pub commit: Option<CommitInfo>,
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] source::Error),
    #[error("{what}")]
    Git {
        what: String,
        #[source]
        source: git2::Error,
    },
    #[error("watching `{folder}` for changes")]
    Watch {
        folder: PathBuf,
        #[source]
        source: notify_debouncer_full::notify::Error,
    },
    #[error("creating the mirror folder `{folder}`")]
    Mirror {
        folder: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Keeps a folder watched while it lives.
pub struct Watch(#[allow(dead_code)] Option<Debouncer<RecommendedWatcher, RecommendedCache>>);

/// How long the watcher waits for a burst of writes to settle before it tells.
const DEBOUNCE: Duration = Duration::from_millis(300);

impl Source {
    /// The source for the fleet folder `path`: its repository's branch `branch` (the one
    /// checked out when none), a mirror of `remote` kept in `state` (the branch `main` when
    /// none), or the folder itself when no repository holds it.
    ///
    /// # Errors
    /// When the repository's HEAD is detached and no branch is named, or the mirror cannot
    /// be made.
    pub fn open(
        path: &Path,
        branch: Option<&str>,
        remote: Option<&str>,
        state: &Path,
    ) -> Result<Source, Error> {
        if let Some(url) = remote {
            return Source::mirror(path, branch, url, state);
        }
        if Repository::discover(path).is_err() {
            return Ok(Source::Folder {
                folder: path.to_path_buf(),
            });
        }
        // A detached HEAD (a CI checkout) is followed as it is: HEAD is the revision.
        let branch = match source::resolve_branch(path, branch) {
            Ok((branch, _)) => branch,
            Err(source::Error::DetachedHead { .. }) => "HEAD".to_string(),
            Err(error) => return Err(error.into()),
        };
        Ok(Source::Git {
            folder: path.to_path_buf(),
            branch,
            remote: None,
        })
    }

    /// A mirror of `url` under `state`, fetched before it is read; the fleet is the folder
    /// `path` of its trees.
    fn mirror(path: &Path, branch: Option<&str>, url: &str, state: &Path) -> Result<Source, Error> {
        let digest = hex::encode(&Sha256::digest(url.as_bytes())[..6]);
        let root = state.join(format!("mirror-{digest}"));
        let folder = root.join(path);
        // The folder stands in the mirror's (never checked out) work tree, so that the fleet
        // folder resolves inside it as in any repository.
        std::fs::create_dir_all(&folder).map_err(|source| Error::Mirror {
            folder: folder.clone(),
            source,
        })?;
        let git = |what: &str| {
            let what = what.to_string();
            move |source| Error::Git { what, source }
        };
        let repository = match Repository::open(&root) {
            Ok(repository) => repository,
            Err(_) => Repository::init(&root).map_err(git("creating the mirror repository"))?,
        };
        if repository.find_remote("origin").is_err() {
            repository
                .remote_with_fetch("origin", url, "+refs/heads/*:refs/remotes/origin/*")
                .map_err(git("adding the remote"))?;
        }
        let source = Source::Git {
            folder,
            branch: branch.unwrap_or("main").to_string(),
            remote: Some(redact_url(url)),
        };
        source.fetch()?;
        Ok(source)
    }

    /// The fleet folder.
    pub fn folder(&self) -> &Path {
        match self {
            Source::Git { folder, .. } | Source::Folder { folder } => folder,
        }
    }

    /// Says what is followed, for logs and the status.
    pub fn describe(&self) -> String {
        match self {
            Source::Git {
                folder,
                branch,
                remote: Some(remote),
            } => format!(
                "branch {branch} of {remote}, folder {}",
                folder.file_name().map_or_else(
                    || ".".to_string(),
                    |name| name.to_string_lossy().into_owned()
                )
            ),
            Source::Git { folder, branch, .. } => {
                format!(
                    "branch {branch} of the repository holding {}",
                    folder.display()
                )
            }
            Source::Folder { folder } => format!("the folder {}", folder.display()),
        }
    }

    /// The branch followed; none for a folder. A detached HEAD is followed as `HEAD`.
    pub fn branch(&self) -> Option<&str> {
        match self {
            Source::Git { branch, .. } => Some(branch),
            Source::Folder { .. } => None,
        }
    }

    /// Whether the source is a remote's mirror, which must be fetched to move.
    pub fn is_remote(&self) -> bool {
        matches!(
            self,
            Source::Git {
                remote: Some(_),
                ..
            }
        )
    }

    /// Fetches the remote into the mirror; nothing for a local source.
    ///
    /// # Errors
    /// When the remote cannot be reached or read.
    pub fn fetch(&self) -> Result<(), Error> {
        let Source::Git {
            folder,
            remote: Some(remote),
            ..
        } = self
        else {
            return Ok(());
        };
        let failed = |source| Error::Git {
            what: format!("fetching {remote}"),
            source,
        };
        let repository = Repository::discover(folder).map_err(failed)?;
        let mut origin = repository.find_remote("origin").map_err(failed)?;
        let mut options = FetchOptions::new();
        options.prune(git2::FetchPrune::On);
        origin
            .fetch::<&str>(&[], Some(&mut options), None)
            .map_err(failed)?;
        Ok(())
    }

    /// The revision the source stands at now: the branch's head commit (cheap), or for a
    /// folder the digest of its files (which reads them).
    ///
    /// # Errors
    /// When the branch is gone or the folder cannot be read.
    pub fn head(&self, limits: &Limits) -> Result<String, Error> {
        match self {
            Source::Git { folder, .. } => {
                let rev = self.rev();
                let failed = |source| Error::Git {
                    what: format!("reading the head of `{rev}`"),
                    source,
                };
                let repository = Repository::discover(folder).map_err(failed)?;
                let commit = repository
                    .revparse_single(&rev)
                    .and_then(|object| object.peel_to_commit())
                    .map_err(failed)?;
                Ok(commit.id().to_string())
            }
            Source::Folder { folder } => Ok(digest(&source::identify(source::read_folder(
                folder, limits,
            )?))),
        }
    }

    /// The revisions from after `since` up to `head`, newest first: the candidates to
    /// apply, the newest acceptable one winning. A folder has only its present.
    ///
    /// # Errors
    /// When the history cannot be walked.
    pub fn candidates(&self, since: Option<&str>, head: &str) -> Result<Vec<String>, Error> {
        match self {
            Source::Folder { .. } => Ok(vec![head.to_string()]),
            Source::Git { folder, .. } => {
                let mut chain = source::first_parent_chain(folder, since, head)?;
                chain.reverse();
                Ok(chain)
            }
        }
    }

    /// Reads revision `id`, leaving unread the files of a commit whose blobs `cache` knows.
    ///
    /// # Errors
    /// When the commit or the folder cannot be read.
    pub fn read(&self, id: &str, limits: &Limits, cache: &Cache) -> Result<Revision, Error> {
        match self {
            Source::Git { folder, .. } => {
                let snapshot = source::read_commit_cached(folder, id, limits, cache)?;
                let commit = source::commit_info(folder, &snapshot.commit)?;
                Ok(Revision {
                    id: snapshot.commit,
                    inputs: snapshot.inputs,
                    commit: Some(commit),
                })
            }
            Source::Folder { folder } => {
                let inputs = source::identify(source::read_folder(folder, limits)?);
                Ok(Revision {
                    id: digest(&inputs),
                    inputs,
                    commit: None,
                })
            }
        }
    }

    /// The path of the repository (its `.git` folder), for signature checks.
    pub fn repository(&self) -> Option<PathBuf> {
        match self {
            Source::Git { folder, .. } => Repository::discover(folder)
                .ok()
                .map(|repository| repository.path().to_path_buf()),
            Source::Folder { .. } => None,
        }
    }

    /// Watches a folder source and notifies `changed` after each settled burst of changes;
    /// a git source is polled for its branch instead (a commit moves one ref).
    ///
    /// # Errors
    /// When the folder cannot be watched.
    pub fn watch(&self, changed: Arc<Notify>) -> Result<Watch, Error> {
        let Source::Folder { folder } = self else {
            return Ok(Watch(None));
        };
        let handler = move |result: DebounceEventResult| match result {
            Ok(events) => {
                let relevant = events.iter().any(|event| {
                    event
                        .paths
                        .iter()
                        .all(|path| !path.components().any(|part| part.as_os_str() == ".git"))
                });
                if relevant {
                    changed.notify_one();
                }
            }
            Err(errors) => {
                for error in errors {
                    tracing::warn!(%error, "watching the fleet folder");
                }
                // Whatever was missed is read at the next look.
                changed.notify_one();
            }
        };
        let watch_error = |source| Error::Watch {
            folder: folder.clone(),
            source,
        };
        let mut debouncer = new_debouncer(DEBOUNCE, None, handler).map_err(watch_error)?;
        debouncer
            .watch(folder, RecursiveMode::Recursive)
            .map_err(watch_error)?;
        Ok(Watch(Some(debouncer)))
    }

    /// The revision name of the followed branch.
    fn rev(&self) -> String {
        match self {
            Source::Git {
                branch,
                remote: Some(_),
                ..
            } => format!("refs/remotes/origin/{branch}"),
            Source::Git { branch, .. } if branch == "HEAD" => branch.clone(),
            Source::Git { branch, .. } => format!("refs/heads/{branch}"),
            Source::Folder { .. } => String::new(),
        }
    }
}

/// The identity of a folder's content: `folder:` and the SHA-256 of its files' paths and
/// blob ids, in the order read (sorted by path).
fn digest(inputs: &[CachedInput]) -> String {
    let mut hasher = Sha256::new();
    for input in inputs {
        hasher.update(input.path.as_bytes());
        hasher.update([0]);
        match &input.content {
            CachedContent::Read { id, .. } => hasher.update(id.as_bytes()),
            CachedContent::Known(known) => hasher.update(known.id().as_bytes()),
            CachedContent::Other(other) => hasher.update(format!("{other:?}").as_bytes()),
        }
    }
    format!("folder:{}", hex::encode(&hasher.finalize()[..16]))
}
