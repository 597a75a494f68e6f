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
    plan_output_with(repo, format, &[])
}

/// [`plan_output`] with more arguments.
fn plan_output_with(repo: &Path, format: &str, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec![
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
    ];
    args.extend_from_slice(extra);
    let output = wakafleet(repo, &args);
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

/// The example fleet with `ssl` turned off wherever it is on, and two instances approving
/// the breaking 2.0.0: alike changes to group.
fn alike_repository() -> tempfile::TempDir {
    let repo = example_repository();
    let root = repo.path();
    for entry in std::fs::read_dir(root.join("instances")).expect("instances") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read_to_string(&path).expect("read file");
        if text.contains("ssl = true") {
            std::fs::write(&path, text.replacen("ssl = true", "ssl = false", 1))
                .expect("write file");
        }
    }
    for name in ["webwaka-saas-abuja-1", "webwaka-saas-nairobi-1"] {
        edit(
            root,
            &format!("instances/{name}.toml"),
            "version = \"1.5.1\"",
            "version = \"1.5.1\"\napproved_version = \"2.0.0\"",
        );
    }
    commit_all(root, "ssl off everywhere; two instances take 2.0.0");
    repo
}

#[test]
fn alike_actions_are_grouped_riskiest_first() {
    let repo = alike_repository();
    for format in ["text", "markdown"] {
        let (code, stdout) = plan_output(repo.path(), format);
        assert_eq!(code, Some(2), "{stdout}");
        insta::assert_snapshot!(format!("grouped_{format}"), stdout);
    }
    let (_, verbose) = plan_output_with(repo.path(), "text", &["--verbose"]);
    insta::assert_snapshot!("grouped_text_verbose", verbose);
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

#[test]
fn a_state_snapshot_is_planned_against() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet");
    let inputs = source::read_folder(&example, &Limits::default()).expect("read the example");
    let fleet = validate::check(inputs, &Limits::default()).fleet;
    let mut actual = converged_base(&fleet);
    let instance = actual
        .instances
        .get_mut("nairobi-hardware-production")
        .expect("in the example");
    std::sync::Arc::make_mut(instance).version = semver::Version::new(1, 4, 2);
    let dir = tempfile::tempdir().expect("temporary folder");
    let snapshot = plan::snapshot::from_actual(&actual);
    write(
        dir.path(),
        "state.json",
        serde_json::to_string_pretty(&snapshot).expect("JSON"),
    );
    let state = dir.path().join("state.json");

    let args = [
        "plan",
        "fleet",
        "--state",
        state.to_str().expect("UTF-8 path"),
        "--at",
        AT,
        "--format",
        "json",
    ];
    let output = wakafleet(Path::new(env!("CARGO_MANIFEST_DIR")), &args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["base"], serde_json::Value::Null);
    let actions = json["actions"].as_array().expect("actions");
    assert_eq!(actions.len(), 1, "{actions:#?}");
    assert_eq!(actions[0]["kind"], "upgrade");
    assert_eq!(
        (actions[0]["from"].as_str(), actions[0]["to"].as_str()),
        (Some("1.4.2"), Some("1.5.0"))
    );
    assert_eq!(actions[0]["status"], "deferred");
}

#[test]
fn a_bad_state_snapshot_is_an_error() {
    let dir = tempfile::tempdir().expect("temporary folder");
    write(
        dir.path(),
        "state.json",
        "{\"format_version\": 1, \"instances\": 3}",
    );
    let state = dir.path().join("state.json");
    let args = [
        "plan",
        "fleet",
        "--state",
        state.to_str().expect("UTF-8 path"),
    ];
    let output = wakafleet(Path::new(env!("CARGO_MANIFEST_DIR")), &args);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("reading state snapshot") && stderr.contains("line 1"),
        "{stderr}"
    );
}

mod properties {
    //! Random fleets over one release catalogue: planning never panics, and a fleet planned
    //! against its own converged state is empty at any time.

    use super::*;
    use proptest::prelude::*;
    use wakafleet::load::{Content, Input};

    const VERSIONS: &[&str] = &["1.0.0", "1.0.1", "1.1.0", "2.0.0", "2.1.0-beta.1"];
    const CHANNELS: &[&str] = &[
        "mode = \"auto-update\"\n",
        "mode = \"auto-update\"\ntrack = \"beta\"\n[auto_approve]\nminor = false\n[maintenance_window]\ndays = [\"sat\"]\nstart = \"23:30\"\nduration = \"3h\"\ntimezone = \"Europe/London\"\n",
        "mode = \"manual-approval\"\n[maintenance_window]\nstart = \"02:00\"\nduration = \"1h\"\ntimezone = \"Africa/Lagos\"\n",
        "mode = \"frozen\"\n[security]\noverride_frozen = true\n",
    ];
    const STATES: &[&str] = &["active", "suspended", "terminated"];

    /// One instance: channel, version, approved version, state, downgrades allowed.
    type Spec = (usize, usize, Option<usize>, usize, bool);

    fn files(instances: &[Spec], partner_suspended: bool) -> Vec<Input> {
        let mut files = vec![
            ("fleet.toml".to_string(), common::FLEET_TOML.to_string()),
            (
                "partners/p.toml".to_string(),
                format!(
                    "id = \"p\"\nname = \"P\"\nemail = \"o@p.example\"\nstate = \"{}\"\n",
                    if partner_suspended {
                        "suspended"
                    } else {
                        "active"
                    }
                ),
            ),
        ];
        for (index, channel) in CHANNELS.iter().enumerate() {
            files.push((
                format!("channels/c{index}.toml"),
                format!("name = \"c{index}\"\n{channel}"),
            ));
        }
        let releases = [
            ("1.0.0", "", "stable", ""),
            (
                "1.0.1",
                ">=1.0.0, <1.0.1",
                "stable",
                "security_patch = true\nseverity = \"critical\"\n",
            ),
            ("1.1.0", ">=1.0.0, <1.1.0", "stable", ""),
            ("2.0.0", ">=1.1.0, <2.0.0", "stable", "breaking = true\n"),
            ("2.1.0-beta.1", ">=2.0.0, <2.1.0", "beta", ""),
        ];
        for (version, from, status, extra) in releases {
            let mut text = format!(
                "version = \"{version}\"\nstatus = \"{status}\"\nreleased = 2026-01-01\nimage = \"i:{version}\"\n{extra}"
            );
            if !from.is_empty() {
                text += &format!("upgrade_from = \"{from}\"\n");
            }
            files.push((format!("releases/{version}.toml"), text));
        }
        for (index, (channel, version, approved, state, downgrade)) in instances.iter().enumerate()
        {
            let mut text = format!(
                "name = \"i{index}\"\ntype = \"shared-saas\"\npartner = \"p\"\nregion = \"ng-lagos\"\ndata_residency = [\"NG\"]\nsize = \"small\"\nchannel = \"c{channel}\"\nversion = \"{}\"\nstate = \"{}\"\nallow_downgrade = {downgrade}\n",
                VERSIONS[*version], STATES[*state]
            );
            if let Some(approved) = approved {
                text += &format!("approved_version = \"{}\"\n", VERSIONS[*approved]);
            }
            files.push((format!("instances/i{index}.toml"), text));
        }
        files
            .into_iter()
            .map(|(path, text)| Input {
                path,
                content: Content::Bytes(text.into_bytes()),
            })
            .collect()
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            0..CHANNELS.len(),
            0..VERSIONS.len(),
            prop::option::of(0..VERSIONS.len()),
            0..STATES.len(),
            any::<bool>(),
        )
    }

    fn fleet() -> impl Strategy<Value = (Vec<Spec>, bool)> {
        (prop::collection::vec(spec(), 0..6), any::<bool>())
    }

    proptest! {
        #[test]
        fn planning_never_panics_and_a_converged_fleet_plans_nothing(
            (base, base_suspended) in fleet(),
            (head, head_suspended) in fleet(),
            seconds in 1_700_000_000i64..1_900_000_000,
        ) {
            let at = chrono::DateTime::from_timestamp(seconds, 0).expect("in range");
            let limits = Limits::default();
            let base = validate::check(files(&base, base_suspended), &limits);
            let mut head = validate::check(files(&head, head_suspended), &limits);
            prop_assert!(!base.has_errors(), "{:?}", base.diagnostics);
            let desired = head.take_valid().expect("generated fleets are valid");

            let _ = plan::compute(&desired, &head.sources, &converged_base(&base.fleet), at);
            let own = plan::compute(&desired, &head.sources, &converged_base(desired.fleet()), at);
            prop_assert!(own.actions.is_empty(), "{:#?}", own.actions);
        }
    }
}
