//! The example CI pipeline (`fleet/.github/workflows/plan.yml`): its script,
//! `fleet/.github/scripts/plan-comment.sh`, run with bash against a two-commit repository of the
//! example fleet, the real `wakafleet`, and a fake `gh` that stands in for GitHub's API and keeps
//! the pull request's comments in a JSON file.
//!
//! Needs `bash` and `jq` (the fake applies the script's `--jq` filter with it, as `gh` would).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use common::{commit_all, write};
use serde_json::Value;

const MARKER: &str = "<!-- wakafleet-plan -->";
const SCRIPT: &str = ".github/scripts/plan-comment.sh";
const REPOSITORY: &str = "example-org/fleet";
const PR: &str = "42";

/// `gh api` for the calls the script makes. Each call is logged to `$FAKE_GH_LOG` as a JSON line
/// `{"args": [...], "body": <contents of the body=@file field or null>}`; the comments are a
/// JSON array in `$FAKE_GH_STATE`.
const FAKE_GH: &str = r#"#!/usr/bin/env bash
set -euo pipefail
body_file=
for arg in "$@"; do
  if [[ $arg == body=@* ]]; then body_file=${arg#body=@}; fi
done
# One argument per line (none of the script's contain a newline).
if [[ -n $body_file ]]; then
  printf '%s\n' "$@" | jq -Rnc --rawfile body "$body_file" '{args: [inputs], body: $body}' >>"$FAKE_GH_LOG"
else
  printf '%s\n' "$@" | jq -Rnc '{args: [inputs], body: null}' >>"$FAKE_GH_LOG"
fi

[[ ${1:-} == api ]] || { echo "fake gh: only 'gh api' is supported" >&2; exit 1; }
shift
method=GET endpoint= filter=.
while (($#)); do
  case $1 in
    --method) method=$2; shift 2 ;;
    --jq) filter=$2; shift 2 ;;
    -F) shift 2 ;;
    --paginate | --silent) shift ;;
    -*) echo "fake gh: unexpected option $1" >&2; exit 1 ;;
    *) endpoint=$1; shift ;;
  esac
done

comments="repos/$EXPECTED_REPOSITORY/issues/$EXPECTED_PR/comments"
case "$method $endpoint" in
  "GET $comments")
    jq -r "$filter" "$FAKE_GH_STATE" ;;
  "POST $comments")
    jq --rawfile body "$body_file" \
      '. + [{id: (1000 + length), user: {login: "github-actions[bot]"}, body: $body}]' \
      "$FAKE_GH_STATE" >"$FAKE_GH_STATE.new"
    mv "$FAKE_GH_STATE.new" "$FAKE_GH_STATE" ;;
  "PATCH repos/$EXPECTED_REPOSITORY/issues/comments/"*)
    id=${endpoint##*/}
    jq -e --argjson id "$id" 'any(.[]; .id == $id)' "$FAKE_GH_STATE" >/dev/null \
      || { echo "gh: Not Found (HTTP 404)" >&2; exit 1; }
    jq --argjson id "$id" --rawfile body "$body_file" \
      'map(if .id == $id then .body = $body else . end)' \
      "$FAKE_GH_STATE" >"$FAKE_GH_STATE.new"
    mv "$FAKE_GH_STATE.new" "$FAKE_GH_STATE" ;;
  *)
    echo "fake gh: unexpected call $method $endpoint" >&2; exit 1 ;;
esac
"#;

/// Fails the test with a clear message when a program the test runs is missing.
fn require(program: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(found, "this test needs `{program}` on PATH");
}

/// Copies a folder with everything in it, hidden files included.
fn copy_folder(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&target).expect("create folder");
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

fn edit(repo: &Path, path: &str, from: &str, to: &str) {
    let file = repo.join(path);
    let text = std::fs::read_to_string(&file).expect("read file");
    assert!(text.contains(from), "{path} does not contain {from:?}");
    std::fs::write(file, text.replacen(from, to, 1)).expect("write file");
}

/// A fleet repository as an operator would have it, and the fake GitHub around it.
struct Setup {
    repo: tempfile::TempDir,
    /// The fake `gh` and a `wakafleet` link, first on PATH; also the log and the state.
    bin: tempfile::TempDir,
}

impl Setup {
    /// Commit 1 is the example fleet (with its `.github` folder) and `origin/main`; commit 2
    /// raises `nairobi-hardware-production` to 1.5.1. The PR already has a reviewer's comment
    /// that quotes the marker, which the script must leave alone.
    fn new() -> Self {
        require("bash");
        require("jq");
        let repo = tempfile::tempdir().expect("temporary folder");
        copy_folder(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet"),
            repo.path(),
        );
        assert!(
            repo.path().join(SCRIPT).is_file(),
            "the example has {SCRIPT}"
        );
        let base = commit_all(repo.path(), "the example fleet");
        git2::Repository::open(repo.path())
            .expect("open repository")
            .reference("refs/remotes/origin/main", base, false, "the base branch")
            .expect("create origin/main");
        edit(
            repo.path(),
            "instances/nairobi-hardware-production.toml",
            "version = \"1.5.0\"",
            "version = \"1.5.1\"",
        );
        commit_all(repo.path(), "upgrade nairobi-hardware-production");

        let bin = tempfile::tempdir().expect("temporary folder");
        write(bin.path(), "gh", FAKE_GH);
        make_executable(&bin.path().join("gh"));
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_wakafleet"),
            bin.path().join("wakafleet"),
        )
        .expect("link wakafleet");
        let reviewer = serde_json::json!([{
            "id": 7,
            "user": { "login": "reviewer" },
            "body": format!("> {MARKER}\n> ### wakafleet plan\n\nWhy is this deferred?"),
        }]);
        write(bin.path(), "state.json", reviewer.to_string());
        Self { repo, bin }
    }

    fn log_path(&self) -> PathBuf {
        self.bin.path().join("log.jsonl")
    }

    /// Runs the script in the repository as the workflow does; returns its output and the
    /// `gh` calls it made.
    fn run(&self) -> (Output, Vec<Call>) {
        self.run_with(&[])
    }

    /// [`Setup::run`] with more variables in the script's environment.
    fn run_with(&self, env: &[(&str, &str)]) -> (Output, Vec<Call>) {
        let _ = std::fs::remove_file(self.log_path());
        let path = std::env::join_paths(std::iter::once(self.bin.path().to_path_buf()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .expect("PATH");
        let output = Command::new("bash")
            .arg(SCRIPT)
            .current_dir(self.repo.path())
            .env("PATH", path)
            .env("BASE_REF", "origin/main")
            .env("PR_NUMBER", PR)
            .env("GITHUB_REPOSITORY", REPOSITORY)
            .env("EXPECTED_REPOSITORY", REPOSITORY)
            .env("EXPECTED_PR", PR)
            .env("FAKE_GH_LOG", self.log_path())
            .env("FAKE_GH_STATE", self.bin.path().join("state.json"))
            .env_remove("FLEET_PATH")
            .env_remove("GITHUB_STEP_SUMMARY")
            .env_remove("GH_TOKEN")
            .env_remove("PLAN_MAX_BYTES")
            .env_remove("WHOLE_PLAN_URL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run bash");
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let calls = log
            .lines()
            .map(|line| {
                let call: Value = serde_json::from_str(line).expect("log line is JSON");
                Call {
                    args: call["args"]
                        .as_array()
                        .expect("args")
                        .iter()
                        .map(|arg| arg.as_str().expect("string").to_string())
                        .collect(),
                    body: call["body"].as_str().map(str::to_string),
                }
            })
            .collect();
        (output, calls)
    }

    /// The comments on the pull request now.
    fn comments(&self) -> Vec<(u64, String)> {
        let state = std::fs::read_to_string(self.bin.path().join("state.json")).expect("state");
        let state: Value = serde_json::from_str(&state).expect("state is JSON");
        state
            .as_array()
            .expect("an array")
            .iter()
            .map(|c| {
                let id = c["id"].as_u64().expect("id");
                (id, c["body"].as_str().expect("body").to_string())
            })
            .collect()
    }
}

fn make_executable(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[derive(Debug)]
struct Call {
    args: Vec<String>,
    body: Option<String>,
}

impl Call {
    /// `METHOD endpoint`, as a request line.
    fn request(&self) -> String {
        let method = self
            .args
            .iter()
            .position(|arg| arg == "--method")
            .map_or("GET", |at| self.args[at + 1].as_str());
        let endpoint = self
            .args
            .iter()
            .skip(1)
            .find(|arg| arg.starts_with("repos/"));
        format!("{method} {}", endpoint.expect("an endpoint"))
    }
}

fn describe(output: &Output, calls: &[Call]) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}\ngh calls: {calls:#?}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const LIST: &str = "GET repos/example-org/fleet/issues/42/comments";

#[test]
fn the_plan_is_posted_once_then_updated_in_place_and_errors_replace_it() {
    let setup = Setup::new();

    // First push: no plan comment yet, so one is created.
    let (output, calls) = setup.run();
    let context = describe(&output, &calls);
    assert_eq!(output.status.code(), Some(0), "{context}");
    let requests: Vec<String> = calls.iter().map(Call::request).collect();
    assert_eq!(
        requests,
        [LIST, "POST repos/example-org/fleet/issues/42/comments"],
        "{context}"
    );
    assert!(
        calls[0].args.contains(&"--paginate".to_string()),
        "{context}"
    );
    let body = calls[1].body.as_deref().expect("the POST has a body");
    assert!(body.starts_with(MARKER), "{context}");
    assert!(body.contains("nairobi-hardware-production"), "{context}");
    assert!(body.contains("1.5.1"), "{context}");
    let comments = setup.comments();
    assert_eq!(comments.len(), 2, "the reviewer's comment and the plan");
    let (plan_id, plan_body) = &comments[1];
    assert_eq!(plan_body, body);
    assert_eq!(comments[0].0, 7, "the reviewer's comment is untouched");

    // Second push: the same comment is edited, no new one appears.
    let (output, calls) = setup.run();
    let context = describe(&output, &calls);
    assert_eq!(output.status.code(), Some(0), "{context}");
    let requests: Vec<String> = calls.iter().map(Call::request).collect();
    assert_eq!(
        requests,
        [
            LIST.to_string(),
            format!("PATCH repos/example-org/fleet/issues/comments/{plan_id}")
        ],
        "{context}"
    );
    let body = calls[1].body.as_deref().expect("the PATCH has a body");
    assert!(
        body.starts_with(MARKER) && body.contains("1.5.1"),
        "{context}"
    );
    assert_eq!(setup.comments().len(), 2, "{context}");

    // A push that breaks the fleet: the script fails, and the comment shows why instead of
    // the stale plan.
    edit(
        setup.repo.path(),
        "instances/nairobi-hardware-production.toml",
        "version = \"1.5.1\"",
        "version = \"1.5.1\"\nversoin = \"1.5.1\"",
    );
    commit_all(setup.repo.path(), "a typo");
    let (output, calls) = setup.run();
    let context = describe(&output, &calls);
    assert_eq!(output.status.code(), Some(1), "{context}");
    let requests: Vec<String> = calls.iter().map(Call::request).collect();
    assert_eq!(
        requests,
        [
            LIST.to_string(),
            format!("PATCH repos/example-org/fleet/issues/comments/{plan_id}")
        ],
        "{context}"
    );
    let body = calls[1].body.as_deref().expect("the PATCH has a body");
    assert!(body.starts_with(MARKER), "{context}");
    assert!(
        body.contains("instances/nairobi-hardware-production.toml") && body.contains("versoin"),
        "{context}"
    );
    assert_eq!(setup.comments().len(), 2, "{context}");
    insta::assert_snapshot!("failed_plan_comment", body);
}

/// The workflow runs the script this test runs, with the inputs it reads.
#[test]
fn the_workflow_runs_the_tested_script() {
    let fleet = Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet");
    let workflow =
        std::fs::read_to_string(fleet.join(".github/workflows/plan.yml")).expect("read workflow");
    for expected in [
        &format!("run: bash {SCRIPT}") as &str,
        "fetch-depth: 0",
        "BASE_REF: origin/${{ github.base_ref }}",
        "PR_NUMBER: ${{ github.event.pull_request.number }}",
        "GH_TOKEN: ${{ secrets.GITHUB_TOKEN }}",
        "pull-requests: write",
        // Built once per revision, then restored from the cache.
        "uses: actions/cache@v4",
        "key: wakafleet-${{ runner.os }}-${{ steps.wakafleet.outputs.commit }}",
        "if: steps.cache.outputs.cache-hit != 'true'",
        // The whole plan kept and linked.
        "--format json >\"$RUNNER_TEMP/wakafleet-plan.json\"",
        "uses: actions/upload-artifact@v4",
        "WHOLE_PLAN_URL: ${{ steps.artifact.outputs.artifact-url }}",
    ] {
        assert!(workflow.contains(expected), "plan.yml lacks {expected:?}");
    }
    // The install runs only on a cache miss, and installs the resolved commit.
    let install = workflow
        .split("- name: ")
        .find(|step| step.starts_with("Install wakafleet"))
        .expect("an install step");
    assert!(
        install.contains("cache-hit != 'true'") && install.contains("--rev \"$COMMIT\""),
        "{install}"
    );
    let script = std::fs::read_to_string(fleet.join(SCRIPT)).expect("read script");
    assert!(script.contains(MARKER), "the script looks for the marker");
    assert!(
        script.contains("--max-bytes") && !script.contains("head -c \"$max_bytes\" \"$body\""),
        "wakafleet keeps the plan within the budget; the script does not cut it"
    );
}

/// A plan bigger than the comment's budget: wakafleet leaves the least risky entries out,
/// counts them and links the whole plan; the script posts it as it is.
#[test]
fn a_plan_past_the_budget_is_cut_by_wakafleet_and_links_the_whole_plan() {
    let setup = Setup::new();
    // Every instance gets a domain of its own: one entry each, too many for 4,000 bytes.
    for entry in std::fs::read_dir(setup.repo.path().join("instances")).expect("instances") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).expect("read file");
        let (key, ssl) = if text.contains("ssl = ") {
            ("custom_domain = ", "ssl = ")
        } else {
            ("custom_domain: ", "ssl: ")
        };
        let domain = format!("{key}\"{name}.big.example\"\n");
        let text = match text.find(key) {
            Some(start) => {
                let end = start + text[start..].find('\n').expect("a line") + 1;
                format!("{}{domain}{}", &text[..start], &text[end..])
            }
            None => text.replacen(ssl, &format!("{domain}{ssl}"), 1),
        };
        std::fs::write(&path, text).expect("write file");
    }
    commit_all(setup.repo.path(), "a domain for every instance");
    let url = "https://github.example/example-org/fleet/actions/runs/9/artifacts/1";
    let (output, calls) = setup.run_with(&[("PLAN_MAX_BYTES", "4000"), ("WHOLE_PLAN_URL", url)]);
    let context = describe(&output, &calls);
    assert_eq!(output.status.code(), Some(0), "{context}");
    let body = calls[1].body.as_deref().expect("the POST has a body");
    assert!(body.len() <= 4000, "{} bytes: {context}", body.len());
    assert!(body.starts_with(MARKER), "{context}");
    assert!(
        body.contains("**Not shown, to keep this comment within 4000 bytes:**"),
        "{context}"
    );
    assert!(body.contains(&format!("({url})")), "{context}");
}
