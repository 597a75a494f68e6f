//! The core does no I/O and reads no clock: `diag`, `model`, `load`, `validate`, `policy`,
//! `plan` and `parallel` import no async runtime,
//! database, container, network or git crate, and do not touch the file system.

use std::path::Path;

const CORE: &[&str] = &[
    "diag", "model", "load", "validate", "policy", "plan", "parallel",
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
    "Utc::now",
    "SystemTime",
    "Instant::now",
];

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
    }
    assert!(
        offences.is_empty(),
        "the core imports I/O:\n{}",
        offences.join("\n")
    );
}
