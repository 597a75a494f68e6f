//! Table tests of the channel rules; time is passed in.

use chrono::{DateTime, Utc};
use semver::Version;

use crate::{
    model::Fleet,
    policy::{BlockedReason, Input, Status, converged, decide},
    validate,
};

const FLEET: &str = r#"name = "t"
[regions.ng-lagos]
country = "NG"
docker = "unix:///var/run/docker.sock"
database = "env:DB"
backups = "/b"
capacity = { cpu = "64", memory = "256G", storage = "4T" }
[sizes.small]
cpu = "1"
memory = "1G"
storage = "1G"
"#;

/// version, breaking, security severity (or ""), upgrade_from (or ""), status
const RELEASES: &[(&str, bool, &str, &str, &str)] = &[
    ("1.0.0", false, "", "", "stable"),
    ("1.0.1", false, "critical", ">=1.0.0, <1.0.1", "stable"),
    ("1.1.0", false, "", ">=1.0.0, <1.1.0", "stable"),
    ("1.2.0", false, "", ">=1.1.0, <1.2.0", "stable"),
    ("2.0.0", true, "", ">=1.2.0, <2.0.0", "stable"),
    ("2.1.0-beta.1", false, "", ">=2.0.0, <2.1.0", "beta"),
    ("3.0.0", true, "", ">=2.5.0", "stable"),
];

/// A fleet with the releases above, one channel from `channel` and one instance from
/// `instance` (TOML lines added to the instance file).
fn fleet(channel: &str, instance: &str) -> Fleet {
    let mut files = vec![
        ("fleet.toml".to_string(), FLEET.to_string()),
        (
            "partners/p.toml".to_string(),
            "id = \"p\"\nname = \"P\"\nemail = \"o@p.example\"\n".to_string(),
        ),
        (
            "channels/c.toml".to_string(),
            format!("name = \"c\"\n{channel}"),
        ),
        (
            "instances/web.toml".to_string(),
            format!(
                "name = \"web\"\ntype = \"shared-saas\"\npartner = \"p\"\nregion = \"ng-lagos\"\ndata_residency = [\"NG\"]\nsize = \"small\"\nchannel = \"c\"\n{instance}"
            ),
        ),
    ];
    for (version, breaking, severity, from, status) in RELEASES {
        let mut text = format!(
            "version = \"{version}\"\nstatus = \"{status}\"\nreleased = 2026-01-01\nimage = \"i:{version}\"\nbreaking = {breaking}\n"
        );
        if !severity.is_empty() {
            text += &format!("security_patch = true\nseverity = \"{severity}\"\n");
        }
        if !from.is_empty() {
            text += &format!("upgrade_from = \"{from}\"\n");
        }
        files.push((format!("releases/{version}.toml"), text));
    }
    let validation = validate::check_texts(files);
    assert!(!validation.has_errors(), "{:#?}", validation.diagnostics);
    validation.fleet
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

fn v(text: &str) -> Version {
    Version::parse(text).expect("a version")
}

/// Decides for the fleet's one instance running `actual` at `now`, and returns each
/// decision as `to status [blocked reason] [not_before]`.
fn check(channel: &str, instance: &str, actual: &str, now: &str) -> Vec<String> {
    let fleet = fleet(channel, instance);
    let actual = (!actual.is_empty()).then(|| v(actual));
    let input = Input {
        instance: &fleet.instances["web"],
        channel: &fleet.channels["c"],
        releases: &fleet.releases,
        actual: actual.as_ref(),
    };
    decide(&input, at(now))
        .into_iter()
        .map(|decision| {
            let mut line = format!("{} {}", decision.to, decision.status.as_str());
            if let Some(reason) = decision.blocked_reason {
                line += &format!(" {}", reason.as_str());
            }
            if let Some(not_before) = decision.not_before {
                line += &format!(" {}", not_before.to_rfc3339());
            }
            if decision.path.len() > 1 {
                line += &format!(" via {}", decision.path.len());
            }
            line
        })
        .collect()
}

const AUTO: &str = "mode = \"auto-update\"\n";
const WINDOW: &str = "[maintenance_window]\ndays = [\"sat\"]\nstart = \"02:00\"\nduration = \"4h\"\ntimezone = \"Africa/Lagos\"\n";
/// A Wednesday noon, outside the Saturday window.
const WEDNESDAY: &str = "2026-01-07T12:00:00Z";
/// A Saturday 01:30 UTC, 02:30 in Lagos: inside the window.
const SATURDAY: &str = "2026-01-10T01:30:00Z";

#[test]
fn auto_update_follows_the_newest_reachable_release_over_several_hops() {
    assert_eq!(
        check(AUTO, "", "1.0.0", WEDNESDAY),
        ["1.2.0 ready via 2", "2.0.0 blocked needs-approval"]
    );
}

#[test]
fn auto_update_waits_for_the_window() {
    let channel = format!("{AUTO}[auto_approve]\nsecurity_patches = false\n{WINDOW}");
    assert_eq!(
        check(&channel, "", "1.1.0", WEDNESDAY),
        [
            "1.2.0 deferred 2026-01-10T01:00:00+00:00",
            "2.0.0 blocked needs-approval"
        ]
    );
    assert_eq!(check(&channel, "", "1.1.0", SATURDAY)[0], "1.2.0 ready");
}

#[test]
fn auto_update_applies_security_releases_at_once_when_allowed() {
    let channel = format!("{AUTO}[auto_approve]\nminor = false\n{WINDOW}");
    // Only the patch 1.0.1 is allowed (minor releases need approval), and it is a security fix.
    assert_eq!(
        check(&channel, "", "1.0.0", WEDNESDAY),
        ["1.0.1 ready", "2.0.0 blocked needs-approval via 3"]
    );
    let no_security =
        format!("{AUTO}[auto_approve]\nminor = false\nsecurity_patches = false\n{WINDOW}");
    assert_eq!(
        check(&no_security, "", "1.0.0", WEDNESDAY),
        [
            "1.0.1 deferred 2026-01-10T01:00:00+00:00",
            "2.0.0 blocked needs-approval via 3"
        ]
    );
}

#[test]
fn auto_update_takes_breaking_releases_only_up_to_the_approved_version() {
    assert_eq!(
        check(AUTO, "approved_version = \"2.0.0\"\n", "1.2.0", WEDNESDAY),
        ["2.0.0 ready"]
    );
}

#[test]
fn auto_update_on_the_beta_track_takes_beta_releases() {
    let channel = "mode = \"auto-update\"\ntrack = \"beta\"\n";
    assert_eq!(
        check(
            channel,
            "approved_version = \"2.0.0\"\n",
            "2.0.0",
            WEDNESDAY
        ),
        ["2.1.0-beta.1 ready"]
    );
    assert_eq!(
        check(AUTO, "approved_version = \"2.0.0\"\n", "2.0.0", WEDNESDAY),
        Vec::<String>::new()
    );
}

#[test]
fn manual_approval_runs_the_merged_version_in_the_window() {
    let channel = format!("mode = \"manual-approval\"\n{WINDOW}");
    assert_eq!(
        check(&channel, "version = \"1.2.0\"\n", "1.0.0", WEDNESDAY),
        ["1.2.0 deferred 2026-01-10T01:00:00+00:00 via 2"]
    );
    assert_eq!(
        check(&channel, "version = \"1.2.0\"\n", "1.0.0", SATURDAY),
        ["1.2.0 ready via 2"]
    );
    // Without a window, at once.
    assert_eq!(
        check(
            "mode = \"manual-approval\"\n",
            "version = \"1.1.0\"\n",
            "1.0.0",
            WEDNESDAY
        ),
        ["1.1.0 ready"]
    );
}

#[test]
fn manual_approval_flags_security_releases_for_review() {
    let channel = "mode = \"manual-approval\"\n";
    assert_eq!(
        check(channel, "version = \"1.0.0\"\n", "1.0.0", WEDNESDAY),
        ["1.0.1 blocked needs-approval"]
    );
}

#[test]
fn manual_approval_without_an_upgrade_path_is_blocked() {
    let channel = "mode = \"manual-approval\"\n";
    // 3.0.0 only upgrades from 2.5 or later, which does not exist.
    assert_eq!(
        check(channel, "version = \"3.0.0\"\n", "1.0.0", WEDNESDAY),
        ["3.0.0 blocked no-upgrade-path"]
    );
    // Several hops are one action.
    assert_eq!(
        check(channel, "version = \"2.0.0\"\n", "1.0.0", WEDNESDAY),
        ["2.0.0 ready via 3"]
    );
}

#[test]
fn downgrades_need_allow_downgrade() {
    let channel = "mode = \"manual-approval\"\n";
    assert_eq!(
        check(channel, "version = \"1.1.0\"\n", "1.2.0", WEDNESDAY),
        ["1.1.0 blocked downgrade-not-allowed"]
    );
    assert_eq!(
        check(
            channel,
            "version = \"1.1.0\"\nallow_downgrade = true\n",
            "1.2.0",
            WEDNESDAY
        ),
        ["1.1.0 ready"]
    );
}

#[test]
fn frozen_takes_only_critical_patches_of_its_minor_and_only_with_the_override() {
    let frozen = "mode = \"frozen\"\n";
    assert_eq!(
        check(frozen, "version = \"1.0.0\"\n", "1.0.0", WEDNESDAY),
        ["1.0.1 blocked frozen"]
    );
    let open = "mode = \"frozen\"\n[security]\noverride_frozen = true\n";
    assert_eq!(
        check(open, "version = \"1.0.0\"\n", "1.0.0", WEDNESDAY),
        ["1.0.1 ready"]
    );
    // Once patched, the instance stays on the patch: no downgrade back to the pin.
    assert_eq!(
        check(open, "version = \"1.0.0\"\n", "1.0.1", WEDNESDAY),
        Vec::<String>::new()
    );
    // Nothing beyond the minor, even critical.
    assert_eq!(
        check(open, "version = \"1.1.0\"\n", "1.1.0", WEDNESDAY),
        Vec::<String>::new()
    );
}

#[test]
fn a_changed_pin_is_an_explicit_approval() {
    assert_eq!(
        check(
            "mode = \"frozen\"\n",
            "version = \"1.1.0\"\n",
            "1.0.0",
            WEDNESDAY
        ),
        ["1.1.0 ready"]
    );
}

#[test]
fn converged_versions_ignore_windows_and_honour_approvals() {
    let channel = format!("{AUTO}{WINDOW}");
    let fleet = fleet(&channel, "version = \"1.0.0\"\n");
    let input = Input {
        instance: &fleet.instances["web"],
        channel: &fleet.channels["c"],
        releases: &fleet.releases,
        actual: None,
    };
    assert_eq!(converged(&input), Some(v("1.2.0")));
    let blocked = BlockedReason::NeedsApproval;
    assert_eq!(blocked.as_str(), "needs-approval");
    assert_eq!(Status::Deferred.as_str(), "deferred");
}
