//! The validator against fixture fleets.
//!
//! Each folder under `tests/fixtures/invalid/` is named after a diagnostic code and holds a
//! minimal fleet (`fleet/`) with that one problem, and `expected.txt`: every diagnostic the
//! run must produce, one per line as `<code> <file>:<line>:<column>` (`#` starts a comment).
//! The example fleet in `fleet/` must produce no diagnostic at all.
//! A few fixtures are also snapshotted as the text a user sees.

use std::{
    fs,
    path::{Path, PathBuf},
};

use wakafleet::{
    diag::{
        Code,
        render::{self, Color},
    },
    load::Limits,
    source,
    validate::{self, Validation},
};

/// Files a fixture needs but the repository should not hold, written into a copy of the
/// fixture before it is validated: `(fixture, path in its fleet, size in bytes)`.
const GENERATED: &[(&str, &str, usize)] = &[
    // One byte over the 1 MiB limit of a fleet file.
    ("too-large", "partners/huge.toml", (1 << 20) + 1),
];

#[test]
fn every_fixture_gives_exactly_its_expected_diagnostics() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= Code::ALL.len(), "found only {fixtures:?}");
    let failures: Vec<String> = fixtures
        .iter()
        .filter_map(|fixture| check(fixture).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ from their expected.txt:\n\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_code_has_a_fixture_that_shows_only_that_code() {
    let fixtures = fixtures();
    let missing: Vec<&str> = Code::ALL
        .iter()
        .map(|code| code.as_str())
        .filter(|code| !fixtures.iter().any(|fixture| fixture == code))
        .collect();
    assert!(
        missing.is_empty(),
        "no folder under {} for the codes {missing:?}",
        fixtures_root().display()
    );
    for code in Code::ALL {
        let expected = expected(code.as_str());
        assert!(
            !expected.is_empty(),
            "{code}/expected.txt lists no diagnostic"
        );
        let others: Vec<&String> = expected
            .iter()
            .filter(|line| line.split(' ').next() != Some(code.as_str()))
            .collect();
        assert!(
            others.is_empty(),
            "the {code} fixture should show only {code}, but expects {others:?}"
        );
    }
}

#[test]
fn the_example_fleet_has_no_diagnostics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet");
    let validation = validate(&root);
    assert!(
        validation.diagnostics.is_empty(),
        "{}",
        render::text(&validation.diagnostics, &validation.sources, Color::Never)
    );
    // Guard against a vacuous pass: every instance file became an instance.
    let instance_files = fs::read_dir(root.join("instances"))
        .expect("the example fleet has instances/")
        .filter(|entry| {
            let path = entry.as_ref().expect("instances/ entry").path();
            path.extension().is_some_and(|extension| {
                ["toml", "yaml", "yml"].contains(&&*extension.to_string_lossy())
            })
        })
        .count();
    assert_eq!(validation.fleet.instances.len(), instance_files);
    assert!(instance_files > 0);
}

#[test]
fn snapshot_of_an_unknown_field() {
    insta::assert_snapshot!("unknown-field", rendered("unknown-field"));
}

#[test]
fn snapshot_of_a_dangling_reference() {
    insta::assert_snapshot!("dangling-reference", rendered("dangling-reference"));
}

#[test]
fn snapshot_of_a_yaml_parse_error() {
    insta::assert_snapshot!("parse", rendered("parse"));
}

#[test]
fn snapshot_of_a_partner_mismatch() {
    insta::assert_snapshot!("partner-mismatch", rendered("partner-mismatch"));
}

/// Validates a fixture and compares its diagnostics with its `expected.txt`, as multisets;
/// on a difference, says what is missing, what is unexpected, and shows the rendered text.
fn check(fixture: &str) -> Result<(), String> {
    let validation = validate_fixture(fixture);
    let actual: Vec<String> = render::entries(&validation.diagnostics, &validation.sources)
        .iter()
        .map(|entry| {
            format!(
                "{} {}:{}:{}",
                entry.code, entry.file, entry.line, entry.column
            )
        })
        .collect();
    let mut unexpected = actual.clone();
    let mut missing = Vec::new();
    for line in expected(fixture) {
        match unexpected.iter().position(|found| *found == line) {
            Some(index) => {
                unexpected.remove(index);
            }
            None => missing.push(line),
        }
    }
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let mut report = format!("--- {fixture}/expected.txt\n+++ {fixture}/fleet (actual)\n");
    for line in &missing {
        report += &format!("- {line}\n");
    }
    for line in &unexpected {
        report += &format!("+ {line}\n");
    }
    report += "all diagnostics:\n";
    report += &render::text(&validation.diagnostics, &validation.sources, Color::Never);
    Err(report)
}

/// The rendered text of a fixture's diagnostics, without colours.
fn rendered(fixture: &str) -> String {
    let validation = validate_fixture(fixture);
    render::text(&validation.diagnostics, &validation.sources, Color::Never)
}

/// Validates a fixture's fleet, in a temporary copy with its [`GENERATED`] files if it has any.
fn validate_fixture(fixture: &str) -> Validation {
    let fleet = fixtures_root().join(fixture).join("fleet");
    let generated: Vec<_> = GENERATED
        .iter()
        .filter(|(name, _, _)| *name == fixture)
        .collect();
    if generated.is_empty() {
        return validate(&fleet);
    }
    let copy = tempfile::tempdir().expect("temporary folder");
    copy_folder(&fleet, copy.path());
    for (_, path, size) in generated {
        let path = copy.path().join(path);
        fs::create_dir_all(path.parent().expect("generated files are in a folder"))
            .expect("create folder");
        let mut text = "# generated by tests/diagnostics.rs\n".to_string();
        text += &"x".repeat(size.saturating_sub(text.len()));
        fs::write(&path, text).expect("write generated file");
    }
    validate(copy.path())
}

fn validate(root: &Path) -> Validation {
    let limits = Limits::default();
    let inputs = source::read_folder(root, &limits)
        .unwrap_or_else(|error| panic!("reading {}: {error}", root.display()));
    validate::check(inputs, &limits)
}

/// The non-comment, non-blank lines of a fixture's `expected.txt`, trimmed.
fn expected(fixture: &str) -> Vec<String> {
    let path = fixtures_root().join(fixture).join("expected.txt");
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid")
}

/// The names of the fixture folders, sorted.
fn fixtures() -> Vec<String> {
    let root = fixtures_root();
    let mut names: Vec<String> = fs::read_dir(&root)
        .unwrap_or_else(|error| panic!("reading {}: {error}", root.display()))
        .map(|entry| entry.expect("fixture folder entry"))
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn copy_folder(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create folder");
    for entry in fs::read_dir(from).expect("read fixture folder") {
        let entry = entry.expect("fixture folder entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}
