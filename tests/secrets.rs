//! Secrets never print: the commands and the driver handle a store URL, a region's
//! administrator URL, an instance's password, an `env:` secret and the audit signing key,
//! each a marker, with `WAKAFLEET_LOG=trace` and a PostgreSQL server that logs every
//! statement; no marker may appear in stdout, stderr, the log events, the errors, `Debug`
//! output, the plan, the audit rows, the jobs' store (its file and its audit log) or the
//! server's log.
//!
//! This is the only test of its binary: it sets environment variables for itself and the
//! commands it starts.

mod common;

use std::{
    collections::BTreeMap,
    io::Write,
    sync::{Arc, Mutex},
};

use common::{
    docker::{Sweep, images, target},
    jobs::Jobs,
    minimal_fleet,
    postgres::Postgres,
    wakafleet,
};
use sqlx::Connection;
use wakafleet::{
    driver::{Driver, Options, Region, database::scram_verifier},
    secret::Secret,
    store::checkpoint,
};

/// The administrator's password: with `/` and `@`, which a URL must escape and a careless
/// redaction splits at. Its tail is what is looked for, in clear or escaped alike.
const ADMIN_PASSWORD: &str = "s3cr/et@Mk7c1fA";
const ADMIN_PASSWORD_ESCAPED: &str = "s3cr%2Fet%40Mk7c1fA";
const ADMIN_MARKER: &str = "Mk7c1fA";
/// The value of the `env:` secret given to the containers.
const ENV_MARKER: &str = "EnvMarker93ab";
const ENV_VARIABLE: &str = "WAKAFLEET_TEST_API_KEY";
const AUDIT_KEY_VARIABLE: &str = "WAKAFLEET_TEST_AUDIT_KEY";
const BAD_KEY_VARIABLE: &str = "WAKAFLEET_TEST_BAD_KEY";
const BAD_KEY: &str = "not-hex-BadKeyMarker5e";

/// Log events of this process, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("the log")).into_owned()
    }
}

/// Everything a person or a log collector could read, by where it came from.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn add(&mut self, place: &str, text: impl Into<String>) {
        self.0.push((place.to_string(), text.into()));
    }

    fn command(&mut self, what: &str, output: &std::process::Output) {
        self.add(
            &format!("{what}: stdout"),
            String::from_utf8_lossy(&output.stdout),
        );
        self.add(
            &format!("{what}: stderr"),
            String::from_utf8_lossy(&output.stderr),
        );
    }

    /// Fails naming every place a marker was seen in.
    fn assert_none_of(&self, markers: &[(&str, &str)]) {
        let mut leaks = Vec::new();
        for (place, text) in &self.0 {
            for (what, marker) in markers {
                if text.contains(marker) {
                    leaks.push(format!("{what} in {place}:\n{text}"));
                }
            }
        }
        assert!(leaks.is_empty(), "secrets printed:\n{}", leaks.join("\n\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_printed_logged_planned_audited_or_sent_in_clear() {
    let (audit_key, _public_key) = checkpoint::generate().expect("a key pair");
    // SAFETY: this binary holds this one test, and nothing else of it reads the environment
    // while these are set, at its start.
    unsafe {
        std::env::set_var("WAKAFLEET_LOG", "trace");
        std::env::set_var(ENV_VARIABLE, ENV_MARKER);
        std::env::set_var(AUDIT_KEY_VARIABLE, &audit_key);
        std::env::set_var(BAD_KEY_VARIABLE, BAD_KEY);
    }
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    images();
    let sweep = Sweep::new();
    let postgres = Postgres::start_with(&[("fsync", "off"), ("log_statement", "all")]);
    // The administrator is made with a verifier too, so the test itself sends no marker.
    let verifier = scram_verifier(&Secret::new(ADMIN_PASSWORD)).expect("a verifier");
    postgres
        .execute(
            "postgres",
            &format!("CREATE ROLE wf_admin SUPERUSER LOGIN PASSWORD '{verifier}'"),
        )
        .await
        .expect("the administrator");
    postgres
        .execute("postgres", "CREATE DATABASE fleet_store OWNER wf_admin")
        .await
        .expect("the store's database");
    let port = postgres.port;
    let store =
        format!("postgres://wf_admin:{ADMIN_PASSWORD_ESCAPED}@127.0.0.1:{port}/fleet_store");
    let mistyped = store.replacen("postgres://", "postgress://", 1);
    let unescaped = store.replace(ADMIN_PASSWORD_ESCAPED, ADMIN_PASSWORD);
    let wrong_password = store.replace("s3cr%2Fet%40", "wrong-");
    let no_scheme = store.replacen("postgres://", "", 1);
    let mut seen = Seen::default();

    // The commands, with the URL as users type it: right, mistyped, unescaped, unreachable.
    let fleet = minimal_fleet();
    let cwd = fleet.path();
    let snapshot = cwd.join("state.json");
    let snapshot = snapshot.to_str().expect("a UTF-8 path");
    let checkpoints = cwd.join("checkpoints");
    let checkpoints = checkpoints.to_str().expect("a UTF-8 path");
    let (audit_key_reference, bad_key_reference) = (
        format!("env:{AUDIT_KEY_VARIABLE}"),
        format!("env:{BAD_KEY_VARIABLE}"),
    );
    let unreachable = store.replace(&format!(":{port}/"), ":1/");
    // What each run does, whether it must succeed, and its arguments.
    let runs: Vec<(&str, bool, Vec<&str>)> = vec![
        (
            "state export",
            true,
            vec!["state", "export", "--store", &store, "--out", snapshot],
        ),
        (
            "state import",
            true,
            vec!["state", "import", snapshot, "--store", &store],
        ),
        (
            "plan",
            true,
            vec!["plan", ".", "--store", &store, "--format", "json"],
        ),
        (
            "audit verify",
            true,
            vec!["audit", "verify", "--store", &store],
        ),
        (
            "audit export",
            true,
            vec!["audit", "export", "--format", "ndjson", "--store", &store],
        ),
        (
            "audit checkpoint",
            true,
            vec![
                "audit",
                "checkpoint",
                "--key",
                &audit_key_reference,
                "--out",
                checkpoints,
                "--store",
                &store,
            ],
        ),
        (
            "audit checkpoint with a bad key",
            false,
            vec![
                "audit",
                "checkpoint",
                "--key",
                &bad_key_reference,
                "--out",
                checkpoints,
                "--store",
                &store,
            ],
        ),
        (
            "a mistyped scheme",
            false,
            vec!["audit", "verify", "--store", &mistyped],
        ),
        (
            "an unescaped password",
            false,
            vec![
                "audit",
                "verify",
                "--store-wait",
                "1",
                "--store",
                &unescaped,
            ],
        ),
        (
            "an unreachable server",
            false,
            vec![
                "audit",
                "verify",
                "--store-wait",
                "1",
                "--store",
                &unreachable,
            ],
        ),
        (
            "a wrong password",
            false,
            vec![
                "audit",
                "verify",
                "--store-wait",
                "1",
                "--store",
                &wrong_password,
            ],
        ),
        (
            "no scheme",
            false,
            vec!["audit", "verify", "--store", &no_scheme],
        ),
    ];
    for (what, works, args) in &runs {
        let output = wakafleet(cwd, args);
        assert_eq!(
            output.status.success(),
            *works,
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        seen.command(what, &output);
    }
    seen.add(
        "the snapshot",
        std::fs::read_to_string(snapshot).expect("the snapshot"),
    );
    seen.add(
        "the checkpoints",
        std::fs::read_to_string(checkpoints).expect("the checkpoints"),
    );

    // The driver through the jobs layer: an instance with an `env:` secret, provisioned (its
    // role made), provisioned again (its role's password set again), upgraded to a release
    // that fails and rolls back, and terminated (pg_dump); and a region whose administrator
    // password is wrong. The jobs keep their steps, errors and audit in a SQLite store.
    let backups = tempfile::tempdir().expect("a temporary folder");
    let region = Region {
        name: "ng-lagos".into(),
        docker: "unix:///var/run/docker.sock".into(),
        database: Secret::new(format!(
            "postgres://wf_admin:{ADMIN_PASSWORD_ESCAPED}@127.0.0.1:{port}/postgres"
        )),
        backups: backups.path().to_path_buf(),
    };
    let options = Options {
        labels: sweep.labels(),
        ..Options::default()
    };
    let jobs = Jobs::new(
        Driver::new(&region, options.clone()).expect("a driver"),
        "ng-lagos",
    )
    .await;
    let mut v1 = target("sec", "1.0.0");
    v1.secrets = BTreeMap::from([("API_KEY".into(), format!("env:{ENV_VARIABLE}"))]);
    let mut broken = target("sec", "1.2.0");
    broken.secrets = v1.secrets.clone();
    jobs.provision(&v1).await.expect("provisioned");
    jobs.provision(&v1).await.expect("provisioned again");
    // Read before terminate forgets it.
    let password = jobs.password("sec").await;
    let error = jobs
        .upgrade(&v1, &broken)
        .await
        .expect_err("1.2.0 is unhealthy");
    assert!(error.contains("rolled back"), "{error}");
    seen.add("a failed upgrade's error", error);
    let failed = jobs.latest("sec").await;
    seen.add("the failed upgrade's job", format!("{failed:?}"));
    let steps = jobs.store.steps(&failed.id).await.expect("the steps");
    seen.add("the failed upgrade's steps", format!("{steps:?}"));
    jobs.terminate("sec").await.expect("terminated");
    let wrong = Region {
        database: Secret::new(format!(
            "postgres://wf_admin:wrong-{ADMIN_MARKER}@127.0.0.1:{port}/postgres"
        )),
        ..region.clone()
    };
    let refused = Jobs::new(Driver::new(&wrong, options).expect("a driver"), "ng-lagos").await;
    let error = refused.provision(&v1).await.expect_err("a wrong password");
    assert!(error.contains("password authentication failed"), "{error}");
    seen.add("a refused login's error", error);
    seen.add("Debug of the driver", format!("{:?}", jobs.driver()));
    seen.add("Debug of the region", format!("{region:?}"));
    seen.add("Debug of the password", format!("{password:?} {password}"));
    seen.add("Debug of the target", format!("{v1:?}"));
    for (what, jobs) in [("the jobs'", &jobs), ("the refused jobs'", &refused)] {
        let audit = jobs.audit().await;
        assert!(
            audit
                .iter()
                .any(|record| record.contains("instance.provision.step.")),
            "{what} steps are audited: {audit:?}"
        );
        seen.add(&format!("{what} audit log"), audit.join("\n"));
        jobs.store.close().await;
        // What the store keeps is in its file, or in its write-ahead log until a checkpoint.
        let mut bytes = std::fs::read(jobs.store_file()).expect("the store's file");
        bytes.extend(std::fs::read(jobs.store_file().with_extension("db-wal")).unwrap_or_default());
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("instance.provision.step.validate"),
            "{what} store file holds the jobs' records"
        );
        seen.add(&format!("{what} store file"), text);
    }

    // The audit rows, the log events and the server's log.
    let mut connection = sqlx::PgConnection::connect(&postgres.admin_url("fleet_store"))
        .await
        .expect("the store's database");
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', actor_id, action, resource, body) FROM audit_log",
    )
    .fetch_all(&mut connection)
    .await
    .expect("the audit rows");
    assert!(!rows.is_empty(), "state import is audited");
    seen.add("the audit rows", rows.join("\n"));
    let events = log.text();
    assert!(
        events.contains("TRACE") || events.contains("DEBUG") || events.contains("WARN"),
        "the log captured events: {events}"
    );
    seen.add("this process's log events", events);
    let server_log = postgres.log();
    assert!(
        server_log.contains("ROLE \"wf_sec\""),
        "the server logs statements, the role's among them:\n{server_log}"
    );
    seen.add("the PostgreSQL server's log", server_log);

    seen.assert_none_of(&[
        ("the administrator's password", ADMIN_MARKER),
        ("the `env:` secret", ENV_MARKER),
        ("the instance's password", password.expose()),
        ("the audit signing key", &audit_key),
        ("the bad signing key", "BadKeyMarker5e"),
    ]);
}
