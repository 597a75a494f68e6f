//! Helpers shared by the integration tests: a minimal fleet on disk and the binary under a
//! time limit (a hang fails the test instead of stalling CI).

#![allow(dead_code, reason = "each test binary uses part of the helpers")]

pub mod daemon;
pub mod docker;
pub mod http;
pub mod jobs;
pub mod postgres;
pub mod redis;
pub mod workers;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// A fleet settings file with one region and one size: valid on its own.
pub const FLEET_TOML: &str = r#"name = "test"

[regions.ng-lagos]
country = "NG"
docker = "unix:///var/run/docker.sock"
database = "env:WAKAFLEET_NG_LAGOS_DATABASE_URL"
backups = "/var/lib/wakafleet/backups/ng-lagos"
capacity = { cpu = "8", memory = "32G", storage = "1T" }

[sizes.small]
cpu = "1.0"
memory = "2G"
storage = "20G"
"#;

/// Writes a file, creating its folders.
pub fn write(root: &Path, path: &str, contents: impl AsRef<[u8]>) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().expect("paths have a parent")).expect("create folders");
    std::fs::write(path, contents).expect("write file");
}

/// A temporary folder holding a minimal valid fleet.
pub fn minimal_fleet() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary folder");
    write(dir.path(), "fleet.toml", FLEET_TOML);
    dir
}

/// The standard output of a command that must have exited 0; otherwise the test fails with
/// both of its outputs.
pub fn stdout_of_success(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `wakafleet` with `args` in `cwd`, failing the test if it runs longer than 60 s.
pub fn wakafleet(cwd: &Path, args: &[&str]) -> Output {
    wakafleet_with(cwd, args, &[], Duration::from_secs(60))
}

/// Runs `wakafleet` with `args` in `cwd` and the variables `env`, failing the test if it
/// runs longer than `limit`.
pub fn wakafleet_with(cwd: &Path, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wakafleet"))
        .args(args)
        .current_dir(cwd)
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wakafleet");
    let deadline = Instant::now() + limit;
    // Drain the pipes on threads so a large output cannot block the child.
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).map(|_| bytes)
        })
    };
    let (stdout, stderr) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll wakafleet") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wakafleet {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader").expect("read stdout"),
        stderr: stderr.join().expect("stderr reader").expect("read stderr"),
    }
}

/// `(code, file, line, column)` of each diagnostic in `validate --format json` output.
pub fn diagnostics(output: &Output) -> Vec<(String, String, u64, u64)> {
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(json["format_version"], 1);
    json["diagnostics"]
        .as_array()
        .expect("diagnostics is an array")
        .iter()
        .map(|d| {
            (
                d["code"].as_str().expect("code").to_string(),
                d["file"].as_str().expect("file").to_string(),
                d["line"].as_u64().expect("line"),
                d["column"].as_u64().expect("column"),
            )
        })
        .collect()
}

/// Commits everything in the work tree of `dir` (a repository is created on first use).
pub fn commit_all(dir: &Path, message: &str) -> git2::Oid {
    let repository = git2::Repository::open(dir)
        .or_else(|_| git2::Repository::init(dir))
        .expect("open or create a repository");
    let mut index = repository.index().expect("index");
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .expect("stage files");
    index.update_all(["*"], None).expect("stage removals");
    index.write().expect("write index");
    let tree = repository
        .find_tree(index.write_tree().expect("write tree"))
        .expect("find tree");
    // A fixed time makes commit hashes, and so snapshots that show them, repeatable.
    let time = git2::Time::new(1_767_225_600, 0);
    let signature = git2::Signature::new("Test", "test@example.com", &time).expect("signature");
    let parent = repository
        .head()
        .ok()
        .and_then(|head| head.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repository
        .commit(
            Some("HEAD"),
            &signature,
            &signature,
            message,
            &tree,
            &parents,
        )
        .expect("commit")
}
