//! `wakafleet validate` and `wakafleet schema` end to end: exit codes, output formats,
//! colour, and reading a fleet from a git commit.

mod common;

use std::path::Path;

use common::{FLEET_TOML, commit_all, diagnostics, minimal_fleet, wakafleet, write};

const PARTNER: &str = "id = \"acme\"\nname = \"Acme\"\nemail = \"ops@acme.example\"\n";

/// Runs `wakafleet` and expects exit 1 with `message` on stderr.
fn fails_with(dir: &Path, args: &[&str], message: &str) {
    let output = wakafleet(dir, args);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(message), "{stderr}");
}

#[test]
fn the_example_fleet_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = wakafleet(root, &["validate"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("fleet `webwaka` is valid"), "{stdout}");
}

#[test]
fn json_output_has_the_documented_shape() {
    let fleet = minimal_fleet();
    write(
        fleet.path(),
        "partners/acme.toml",
        format!("{PARTNER}colour = \"red\"\n"),
    );
    let output = wakafleet(fleet.path(), &["validate", ".", "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let diagnostic = &json["diagnostics"][0];
    let mut keys: Vec<&str> = diagnostic
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "code", "column", "file", "help", "line", "message", "severity"
        ]
    );
    assert_eq!(diagnostic["code"], "unknown-field");
    assert_eq!(diagnostic["severity"], "error");
    assert_eq!(diagnostic["file"], "partners/acme.toml");
    assert_eq!(
        (diagnostic["line"].as_u64(), diagnostic["column"].as_u64()),
        (Some(4), Some(1))
    );
}

#[test]
fn text_output_is_plain_when_not_a_terminal() {
    let fleet = minimal_fleet();
    write(
        fleet.path(),
        "partners/acme.toml",
        format!("{PARTNER}nmae = \"x\"\n"),
    );
    let output = wakafleet(fleet.path(), &["validate", "."]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1));
    assert!(!stdout.contains('\x1b'), "{stdout}");
    assert!(stdout.contains("--> partners/acme.toml:4:1"), "{stdout}");
    assert!(stdout.contains("help: did you mean `name`?"), "{stdout}");
}

/// Runs the binary on a pseudo-terminal with `script`, so colour is on unless NO_COLOR.
fn on_terminal(dir: &Path, no_color: Option<&str>) -> String {
    let binary = env!("CARGO_BIN_EXE_wakafleet");
    let mut command = std::process::Command::new("script");
    command
        .args(["-qec", &format!("{binary} validate ."), "/dev/null"])
        .current_dir(dir)
        .env_remove("NO_COLOR");
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    let output = command
        .output()
        .expect("run `script` (util-linux; install it with `apt-get install -y bsdutils`)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn text_output_is_coloured_on_a_terminal_unless_no_color() {
    let fleet = minimal_fleet();
    write(
        fleet.path(),
        "partners/acme.toml",
        format!("{PARTNER}nmae = \"x\"\n"),
    );
    assert!(on_terminal(fleet.path(), None).contains('\x1b'));
    assert!(!on_terminal(fleet.path(), Some("1")).contains('\x1b'));
    // An empty NO_COLOR does not count, as no-color.org says.
    assert!(on_terminal(fleet.path(), Some("")).contains('\x1b'));
}

#[test]
fn a_missing_folder_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().expect("temporary folder");
    fails_with(
        dir.path(),
        &["validate", "no-such-fleet"],
        "reading fleet folder `no-such-fleet`",
    );
}

#[test]
fn rev_reads_the_commit_not_the_work_tree() {
    let repo = tempfile::tempdir().expect("temporary folder");
    write(repo.path(), "fleet/fleet.toml", FLEET_TOML);
    write(repo.path(), "fleet/partners/acme.toml", PARTNER);
    let good = commit_all(repo.path(), "a valid fleet");
    write(
        repo.path(),
        "fleet/partners/acme.toml",
        PARTNER.replace("email", "mail"),
    );
    commit_all(repo.path(), "a broken partner");
    // The work tree is valid again, so only the commits differ.
    write(repo.path(), "fleet/partners/acme.toml", PARTNER);

    let at = |rev: &str| {
        wakafleet(
            repo.path(),
            &["validate", "fleet", "--rev", rev, "--format", "json"],
        )
    };
    assert_eq!(at(&good.to_string()).status.code(), Some(0));
    assert_eq!(at("HEAD~1").status.code(), Some(0));
    let broken = at("HEAD");
    assert_eq!(broken.status.code(), Some(1));
    assert_eq!(
        diagnostics(&broken),
        vec![
            (
                "missing-field".to_string(),
                "partners/acme.toml".to_string(),
                1,
                1
            ),
            (
                "unknown-field".to_string(),
                "partners/acme.toml".to_string(),
                3,
                1
            ),
        ]
    );
    assert_eq!(
        wakafleet(repo.path(), &["validate", "fleet"]).status.code(),
        Some(0)
    );
}

#[test]
fn rev_from_inside_the_fleet_folder_and_from_a_subfolder_path() {
    let repo = tempfile::tempdir().expect("temporary folder");
    write(repo.path(), "ops/fleet/fleet.toml", FLEET_TOML);
    commit_all(repo.path(), "fleet");
    let inside = wakafleet(
        &repo.path().join("ops/fleet"),
        &["validate", ".", "--rev", "HEAD"],
    );
    assert_eq!(inside.status.code(), Some(0), "{inside:?}");
    let above = wakafleet(repo.path(), &["validate", "ops/fleet", "--rev", "HEAD"]);
    assert_eq!(above.status.code(), Some(0), "{above:?}");
}

#[test]
fn rev_reports_links_and_folders_where_files_belong() {
    let repo = tempfile::tempdir().expect("temporary folder");
    write(repo.path(), "fleet.toml", FLEET_TOML);
    write(repo.path(), "partners/folder.toml/inner.toml", PARTNER);
    std::os::unix::fs::symlink("../fleet.toml", repo.path().join("partners/link.toml"))
        .expect("create link");
    commit_all(repo.path(), "odd entries");
    let output = wakafleet(
        repo.path(),
        &["validate", ".", "--rev", "HEAD", "--format", "json"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        diagnostics(&output),
        vec![
            (
                "parse".to_string(),
                "partners/folder.toml".to_string(),
                1,
                1
            ),
            ("parse".to_string(), "partners/link.toml".to_string(), 1, 1),
        ]
    );
}

#[test]
fn an_unknown_rev_is_an_error() {
    let repo = tempfile::tempdir().expect("temporary folder");
    write(repo.path(), "fleet.toml", FLEET_TOML);
    commit_all(repo.path(), "fleet");
    fails_with(
        repo.path(),
        &["validate", ".", "--rev", "no-such-branch"],
        "resolving `no-such-branch` to a commit",
    );
}

#[test]
fn rev_outside_a_repository_is_an_error() {
    let fleet = minimal_fleet();
    fails_with(
        fleet.path(),
        &["validate", ".", "--rev", "HEAD"],
        "no git repository holds",
    );
}

#[test]
fn schema_writes_one_file_per_kind() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let output = wakafleet(dir.path(), &["schema", "--out", "out"]);
    assert_eq!(output.status.code(), Some(0));
    for kind in [
        "fleet", "partner", "tenant", "channel", "release", "instance",
    ] {
        let text = std::fs::read_to_string(dir.path().join(format!("out/{kind}.schema.json")))
            .expect("schema written");
        let schema: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(schema["type"], "object", "{kind}");
    }
}

#[test]
fn rev_reads_large_fleets_whole() {
    // Enough files that blobs are read, and files decoded, on more than one thread.
    let repo = tempfile::tempdir().expect("temporary folder");
    write(repo.path(), "fleet.toml", FLEET_TOML);
    for index in 0..2_500 {
        let email = if index == 1_234 {
            "nobody"
        } else {
            "ops@p.example"
        };
        write(
            repo.path(),
            &format!("partners/p{index:04}.toml"),
            format!("id = \"p{index:04}\"\nname = \"P\"\nemail = \"{email}\"\n"),
        );
    }
    commit_all(repo.path(), "many partners");
    let output = wakafleet(
        repo.path(),
        &["validate", ".", "--rev", "HEAD", "--format", "json"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        diagnostics(&output),
        vec![(
            "invalid-value".to_string(),
            "partners/p1234.toml".to_string(),
            3,
            9
        )]
    );
    let text = wakafleet(repo.path(), &["validate", ".", "--rev", "HEAD~0"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("1 error"));
}
