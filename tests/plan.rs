//! `wakafleet plan` end to end on two-commit repositories built here: the actions, their
//! renderings (insta snapshots of text, Markdown and JSON), exit codes, and the law that a
//! fleet planned against its own converged state is empty.

mod common;

use std::path::Path;

use common::{commit_all, wakafleet, write};
use wakafleet::{
    load::Limits,
    plan::{self, converged_base},
    source, validate,
};

/// A Wednesday, outside every maintenance window of the example fleet.
const AT: &str = "2026-01-07T12:00:00Z";

/// A repository whose first commit is the example fleet; returns it and the fleet folder.
fn example_repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().expect("temporary folder");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet");
    let inputs = source::read_folder(&example, &Limits::default()).expect("read the example");
    for input in inputs {
        let wakafleet::load::Content::Bytes(bytes) = input.content else {
            panic!("the example fleet holds files only");
        };
        write(repo.path(), &input.path, bytes);
    }
    commit_all(repo.path(), "the example fleet");
    repo
}

fn edit(repo: &Path, path: &str, from: &str, to: &str) {
    let file = repo.join(path);
    let text = std::fs::read_to_string(&file).expect("read file");
    assert!(text.contains(from), "{path} does not contain {from:?}");
    std::fs::write(file, text.replacen(from, to, 1)).expect("write file");
}

/// The example fleet with one change of each kind, committed on top of it.
fn changed_repository() -> tempfile::TempDir {
    let repo = example_repository();
    let root = repo.path();
    // upgrade (manual-approval, deferred to the window)
    edit(
        root,
        "instances/nairobi-hardware-production.toml",
        "version = \"1.5.0\"",
        "version = \"1.5.1\"",
    );
    // configure
    edit(
        root,
        "instances/mama-put-production.toml",
        "ssl = true",
        "ssl = false",
    );
    // terminate
    edit(
        root,
        "instances/kente-pos-pilot.yaml",
        "state: suspended",
        "state: terminated",
    );
    // suspend by tenant
    edit(
        root,
        "tenants/lekki-fashion-house.toml",
        "state = \"active\"",
        "state = \"suspended\"",
    );
    // orphaned
    std::fs::remove_file(root.join("instances/mama-put-staging.yaml")).expect("remove file");
    // provision
    write(
        root,
        "instances/accra-fresh-staging.toml",
        "name = \"accra-fresh-staging\"\ntype = \"partner-deployed\"\npartner = \"kente-tech\"\ntenant = \"accra-fresh-markets\"\nregion = \"gh-accra\"\ndata_residency = [\"GH\"]\nsize = \"small\"\nchannel = \"beta-auto\"\nversion = \"1.5.0\"\n",
    );
    commit_all(root, "one change of each kind");
    repo
}

fn plan_output(repo: &Path, format: &str) -> (Option<i32>, String) {
    let output = wakafleet(
        repo,
        &[
            "plan",
            ".",
            "--base",
            "HEAD~1",
            "--head",
            "HEAD",
            "--at",
            AT,
            "--format",
            format,
            "--detailed-exitcode",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), stdout)
}

#[test]
fn renderings_of_a_change_of_each_kind() {
    let repo = changed_repository();
    for format in ["text", "markdown", "json"] {
        let (code, stdout) = plan_output(repo.path(), format);
        assert_eq!(code, Some(2), "{stdout}");
        insta::assert_snapshot!(format!("changes_{format}"), stdout);
    }
}

#[test]
fn json_actions_have_the_documented_shape() {
    let repo = changed_repository();
    let (_, stdout) = plan_output(repo.path(), "json");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["at"], AT);
    let actions = json["actions"].as_array().expect("actions");
    assert_eq!(json["summary"]["total"], actions.len());
    let kinds: Vec<&str> = actions
        .iter()
        .map(|a| a["kind"].as_str().expect("kind"))
        .collect();
    for kind in [
        "provision",
        "configure",
        "upgrade",
        "suspend",
        "terminate",
        "orphaned",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let upgrade = actions
        .iter()
        .find(|a| a["kind"] == "upgrade")
        .expect("an upgrade");
    assert_eq!(upgrade["resource"]["id"], "nairobi-hardware-production");
    assert_eq!(upgrade["status"], "deferred");
    assert_eq!(upgrade["not_before"], "2026-01-10T01:00:00Z");
    assert_eq!(
        (upgrade["from"].as_str(), upgrade["to"].as_str()),
        (Some("1.5.0"), Some("1.5.1"))
    );
}

#[test]
fn an_unchanged_fleet_plans_nothing() {
    let repo = example_repository();
    let output = wakafleet(
        repo.path(),
        &[
            "plan",
            ".",
            "--base",
            "HEAD",
            "--at",
            AT,
            "--detailed-exitcode",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("no changes"), "{stdout}");
}

#[test]
fn an_invalid_head_prints_its_diagnostics_and_no_plan() {
    let repo = example_repository();
    edit(
        repo.path(),
        "instances/mama-put-production.toml",
        "region = \"ng-lagos\"",
        "region = \"ng-lagoss\"",
    );
    let output = wakafleet(
        repo.path(),
        &["plan", ".", "--base", "HEAD", "--format", "json"],
    );
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("dangling-reference"), "{stdout}");
    assert!(!stdout.contains("\"actions\""), "{stdout}");
}

#[test]
fn without_a_base_or_state_the_error_names_both() {
    let repo = example_repository();
    let output = wakafleet(repo.path(), &["plan", "."]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--base") && stderr.contains("--state"),
        "{stderr}"
    );
}

#[test]
fn a_fleet_planned_against_its_own_converged_state_is_empty() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet");
    let inputs = source::read_folder(&example, &Limits::default()).expect("read the example");
    let mut validation = validate::check(inputs, &Limits::default());
    let fleet = validation.take_valid().expect("the example is valid");
    let actual = converged_base(fleet.fleet());
    // Every hour of two weeks, in and out of every window.
    let start = chrono::DateTime::parse_from_rfc3339(AT)
        .expect("time")
        .to_utc();
    for hour in 0..24 * 14 {
        let at = start + chrono::Duration::hours(hour);
        let plan = plan::compute(&fleet, &validation.sources, &actual, at);
        assert!(plan.actions.is_empty(), "at {at}: {:#?}", plan.actions);
    }
}
