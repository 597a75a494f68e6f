//! Commit metadata and SSH commit signatures against real repositories made with `git`, and
//! real keys made with `ssh-keygen`.
//!
//! Every signature verdict is checked against git's own (`git verify-commit` with
//! `gpg.ssh.allowedSignersFile`), so the two cannot drift apart unnoticed. Private keys are
//! made in the test's temporary folder and stay there; nothing prints them.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use tempfile::TempDir;
use wakafleet::source::{
    self, Person,
    signature::{AllowedSigners, Refusal, Signer, verify_commit},
};

/// The committer and author time of every commit the tests make.
const TIME: &str = "2024-06-01T12:00:00Z";
const EMAIL: &str = "alice@example.com";

/// A repository in a temporary folder, with keys beside it and git isolated from the
/// machine's configuration and ssh agent.
struct Repo {
    dir: TempDir,
}

/// An ed25519 key pair made by `ssh-keygen`.
struct Key {
    /// The private key's file, inside the test's temporary folder.
    private: PathBuf,
    public: PathBuf,
    /// `ssh-ed25519 AAAA... comment`, as in the `.pub` file.
    line: String,
    /// The fingerprint `ssh-keygen -lf` prints.
    fingerprint: String,
}

/// Runs `command`, failing the test with the output when it fails and with how to install
/// the tool when it is missing.
fn run(command: &mut Command, input: Option<&[u8]>) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is missing; install it with `apt-get install git openssh-client`")
        }
        Err(error) => panic!("starting `{program}`: {error}"),
    };
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(input)
            .expect("writing to the child's stdin");
    }
    child.wait_with_output().expect("waiting for the child")
}

fn stdout(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("git and ssh-keygen print UTF-8 here")
        .trim()
        .to_string()
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let repo = Repo { dir };
        std::fs::create_dir(repo.work()).expect("making the work tree");
        std::fs::create_dir(repo.dir.path().join("keys")).expect("making the key folder");
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.name", "Alice"]);
        repo.git(&["config", "user.email", EMAIL]);
        repo.git(&["config", "commit.gpgsign", "false"]);
        repo
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn git_command(&self, args: &[&str]) -> Command {
        let home = self.dir.path();
        let mut command = Command::new("git");
        command
            .args(args)
            .current_dir(self.work())
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home)
            .env("GIT_CONFIG_GLOBAL", home.join("gitconfig"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_DATE", TIME)
            .env("GIT_COMMITTER_DATE", TIME)
            .env_remove("SSH_AUTH_SOCK");
        command
    }

    /// Runs git in the work tree and returns what it printed, trimmed.
    fn git(&self, args: &[&str]) -> String {
        stdout(
            run(&mut self.git_command(args), None),
            &format!("git {args:?}"),
        )
    }

    fn key(&self, name: &str) -> Key {
        self.key_of_type(name, "ed25519")
    }

    fn key_of_type(&self, name: &str, key_type: &str) -> Key {
        let private = self.dir.path().join("keys").join(name);
        let comment = format!("{name}@example.com");
        let output = run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", key_type, "-N", "", "-C", &comment, "-f"])
                .arg(&private),
            None,
        );
        stdout(output, "ssh-keygen -t ed25519");
        let public = private.with_extension("pub");
        let line = std::fs::read_to_string(&public)
            .expect("reading the public key")
            .trim()
            .to_string();
        let listing = stdout(
            run(Command::new("ssh-keygen").arg("-lf").arg(&public), None),
            "ssh-keygen -lf",
        );
        let fingerprint = listing
            .split_whitespace()
            .nth(1)
            .expect("ssh-keygen -l prints bits, fingerprint, comment")
            .to_string();
        Key {
            private,
            public,
            line,
            fingerprint,
        }
    }

    /// Makes an empty commit on the current branch, signed by `signer` if given.
    fn commit(&self, message: &str, signer: Option<&Key>) -> String {
        match signer {
            Some(key) => {
                let signing_key = format!("user.signingkey={}", key.public.display());
                self.git(&[
                    "-c",
                    "gpg.format=ssh",
                    "-c",
                    &signing_key,
                    "commit",
                    "-q",
                    "--allow-empty",
                    "-S",
                    "-m",
                    message,
                ]);
            }
            None => {
                self.git(&["commit", "-q", "--allow-empty", "-m", message]);
            }
        }
        self.git(&["rev-parse", "HEAD"])
    }

    /// Writes a commit object made from commit `sha`'s text by `edit`, and returns its hash.
    fn forge(&self, sha: &str, edit: impl Fn(&str) -> String) -> String {
        let text = self.git(&["cat-file", "commit", sha]) + "\n";
        let mut command = self.git_command(&["hash-object", "-t", "commit", "-w", "--stdin"]);
        stdout(
            run(&mut command, Some(edit(&text).as_bytes())),
            "git hash-object",
        )
    }

    /// The armoured signature `key` makes of commit `sha`'s text in `namespace`.
    fn sign(&self, key: &Key, namespace: &str, sha: &str) -> String {
        let payload = self.dir.path().join(format!("payload-{namespace}"));
        let text = self.git(&["cat-file", "commit", sha]) + "\n";
        std::fs::write(&payload, text).expect("writing the payload");
        let output = run(
            Command::new("ssh-keygen")
                .args(["-q", "-Y", "sign", "-n", namespace, "-f"])
                .arg(&key.private)
                .arg(&payload),
            None,
        );
        stdout(output, "ssh-keygen -Y sign");
        std::fs::read_to_string(payload.with_extension("sig")).expect("reading the signature")
    }

    /// Our verdict on commit `sha` with the allowed signers `allowed`, after checking that git
    /// comes to the same one.
    fn verify(&self, sha: &str, allowed: &str) -> Result<Signer, Refusal> {
        let (ours, git) = self.verdicts(sha, allowed);
        assert_eq!(
            ours.is_ok(),
            git.is_ok(),
            "we say {ours:?}, git says {git:?}"
        );
        ours
    }

    /// Our verdict and git's (`Err` with what git printed when it refuses).
    fn verdicts(&self, sha: &str, allowed: &str) -> (Result<Signer, Refusal>, Result<(), String>) {
        let file = self.dir.path().join("allowed_signers");
        std::fs::write(&file, allowed).expect("writing the allowed signers");
        let signers = AllowedSigners::parse(allowed).expect("the allowed signers parse");
        let ours = verify_commit(&self.work(), sha, &signers);
        let setting = format!("gpg.ssh.allowedSignersFile={}", file.display());
        let git = run(
            &mut self.git_command(&["-c", &setting, "verify-commit", sha]),
            None,
        );
        let git = if git.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&git.stderr).into_owned())
        };
        (ours, git)
    }
}

/// The commit text with a `gpgsig` header holding `signature` after the committer line.
fn with_signature(text: &str, signature: &str) -> String {
    let header = format!("gpgsig {}", signature.trim_end().replace('\n', "\n "));
    let (head, message) = text.split_once("\n\n").expect("a commit has a message");
    format!("{head}\n{header}\n\n{message}")
}

// Signatures.

#[test]
fn a_commit_signed_by_an_allowed_key_is_accepted() {
    let repo = Repo::new();
    let alice = repo.key("alice");
    let sha = repo.commit("Signed", Some(&alice));
    let signer = repo.verify(&sha, &format!("{EMAIL},alice@example.org {}\n", alice.line));
    assert_eq!(
        signer.expect("accepted"),
        Signer {
            principal: EMAIL.to_string(),
            fingerprint: alice.fingerprint,
        }
    );
}

#[test]
fn a_wildcard_principal_reports_the_committer() {
    let repo = Repo::new();
    let alice = repo.key("alice");
    let sha = repo.commit("Signed", Some(&alice));
    let signer = repo.verify(&sha, &format!("*@example.com {}\n", alice.line));
    assert_eq!(signer.expect("accepted").principal, EMAIL);
    let signer = repo.verify(&sha, &format!("*@example.org {}\n", alice.line));
    assert_eq!(signer.expect("accepted").principal, "*@example.org");
}

#[test]
fn an_unsigned_commit_is_refused() {
    let repo = Repo::new();
    let alice = repo.key("alice");
    let sha = repo.commit("Unsigned", None);
    let refusal = repo.verify(&sha, &format!("{EMAIL} {}\n", alice.line));
    assert!(matches!(refusal, Err(Refusal::Unsigned)), "{refusal:?}");
}

#[test]
fn a_key_not_in_the_file_is_unknown() {
    let repo = Repo::new();
    let (alice, mallory) = (repo.key("alice"), repo.key("mallory"));
    let sha = repo.commit("Signed by someone else", Some(&mallory));
    let refusal = repo.verify(&sha, &format!("{EMAIL} {}\n", alice.line));
    assert!(
        matches!(&refusal, Err(Refusal::UnknownKey { fingerprint }) if *fingerprint == mallory.fingerprint),
        "{refusal:?}"
    );
}

#[test]
fn a_key_allowed_for_files_only_may_not_sign_commits() {
    let repo = Repo::new();
    let alice = repo.key("alice");
    let sha = repo.commit("Signed", Some(&alice));
    let refusal = repo.verify(
        &sha,
        &format!("{EMAIL} namespaces=\"file\" {}\n", alice.line),
    );
    assert!(
        matches!(&refusal, Err(Refusal::NotAllowed { reason, .. }) if reason.contains("namespaces `file`")),
        "{refusal:?}"
    );
    let signer = repo.verify(
        &sha,
        &format!("{EMAIL} namespaces=\"file,g?t\" {}\n", alice.line),
    );
    assert!(signer.is_ok(), "{signer:?}");
}

#[test]
fn a_key_that_expired_before_the_commit_is_refused() {
    let repo = Repo::new();
    let alice = repo.key("alice");
    let sha = repo.commit("Signed", Some(&alice));
    let refusal = repo.verify(
        &sha,
        &format!("{EMAIL} valid-before=\"20240101\" {}\n", alice.line),
    );
    assert!(
        matches!(&refusal, Err(Refusal::NotAllowed { reason, .. }) if reason.contains("valid until")),
        "{refusal:?}"
    );
    let refusal = repo.verify(
        &sha,
        &format!("{EMAIL} valid-after=\"20240601120001Z\" {}\n", alice.line),
    );
    assert!(
        matches!(&refusal, Err(Refusal::NotAllowed { reason, .. }) if reason.contains("valid from")),
        "{refusal:?}"
    );
}

#[test]
fn validity_bounds_include_the_commit_time() {
    let repo = Repo::new();
    let alice = repo.key("alice");
    let sha = repo.commit("Signed", Some(&alice));
    for option in ["valid-after", "valid-before"] {
        let line = format!("{EMAIL} {option}=\"20240601120000Z\" {}\n", alice.line);
        let signer = repo.verify(&sha, &line);
        assert!(signer.is_ok(), "{option}: {signer:?}");
    }
}

#[test]
fn a_later_line_for_the_same_key_can_allow_it() {
    let repo = Repo::new();
    let alice = repo.key("alice");
    let sha = repo.commit("Signed", Some(&alice));
    let allowed = format!(
        "old@example.com valid-before=\"20200101Z\" {key}\n{EMAIL} {key}\n",
        key = alice.line
    );
    assert_eq!(
        repo.verify(&sha, &allowed).expect("accepted").principal,
        EMAIL
    );
}

#[test]
fn a_tampered_commit_has_a_bad_signature() {
    let repo = Repo::new();
    let alice = repo.key("alice");
    let sha = repo.commit("Upgrade acme to 2.1", Some(&alice));
    let tampered = repo.forge(&sha, |text| text.replace("acme to 2.1", "acme to 6.6"));
    assert_ne!(tampered, sha);
    let refusal = repo.verify(&tampered, &format!("{EMAIL} {}\n", alice.line));
    assert!(matches!(refusal, Err(Refusal::BadSignature)), "{refusal:?}");
}

#[test]
fn a_signature_for_another_namespace_is_refused() {
    let repo = Repo::new();
    let alice = repo.key("alice");
    let unsigned = repo.commit("Signed for files", None);
    let signature = repo.sign(&alice, "file", &unsigned);
    let sha = repo.forge(&unsigned, |text| with_signature(text, &signature));
    let refusal = repo.verify(&sha, &format!("{EMAIL} {}\n", alice.line));
    assert!(
        matches!(&refusal, Err(Refusal::WrongNamespace { namespace }) if namespace == "file"),
        "{refusal:?}"
    );
    // The same signature made in the namespace `git` and put in by hand is accepted.
    let signature = repo.sign(&alice, "git", &unsigned);
    let sha = repo.forge(&unsigned, |text| with_signature(text, &signature));
    let signer = repo.verify(&sha, &format!("{EMAIL} {}\n", alice.line));
    assert!(signer.is_ok(), "{signer:?}");
}

#[test]
fn a_gpg_signature_is_not_ssh() {
    let repo = Repo::new();
    let alice = repo.key("alice");
    let unsigned = repo.commit("Signed with gpg", None);
    let signature =
        "-----BEGIN PGP SIGNATURE-----\n\niQEzBAABCAAdFiEE\n-----END PGP SIGNATURE-----\n";
    let sha = repo.forge(&unsigned, |text| with_signature(text, signature));
    let refusal = repo.verify(&sha, &format!("{EMAIL} {}\n", alice.line));
    assert!(
        matches!(refusal, Err(Refusal::NotSsh { .. })),
        "{refusal:?}"
    );
}

#[test]
fn a_broken_ssh_signature_is_malformed() {
    let repo = Repo::new();
    let alice = repo.key("alice");
    let unsigned = repo.commit("Signed badly", None);
    let signature =
        "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQ==\n-----END SSH SIGNATURE-----\n";
    let sha = repo.forge(&unsigned, |text| with_signature(text, signature));
    let refusal = repo.verify(&sha, &format!("{EMAIL} {}\n", alice.line));
    assert!(matches!(refusal, Err(Refusal::Malformed(_))), "{refusal:?}");
}

#[test]
fn keys_other_than_ed25519_are_unsupported() {
    let repo = Repo::new();
    let alice = repo.key_of_type("alice", "ecdsa");
    let sha = repo.commit("Signed with ecdsa", Some(&alice));
    let (ours, git) = repo.verdicts(&sha, &format!("{EMAIL} {}\n", alice.line));
    // FIXME: git accepts ECDSA (and RSA) keys; we build ssh-key with ed25519 verification only
    // and refuse them, naming the key type.
    assert!(git.is_ok(), "{git:?}");
    assert!(
        matches!(&ours, Err(Refusal::Unsupported { algorithm }) if algorithm == "ecdsa-sha2-nistp256"),
        "{ours:?}"
    );
}

// Commit metadata.

#[test]
fn commit_info_reads_people_time_summary_and_trailers() {
    let repo = Repo::new();
    let message = "Upgrade acme\nto 2.1\n\nApproved-by: looks like one, but is prose\n\n\
                   Approved-by: Alice <alice@example.com>\nreviewed-by:  Bob \nApproved-by: Carol\n";
    let mut command = repo.git_command(&["commit", "-q", "--allow-empty", "-m", message]);
    command
        .env("GIT_AUTHOR_NAME", "Dan")
        .env("GIT_AUTHOR_EMAIL", "dan@example.com");
    stdout(run(&mut command, None), "git commit");
    let sha = repo.git(&["rev-parse", "HEAD"]);
    // From a folder inside the work tree, as the daemon is given one.
    let folder = repo.work().join("fleet");
    std::fs::create_dir(&folder).expect("making a folder");
    let info = source::commit_info(&folder, "HEAD").expect("commit info");
    assert_eq!(info.sha, sha);
    let person = |name: &str, email: &str| Person {
        name: name.to_string(),
        email: email.to_string(),
    };
    assert_eq!(info.author, person("Dan", "dan@example.com"));
    assert_eq!(info.committer, person("Alice", EMAIL));
    assert_eq!(info.time.to_rfc3339(), "2024-06-01T12:00:00+00:00");
    assert_eq!(info.summary, "Upgrade acme to 2.1");
    assert_eq!(info.approved_by, ["Alice <alice@example.com>", "Carol"]);
    assert_eq!(info.reviewed_by, ["Bob"]);
    // Git finds the same trailers.
    let git = repo.git(&[
        "log",
        "-1",
        "--format=%(trailers:key=Approved-by,valueonly)",
    ]);
    assert_eq!(git.lines().collect::<Vec<_>>(), info.approved_by);
}

#[test]
fn resolve_branch_follows_head_or_the_named_branch() {
    let repo = Repo::new();
    let first = repo.commit("First", None);
    repo.git(&["switch", "-q", "-c", "release"]);
    let second = repo.commit("Second", None);
    let work = repo.work();
    let resolve = |branch| source::resolve_branch(&work, branch);
    assert_eq!(
        resolve(None).expect("HEAD"),
        ("release".to_string(), second.clone())
    );
    assert_eq!(
        resolve(Some("main")).expect("main"),
        ("main".to_string(), first.clone())
    );
    let missing = resolve(Some("nope")).expect_err("no such branch");
    assert!(
        matches!(missing, source::Error::NoBranch { .. }),
        "{missing:?}"
    );
    repo.git(&["switch", "-q", "--detach", &first]);
    let detached = resolve(None).expect_err("HEAD is detached");
    assert!(detached.to_string().contains("pass --branch"), "{detached}");
    assert_eq!(resolve(Some("release")).expect("release").1, second);
}

#[test]
fn the_first_parent_chain_runs_from_the_base_to_the_head() {
    let repo = Repo::new();
    let c1 = repo.commit("c1", None);
    let c2 = repo.commit("c2", None);
    repo.git(&["switch", "-q", "-c", "feature"]);
    let f1 = repo.commit("f1", None);
    repo.git(&["switch", "-q", "main"]);
    let c3 = repo.commit("c3", None);
    repo.git(&["merge", "-q", "--no-ff", "-m", "merge", "feature"]);
    let merge = repo.git(&["rev-parse", "HEAD"]);
    let work = repo.work();
    let chain = |from: Option<&str>, to: &str| -> Vec<String> {
        source::first_parent_chain(&work, from, to).expect("a chain")
    };
    assert_eq!(
        chain(Some(&c1), &merge),
        [c2.as_str(), c3.as_str(), merge.as_str()]
    );
    assert_eq!(chain(None, &c2), [c1.as_str(), c2.as_str()]);
    // A base on the merged branch stops the walk where the main line reaches it.
    assert_eq!(chain(Some(&f1), &merge), [c3.as_str(), merge.as_str()]);
    // A base that is not an ancestor (history rewritten) gives the head alone.
    assert_eq!(chain(Some(&f1), &c3), [c3.as_str()]);
    assert!(chain(Some(&merge), &merge).is_empty());
    assert!(source::first_parent_chain(&work, Some("0123456789"), &merge).is_err());
}

#[test]
fn the_first_parent_chain_keeps_the_newest_thousand() {
    let repo = Repo::new();
    // fast-import makes 1,005 commits in one process.
    let mut stream = String::new();
    for number in 1..=1005 {
        stream.push_str(&format!(
            "commit refs/heads/long\ncommitter Alice <{EMAIL}> 1717243200 +0000\ndata {}\nc{number}\n",
            format!("c{number}").len()
        ));
    }
    let mut command = repo.git_command(&["fast-import", "--quiet"]);
    stdout(
        run(&mut command, Some(stream.as_bytes())),
        "git fast-import",
    );
    let chain = source::first_parent_chain(&repo.work(), None, "long").expect("a chain");
    let mut expected: Vec<String> = repo
        .git(&["rev-list", "--first-parent", "--max-count=1000", "long"])
        .lines()
        .map(str::to_string)
        .collect();
    expected.reverse();
    assert_eq!(chain.len(), source::MAX_CHAIN);
    assert_eq!(chain, expected);
}

#[test]
fn a_folder_outside_any_repository_is_an_error() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let error = source::commit_info(dir.path(), "HEAD").expect_err("no repository");
    assert!(
        matches!(error, source::Error::NoRepository { .. }),
        "{error:?}"
    );
}
