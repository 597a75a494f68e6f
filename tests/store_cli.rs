//! The store's commands through the real binary: `state export | import`, `plan` against the
//! store, and `audit verify | query | export | checkpoint | keygen`, on SQLite and on a real
//! PostgreSQL server.

mod common;

use std::path::Path;

use common::{postgres::Postgres, stdout_of_success, wakafleet, write};
use wakafleet::{load::Limits, plan, source, validate};

const AT: &str = "2026-01-15T12:00:00Z";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A snapshot of the example fleet's converged state with one instance a release behind.
fn snapshot_file(dir: &Path) -> String {
    let inputs = source::read_folder(&root().join("fleet"), &Limits::default()).expect("read");
    let fleet = validate::check(inputs, &Limits::default()).fleet;
    let mut actual = plan::converged_base(&fleet);
    std::sync::Arc::make_mut(
        actual
            .instances
            .get_mut("nairobi-hardware-production")
            .expect("in the example"),
    )
    .version = semver::Version::new(1, 4, 2);
    let snapshot = plan::snapshot::from_actual(&actual);
    write(
        dir,
        "state.json",
        serde_json::to_string_pretty(&snapshot).expect("JSON"),
    );
    dir.join("state.json").display().to_string()
}

fn plan_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["plan", "fleet", "--at", AT, "--format", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&stdout_of_success(&wakafleet(root(), &all))).expect("JSON")
}

/// Imports the snapshot into `store`, then checks the store gives the plan the snapshot
/// gives, that export gives the snapshot back, and that the import is in the audit log.
fn state_round_trip(store: &str, dir: &Path) {
    let file = snapshot_file(dir);
    let imported = stdout_of_success(&wakafleet(
        dir,
        &["state", "import", &file, "--store", store],
    ));
    assert!(imported.contains("instances"), "{imported}");

    let from_store = plan_json(&["--store", store]);
    let from_file = plan_json(&["--state", &file]);
    assert_eq!(from_store["actions"], from_file["actions"]);
    assert_eq!(from_store["actions"].as_array().map(Vec::len), Some(1));

    let exported = stdout_of_success(&wakafleet(dir, &["state", "export", "--store", store]));
    let exported: serde_json::Value = serde_json::from_str(&exported).expect("JSON");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("JSON");
    assert_eq!(exported, original);

    let query = stdout_of_success(&wakafleet(
        dir,
        &[
            "audit",
            "query",
            "--action",
            "state.import",
            "--format",
            "json",
            "--store",
            store,
        ],
    ));
    let query: serde_json::Value = serde_json::from_str(&query).expect("JSON");
    let records = query["records"].as_array().expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["actor"]["kind"], "operator");
    assert_eq!(records[0]["after"], original);
}

#[test]
fn state_import_export_and_plan_on_sqlite() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let store = format!("sqlite://{}", dir.path().join("state.db").display());
    state_round_trip(&store, dir.path());
}

#[test]
fn state_import_export_and_plan_on_postgres() {
    let postgres = Postgres::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let database = runtime.block_on(postgres.create_database("fleet"));
    let dir = tempfile::tempdir().expect("a temporary folder");
    state_round_trip(&postgres.admin_url(&database), dir.path());
}

#[test]
fn commands_that_read_refuse_a_missing_store() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for args in [
        vec!["audit", "verify"],
        vec!["audit", "query"],
        vec!["audit", "export", "--format", "ndjson"],
        vec!["state", "export"],
    ] {
        let output = wakafleet(dir.path(), &args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("there is no store at .wakafleet/state.db"),
            "{stderr}"
        );
    }
    assert!(
        !dir.path().join(".wakafleet").exists(),
        "nothing was created"
    );
}

/// Appends `count` records through `state import`s: each import is one record.
fn imports(store: &str, dir: &Path, count: usize) {
    let file = snapshot_file(dir);
    for _ in 0..count {
        stdout_of_success(&wakafleet(
            dir,
            &["state", "import", &file, "--store", store],
        ));
    }
}

#[test]
fn audit_verify_checkpoint_query_and_export() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let db = dir.path().join("state.db");
    let store = format!("sqlite://{}", db.display());
    imports(&store, dir.path(), 3);

    // A key pair, and a checkpoint signed with it.
    let keys = stdout_of_success(&wakafleet(dir.path(), &["audit", "keygen"]));
    let secret = keys
        .lines()
        .find_map(|line| line.strip_prefix("WAKAFLEET_AUDIT_KEY="))
        .expect("a secret line");
    let public = keys
        .lines()
        .find_map(|line| line.strip_prefix("public key: "))
        .expect("a public key line");
    let checkpoints = dir.path().join("checkpoints.ndjson");
    let checkpoints = checkpoints.to_str().expect("UTF-8");
    let signed = std::process::Command::new(env!("CARGO_BIN_EXE_wakafleet"))
        .args([
            "audit",
            "checkpoint",
            "--key",
            "env:AUDIT_KEY",
            "--out",
            checkpoints,
            "--store",
            &store,
        ])
        .env("AUDIT_KEY", secret)
        .output()
        .expect("run checkpoint");
    assert!(stdout_of_success(&signed).contains("signed record 3"));
    let literal = wakafleet(
        dir.path(),
        &[
            "audit",
            "checkpoint",
            "--key",
            secret,
            "--out",
            checkpoints,
            "--store",
            &store,
        ],
    );
    assert_eq!(
        literal.status.code(),
        Some(1),
        "a secret on the command line is refused"
    );

    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", "--store", &store, "--format", "json"];
        args.extend_from_slice(extra);
        let output = wakafleet(dir.path(), &args);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stderr)));
        (output.status.code(), report)
    };
    let with_checkpoints = ["--checkpoints", checkpoints, "--public-key", public];
    let (code, report) = verify(&with_checkpoints);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        (report["records"].as_u64(), report["checkpoints"].as_u64()),
        (Some(3), Some(1))
    );

    // Another key's checkpoints are refused.
    let other_keys = stdout_of_success(&wakafleet(dir.path(), &["audit", "keygen"]));
    let other_public = other_keys
        .lines()
        .find_map(|line| line.strip_prefix("public key: "))
        .expect("a public key line");
    let output = wakafleet(
        dir.path(),
        &[
            "audit",
            "verify",
            "--store",
            &store,
            "--checkpoints",
            checkpoints,
            "--public-key",
            other_public,
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not by the trusted key"));

    // Queries page with a cursor.
    let page = stdout_of_success(&wakafleet(
        dir.path(),
        &["audit", "query", "--store", &store, "--limit", "2"],
    ));
    assert!(page.contains("more: run again with --after 2"), "{page}");
    let rest = stdout_of_success(&wakafleet(
        dir.path(),
        &[
            "audit", "query", "--store", &store, "--limit", "2", "--after", "2",
        ],
    ));
    assert_eq!(rest.lines().count(), 1, "{rest}");
    assert!(rest.trim_start().starts_with('3'), "{rest}");

    // Exports: one NDJSON line and one CSV row per record, the hashes those of the chain.
    let ndjson = stdout_of_success(&wakafleet(
        dir.path(),
        &["audit", "export", "--format", "ndjson", "--store", &store],
    ));
    let lines: Vec<serde_json::Value> = ndjson
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    assert_eq!(lines[2]["seq"], 3);
    let csv = stdout_of_success(&wakafleet(
        dir.path(),
        &["audit", "export", "--format", "csv", "--store", &store],
    ));
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = reader
        .records()
        .map(|row| row.expect("a CSV row"))
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(&rows[2][0], "3");
    assert_eq!(
        rows[2][14],
        lines[2]["hash"].as_str().expect("a hash").to_string()
    );

    // Tampering is named, with exit 1.
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        use sqlx::Connection;
        let mut connection = sqlx::SqliteConnection::connect(&store).await.expect("open");
        sqlx::raw_sql(
            "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET resource = 'other' WHERE seq = 2",
        )
        .execute(&mut connection)
        .await
        .expect("tamper");
    });
    let (code, report) = verify(&[]);
    assert_eq!(code, Some(1));
    assert_eq!(report["problem"]["seq"], 2, "{report}");
    let text = wakafleet(dir.path(), &["audit", "verify", "--store", &store]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("record 2 was changed"));
}
