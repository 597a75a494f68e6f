//! Hostile input through the real binary: each case is a diagnostic and exit 1, never a
//! panic or a hang (the helper fails a run that takes over a minute).

mod common;

use common::{diagnostics, minimal_fleet, wakafleet, write};

/// Adds `path` with `contents` to a minimal fleet, validates it, expects exit 1, and
/// returns the diagnostics `(code, file, line, column)`.
fn run(path: &str, contents: impl AsRef<[u8]>) -> Vec<(String, String, u64, u64)> {
    let fleet = minimal_fleet();
    write(fleet.path(), path, contents);
    let output = wakafleet(fleet.path(), &["validate", ".", "--format", "json"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    diagnostics(&output)
}

/// Expects exactly one diagnostic `(code, line, column)`, in the added file.
fn check(path: &str, contents: impl AsRef<[u8]>, expected: (&str, u64, u64)) {
    let (code, line, column) = expected;
    assert_eq!(
        run(path, contents),
        vec![(code.to_string(), path.to_string(), line, column)]
    );
}

/// Expects exactly one diagnostic with `code` in the added file; where in the file the
/// parser gives up is its own business.
fn check_code(path: &str, contents: impl AsRef<[u8]>, code: &str) {
    let found = run(path, contents);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0.as_str(), found[0].1.as_str()), (code, path));
}

#[test]
fn a_file_over_one_mebibyte_is_too_large() {
    let big = format!("# {}\n", "x".repeat(2 << 20));
    check("instances/big.toml", big, ("too-large", 1, 1));
}

#[test]
fn the_billion_laughs_document_is_too_large() {
    let mut yaml = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (level, name) in ('b'..='j').enumerate() {
        let previous = (b'a' + level as u8) as char;
        let aliases = vec![format!("*{previous}"); 9].join(", ");
        yaml += &format!("{name}: &{name} [{aliases}]\n");
    }
    // The budget of 100,000 values is passed while expanding `f` (9^5 = 59,049 each).
    check("instances/lol.yaml", yaml, ("too-large", 6, 8));
}

#[test]
fn deep_toml_arrays_are_a_parse_error() {
    let depth = 100_000;
    let toml = format!("a = {}{}\n", "[".repeat(depth), "]".repeat(depth));
    check_code("instances/deep.toml", toml, "parse");
}

#[test]
fn deep_toml_inline_tables_are_a_parse_error() {
    let depth = 100_000;
    let toml = format!("a = {}1{}\n", "{b = ".repeat(depth), "}".repeat(depth));
    check_code("instances/deep.toml", toml, "parse");
}

#[test]
fn deep_yaml_flow_nesting_is_a_parse_error() {
    let depth = 100_000;
    let yaml = format!("a: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    check_code("instances/deep.yaml", yaml, "parse");
}

#[test]
fn deep_yaml_block_nesting_stops_at_the_limit() {
    // Block nesting costs indentation, so 1,400 levels is about what fits in 1 MiB.
    let yaml: String = (0..1_400)
        .map(|level| format!("{}a:\n", " ".repeat(level)))
        .collect();
    // Level 33 opens on line 33, indented 32 columns.
    check("instances/deep.yaml", yaml, ("parse", 33, 33));
}

#[test]
fn invalid_utf8_is_a_parse_error_at_the_first_bad_byte() {
    check(
        "instances/bad.toml",
        b"name = \"ab\xff\"\n",
        ("parse", 1, 11),
    );
}

#[test]
fn duplicate_yaml_keys_are_a_parse_error_at_the_second() {
    check(
        "partners/p.yaml",
        "id: p\nname: P\nid: q\n",
        ("parse", 3, 1),
    );
}

#[test]
fn a_directory_named_like_a_fleet_file_is_reported() {
    let fleet = minimal_fleet();
    std::fs::create_dir_all(fleet.path().join("instances/web.toml")).expect("create folder");
    let output = wakafleet(fleet.path(), &["validate", ".", "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        diagnostics(&output),
        vec![("parse".to_string(), "instances/web.toml".to_string(), 1, 1)]
    );
}

#[test]
fn fleet_toml_that_is_a_directory_is_reported() {
    let fleet = tempfile::tempdir().expect("temporary folder");
    std::fs::create_dir_all(fleet.path().join("fleet.toml")).expect("create folder");
    let output = wakafleet(fleet.path(), &["validate", ".", "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        diagnostics(&output),
        vec![("parse".to_string(), "fleet.toml".to_string(), 1, 1)]
    );
}

#[test]
fn symbolic_links_are_not_followed() {
    let fleet = minimal_fleet();
    let outside = tempfile::tempdir().expect("temporary folder");
    write(outside.path(), "secret.toml", "id = \"x\"\n");
    std::fs::create_dir_all(fleet.path().join("partners")).expect("create folder");
    std::os::unix::fs::symlink(
        outside.path().join("secret.toml"),
        fleet.path().join("partners/x.toml"),
    )
    .expect("create link");
    let output = wakafleet(fleet.path(), &["validate", ".", "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        diagnostics(&output),
        vec![("parse".to_string(), "partners/x.toml".to_string(), 1, 1)]
    );
}

#[test]
fn many_problems_in_one_file_are_all_reported() {
    let yaml = "name: Bad_Name\ntype: shared-saas\npartnr: p\nregion: mars\ndata_residency: [NG]\nsize: small\nchannel: none\nssl: maybe\n";
    let fleet = minimal_fleet();
    write(fleet.path(), "instances/Bad_Name.yaml", yaml);
    let output = wakafleet(fleet.path(), &["validate", ".", "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let codes: Vec<String> = diagnostics(&output).into_iter().map(|d| d.0).collect();
    for code in ["missing-field", "unknown-field", "invalid-value"] {
        assert!(
            codes.contains(&code.to_string()),
            "{code} missing from {codes:?}"
        );
    }
}

#[test]
fn yaml_nulls_count_as_missing() {
    let fleet = minimal_fleet();
    write(
        fleet.path(),
        "partners/acme.toml",
        "id = \"acme\"\nname = \"Acme\"\nemail = \"ops@acme.example\"\n",
    );
    write(
        fleet.path(),
        "channels/stable.toml",
        "name = \"stable\"\nmode = \"auto-update\"\n",
    );
    let instance = "name: shop\ntype: partner-deployed\npartner: acme\ntenant: ~\nregion: ng-lagos\ndata_residency: [NG]\nsize:\nchannel: stable\n";
    write(fleet.path(), "instances/shop.yaml", instance);
    let output = wakafleet(fleet.path(), &["validate", ".", "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let file = "instances/shop.yaml".to_string();
    assert_eq!(
        diagnostics(&output),
        vec![
            ("size-and-resources".to_string(), file.clone(), 1, 1),
            ("missing-field".to_string(), file, 4, 1),
        ]
    );
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let fleet = minimal_fleet();
    let partner = "id = \"p\"\nname = \"P\"\nemail = \"ops@p.example\"\n";
    write(
        fleet.path(),
        "partners/p.toml",
        format!("\u{feff}{partner}"),
    );
    write(
        fleet.path(),
        "partners/q.yaml",
        "\u{feff}id: q\nname: Q\nemail: ops@q.example\ncolour: red\n",
    );
    let output = wakafleet(fleet.path(), &["validate", ".", "--format", "json"]);
    assert_eq!(
        diagnostics(&output),
        vec![(
            "unknown-field".to_string(),
            "partners/q.yaml".to_string(),
            4,
            1
        )]
    );
}
