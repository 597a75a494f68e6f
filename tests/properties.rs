//! Property tests: whatever the bytes or documents in a fleet folder, loading and validating
//! never panics, and every diagnostic points inside its file; and validating a sequence of
//! fleets through one cache gives what validating each alone gives.
//!
//! CI runs proptest's default number of cases; `PROPTEST_CASES=1000000 cargo test --release
//! --test properties` is the long run.

use proptest::prelude::*;
use wakafleet::{
    diag::render::{self, Color},
    load::{Content, Input, Limits},
    source, validate,
};

/// Paths in every fleet folder, in both syntaxes.
const PATHS: &[&str] = &[
    "fleet.toml",
    "fleet.yaml",
    "partners/p.toml",
    "partners/p.yaml",
    "tenants/t.toml",
    "tenants/t.yml",
    "channels/c.toml",
    "channels/c.yaml",
    "releases/1.5.0.toml",
    "releases/1.5.0.yaml",
    "instances/web.toml",
    "instances/web.yaml",
];

/// Field names of every kind, so generated documents reach the decoders' deeper paths.
const KEYS: &[&str] = &[
    "name",
    "regions",
    "sizes",
    "country",
    "docker",
    "database",
    "backups",
    "capacity",
    "cpu",
    "memory",
    "storage",
    "id",
    "email",
    "state",
    "partner",
    "mode",
    "track",
    "maintenance_window",
    "days",
    "start",
    "duration",
    "timezone",
    "auto_approve",
    "security_patches",
    "minor",
    "patch",
    "security",
    "override_frozen",
    "notify",
    "version",
    "status",
    "released",
    "breaking",
    "security_patch",
    "severity",
    "image",
    "upgrade_from",
    "migrations",
    "changelog",
    "type",
    "tenant",
    "region",
    "data_residency",
    "suites",
    "capabilities",
    "custom_domain",
    "ssl",
    "size",
    "resources",
    "channel",
    "approved_version",
    "allow_downgrade",
    "backup",
    "schedule",
    "retain",
    "ng-lagos",
    "small",
    "nmae",
];

/// Plausible and implausible scalar texts.
const WORDS: &[&str] = &[
    "",
    "web",
    "p",
    "t",
    "c",
    "1.5.0",
    "1.4.2",
    "2.0.0-beta.1",
    ">=1.4.0, <1.5.0",
    "not-semver",
    "ng-lagos",
    "NG",
    "active",
    "suspended",
    "terminated",
    "auto-update",
    "manual-approval",
    "frozen",
    "stable",
    "beta",
    "sat",
    "sun",
    "funday",
    "02:00",
    "25:00",
    "4h",
    "90m",
    "0m",
    "Africa/Lagos",
    "Mars/Base",
    "0 2 * * *",
    "61 * * * *",
    "small",
    "2.0",
    "4096M",
    "50G",
    "9T",
    "-1",
    "env:X",
    "env:",
    "postgres://a:b@c/d",
    "unix:///var/run/docker.sock",
    "ops@x.example",
    "shared-saas",
    "partner-deployed",
    "2026-01-30",
    "2026-13-40",
    "~",
    "null",
    "true",
    "é∂",
    "shop.example.com",
    "ghp_0123456789abcdefghij",
];

#[derive(Clone, Debug)]
enum Doc {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Array(Vec<Doc>),
    Table(Vec<(String, Doc)>),
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => "[a-z_ .\"]{0,8}",
    ]
}

fn doc() -> impl Strategy<Value = Doc> {
    let leaf = prop_oneof![
        4 => prop::sample::select(WORDS).prop_map(|word| Doc::Text(word.to_string())),
        1 => any::<String>().prop_map(Doc::Text),
        1 => any::<i64>().prop_map(Doc::Integer),
        1 => any::<f64>().prop_map(Doc::Float),
        1 => any::<bool>().prop_map(Doc::Boolean),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Doc::Array),
            prop::collection::vec((key(), inner), 0..8).prop_map(Doc::Table),
        ]
    })
}

fn root() -> impl Strategy<Value = Doc> {
    prop::collection::vec((key(), doc()), 0..12).prop_map(Doc::Table)
}

/// TOML text of a document: top-level keys, with inline tables below.
fn to_toml(doc: &Doc) -> String {
    fn key(name: &str) -> String {
        let bare = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare {
            name.to_string()
        } else {
            serde_json::to_string(name).expect("a string")
        }
    }
    fn value(doc: &Doc) -> String {
        match doc {
            Doc::Text(text) => serde_json::to_string(text).expect("a string"),
            Doc::Integer(number) => number.to_string(),
            Doc::Float(number) if number.is_finite() => format!("{number:?}"),
            Doc::Float(_) => "nan".to_string(),
            Doc::Boolean(boolean) => boolean.to_string(),
            Doc::Array(items) => {
                format!(
                    "[{}]",
                    items.iter().map(value).collect::<Vec<_>>().join(", ")
                )
            }
            Doc::Table(entries) => format!(
                "{{ {} }}",
                entries
                    .iter()
                    .map(|(name, doc)| format!("{} = {}", key(name), value(doc)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    match doc {
        Doc::Table(entries) => entries
            .iter()
            .map(|(name, doc)| format!("{} = {}\n", key(name), value(doc)))
            .collect(),
        other => value(other),
    }
}

/// YAML text of a document in block style, with plain scalars where they stay strings.
fn to_yaml(doc: &Doc, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match doc {
        Doc::Table(entries) if !entries.is_empty() => {
            for (name, value) in entries {
                out.push_str(&format!(
                    "\n{pad}{}:",
                    serde_json::to_string(name).expect("a string")
                ));
                to_yaml(value, indent + 2, out);
            }
        }
        Doc::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&format!("\n{pad}-"));
                to_yaml(item, indent + 2, out);
            }
        }
        Doc::Table(_) => out.push_str(" {}"),
        Doc::Array(_) => out.push_str(" []"),
        Doc::Text(text)
            if text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-./ ".contains(c)) =>
        {
            out.push_str(&format!(" {text}"));
        }
        Doc::Text(text) => out.push_str(&format!(
            " {}",
            serde_json::to_string(text).expect("a string")
        )),
        Doc::Integer(number) => out.push_str(&format!(" {number}")),
        Doc::Float(number) => out.push_str(&format!(" {number:?}")),
        Doc::Boolean(boolean) => out.push_str(&format!(" {boolean}")),
    }
}

/// Validates files given as bytes.
fn validate_bytes(files: Vec<(String, Vec<u8>)>) -> validate::Validation {
    let inputs = files
        .into_iter()
        .map(|(path, bytes)| Input {
            path,
            content: Content::Bytes(bytes),
        })
        .collect();
    validate::check(inputs, &Limits::default())
}

/// Validates the files and checks every diagnostic's span lies in its file.
fn check(files: Vec<(String, Vec<u8>)>) {
    let validation = validate_bytes(files);
    for diagnostic in &validation.diagnostics {
        let span = diagnostic.primary;
        let text = validation.sources.text(span.file);
        assert!(span.start <= span.end, "{diagnostic:?}");
        assert!(
            span.end as usize <= text.len(),
            "{diagnostic:?} past the end of {text:?}"
        );
        assert!(!diagnostic.message.is_empty());
    }
}

fn text_for(path: &str, doc: &Doc) -> Vec<u8> {
    if path.ends_with(".toml") {
        to_toml(doc).into_bytes()
    } else {
        let mut out = String::new();
        to_yaml(doc, 0, &mut out);
        out.into_bytes()
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(files in prop::collection::vec(
        (prop::sample::select(PATHS), prop::collection::vec(any::<u8>(), 0..256)), 0..6)
    ) {
        check(files.into_iter().map(|(path, bytes)| (path.to_string(), bytes)).collect());
    }

    #[test]
    fn arbitrary_documents_never_panic(files in prop::collection::vec(
        (prop::sample::select(PATHS), root()), 0..6)
    ) {
        check(files.iter().map(|(path, doc)| (path.to_string(), text_for(path, doc))).collect());
    }

    #[test]
    fn mutated_example_files_never_panic(
        picks in prop::collection::vec((0usize..1000, prop::collection::vec((0usize..4096, any::<u8>(), 0u8..3), 1..6)), 1..8)
    ) {
        let example = example_files();
        let files = picks.into_iter().map(|(which, edits)| {
            let (path, text) = &example[which % example.len()];
            let mut bytes = text.clone().into_bytes();
            for (at, byte, how) in edits {
                let at = at % (bytes.len() + 1);
                match how {
                    0 => bytes.insert(at, byte),
                    1 if at < bytes.len() => { bytes.remove(at); }
                    _ if at < bytes.len() => bytes[at] = byte,
                    _ => bytes.push(byte),
                }
            }
            (path.clone(), bytes)
        }).collect();
        check(files);
    }

    #[test]
    fn validating_through_a_cache_gives_what_check_gives(
        versions in prop::collection::vec(prop::collection::vec(
            (0usize..1000, prop::option::of((0usize..4096, any::<u8>())), prop::option::weighted(0.2, 0usize..100)),
            0..6), 1..5)
    ) {
        check_through_one_cache(versions.iter().map(|picks| example_version(picks)).collect());
    }
}

/// A change to the example fleet: which file, a byte to write where, and an index of `PATHS`
/// to move the file to.
type Pick = (usize, Option<(usize, u8)>, Option<usize>);

/// The example fleet with, for each pick, one file edited (a byte replaced or inserted)
/// and/or moved to one of `PATHS`.
fn example_version(picks: &[Pick]) -> Vec<Input> {
    let mut files: Vec<(String, Vec<u8>)> = example_files()
        .iter()
        .map(|(path, text)| (path.clone(), text.clone().into_bytes()))
        .collect();
    for &(which, edit, moved) in picks {
        let index = which % files.len();
        let (path, bytes) = &mut files[index];
        if let Some((at, byte)) = edit {
            let at = at % (bytes.len() + 1);
            if at < bytes.len() && byte % 2 == 0 {
                bytes[at] = byte;
            } else {
                bytes.insert(at, byte);
            }
        }
        if let Some(moved) = moved {
            *path = PATHS[moved % PATHS.len()].to_string();
        }
    }
    files
        .into_iter()
        .map(|(path, bytes)| Input {
            path,
            content: Content::Bytes(bytes),
        })
        .collect()
}

/// Validates each version through one cache and alone, and compares what they give.
fn check_through_one_cache(versions: Vec<Vec<Input>>) {
    let limits = Limits::default();
    let mut cache = validate::Cache::default();
    for inputs in versions {
        let cached = validate::check_cached(source::identify(inputs.clone()), &limits, &mut cache);
        let plain = validate::check(inputs, &limits);
        // `Spanned` compares values only; the debug form shows the spans too.
        assert_eq!(format!("{:?}", cached.fleet), format!("{:?}", plain.fleet));
        assert_eq!(cached.diagnostics, plain.diagnostics);
        assert_eq!(
            render::text(&cached.diagnostics, &cached.sources, Color::Never),
            render::text(&plain.diagnostics, &plain.sources, Color::Never)
        );
    }
}

/// The example fleet's files, read once.
fn example_files() -> &'static [(String, String)] {
    static FILES: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet");
        wakafleet::source::read_folder(&root, &Limits::default())
            .expect("read the example fleet")
            .into_iter()
            .filter_map(|input| match input.content {
                Content::Bytes(bytes) => Some((input.path, String::from_utf8(bytes).ok()?)),
                _ => None,
            })
            .collect()
    })
}

#[test]
fn generated_documents_are_well_formed_for_valid_input() {
    // The generators must produce parseable text, or the document property only tests the
    // parsers' error paths.
    let doc = Doc::Table(vec![
        ("id".to_string(), Doc::Text("p".to_string())),
        ("name".to_string(), Doc::Text("P".to_string())),
        ("email".to_string(), Doc::Text("ops@x.example".to_string())),
    ]);
    let mut fleet = vec![("fleet.toml".to_string(), b"name = \"f\"\n".to_vec())];
    fleet.push((
        "partners/p.toml".to_string(),
        text_for("partners/p.toml", &doc),
    ));
    fleet.push((
        "partners/q.yaml".to_string(),
        text_for("partners/q.yaml", &doc),
    ));
    let validation = validate_bytes(fleet);
    let codes: Vec<_> = validation
        .diagnostics
        .iter()
        .map(|d| (d.code, d.message.clone()))
        .collect();
    // Only the YAML copy is wrong: its id `p` does not match its file name `q`, and repeats `p`.
    assert_eq!(codes.len(), 2, "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|(code, _)| matches!(code.as_str(), "file-name-mismatch" | "duplicate-id")),
        "{codes:?}"
    );
}
