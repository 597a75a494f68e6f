//! The core does no I/O and reads no clock: `diag`, `model`, `load`, `validate`, `policy`,
//! `backups`, `plan`, `parallel` and `secret` import no async runtime,
//! database, container, network or git crate, nor an edge of wakafleet (source, store, queue,
//! image, driver), and do not touch the file system.

use std::path::Path;

const CORE: &[&str] = &[
    "diag", "model", "load", "validate", "policy", "backups", "plan", "parallel", "secret",
];
const FORBIDDEN: &[&str] = &[
    "tokio",
    "sqlx",
    "bollard",
    "redis",
    "axum",
    "git2",
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "Utc::now",
    "SystemTime",
    "Instant::now",
    // The edges of the crate itself.
    "crate::source",
    "crate::store",
    "crate::queue",
    "crate::image",
    "crate::driver",
];

/// Modules of `std` the core must not use, however the `use` is spelled.
const FORBIDDEN_STD: &[&str] = &["fs", "net", "process", "env"];

/// The first segment of every path a `use std::...;` statement of `text` imports, across
/// lines and nested groups: `use std::{fs, collections::BTreeMap};` gives `fs` and
/// `collections`.
fn std_imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("use std::") {
        let statement = &rest[start + "use std::".len()..];
        let end = statement.find(';').unwrap_or(statement.len());
        let compact: String = statement[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        match compact
            .strip_prefix('{')
            .and_then(|group| group.strip_suffix('}'))
        {
            Some(group) => {
                // Split the group at its top-level commas only.
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars().chain([',']) {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            found.push(first_segment(&item));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
            }
            None => found.push(first_segment(&compact)),
        }
        rest = &statement[end..];
    }
    found.retain(|segment| !segment.is_empty());
    found
}

fn first_segment(path: &str) -> String {
    path.split([':', '{', ' '])
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn use_groups_are_taken_apart() {
    let text = "use std::{\n    fs,\n    collections::{BTreeMap, HashMap},\n};\nuse std::env::var;\nuse std::fmt;";
    assert_eq!(std_imports(text), ["fs", "collections", "env", "fmt"]);
}

fn rust_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source folder") {
        let path = entry.expect("folder entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn the_core_does_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for module in CORE {
        let folder = src.join(module);
        if folder.is_dir() {
            rust_files(&folder, &mut files);
        } else {
            files.push(src.join(format!("{module}.rs")));
        }
    }
    assert!(
        files.len() >= CORE.len(),
        "core modules not found under {}",
        src.display()
    );
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for name in FORBIDDEN {
                if line.contains(name) {
                    offences.push(format!("{}:{}: {name}", file.display(), number + 1));
                }
            }
        }
        for module in std_imports(&text) {
            if FORBIDDEN_STD.contains(&module.as_str()) {
                offences.push(format!("{}: use std::{module}", file.display()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the core imports I/O:\n{}",
        offences.join("\n")
    );
}

#[test]
fn plan_fields_is_a_leaf_that_imports_no_other_part_of_plan() {
    // `plan::actual` builds on `plan::fields`; an import the other way made a cycle once.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/plan/fields.rs");
    let text = std::fs::read_to_string(&path).expect("read plan/fields.rs");
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    for other in ["actual", "render", "snapshot"] {
        assert!(
            !compact.contains(&format!("plan::{other}"))
                && !compact.contains(&format!("plan::{{{other}"))
                && !compact.contains(&format!("super::{other}")),
            "plan/fields.rs imports plan::{other}"
        );
    }
}
