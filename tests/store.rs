//! The store against real databases: one contract suite run on PostgreSQL (a throwaway
//! server started here) and on SQLite; then tampering, the application role's privileges,
//! concurrent appenders and faults.

mod common;

use std::{collections::BTreeMap, future::Future, pin::Pin, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::Connection;

use common::postgres::Postgres;
use wakafleet::{
    plan::{ResourceType, snapshot},
    store::{
        Backend, Error, Options, Store,
        audit::{Actor, ActorKind, Anchor, Commit, Filter, Hash, Outcome, Person, Problem, Record},
        checkpoint::Checkpoint,
        jobs::{
            Claimant, Due, Finish, JobFilter, JobKind, JobStatus, LEASE, NewJob, Renewal, Schedule,
            StepStatus, backoff,
        },
        state::{CommitRecord, InstanceRecord, InstanceStatus},
    },
};

/// Where a contract runs: a store and a way in past it, as the database's owner.
struct Fixture {
    url: String,
    /// The same database as its superuser (PostgreSQL) or as the file's owner (SQLite).
    admin_url: String,
    store: Store,
}

impl Fixture {
    async fn raw(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.admin_url)
            .await
            .expect("an owner's connection")
    }

    /// Runs SQL as the owner, with the append-only triggers off: what an attacker with the
    /// database's keys can do.
    async fn tamper(&self, sql: &str) {
        let mut connection = self.raw().await;
        let (off, on) = match self.store.backend() {
            Backend::Postgres => (
                "ALTER TABLE audit_log DISABLE TRIGGER USER".to_string(),
                "ALTER TABLE audit_log ENABLE TRIGGER USER".to_string(),
            ),
            Backend::Sqlite => (
                "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete".to_string(),
                String::new(),
            ),
        };
        sqlx::raw_sql(&format!("{off}; {sql}; {on}"))
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("tampering with `{sql}`: {error}"));
        connection.close().await.ok();
    }
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("an RFC 3339 time")
}

fn sqlite_url(folder: &tempfile::TempDir, name: &str) -> String {
    format!("sqlite://{}", folder.path().join(name).display())
}

async fn open(url: &str) -> Store {
    Store::open(&url.into(), Options::default())
        .await
        .unwrap_or_else(|error| panic!("open {url}: {error:?}"))
}

type Contract = for<'a> fn(&'a Fixture) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Every contract, by name; each gets a fresh, empty store.
fn contracts() -> Vec<(&'static str, Contract)> {
    vec![
        ("audit chain", |f| Box::pin(audit_chain(f))),
        ("audit query", |f| Box::pin(audit_query(f))),
        ("audit append-only", |f| Box::pin(audit_append_only(f))),
        ("audit tampering", |f| Box::pin(audit_tampering(f))),
        ("audit keys", |f| Box::pin(audit_keys(f))),
        ("instances", |f| Box::pin(instances(f))),
        ("snapshot", |f| Box::pin(snapshot_round_trip(f))),
        ("commits", |f| Box::pin(commits(f))),
        ("migrations", |f| Box::pin(migrations(f))),
        ("jobs", |f| Box::pin(jobs(f))),
        ("leases", |f| Box::pin(leases(f))),
        ("schedules", |f| Box::pin(schedules(f))),
        ("concurrent claims", |f| Box::pin(concurrent_claims(f))),
        ("leadership", |f| Box::pin(leadership(f))),
        ("fingerprint", |f| Box::pin(fingerprint(f))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_on_postgres() {
    let postgres = Postgres::start();
    for (index, (name, contract)) in contracts().into_iter().enumerate() {
        let database = postgres.create_database(&format!("contract{index}")).await;
        let url = postgres.admin_url(&database);
        let fixture = Fixture {
            store: open(&url).await,
            admin_url: url.clone(),
            url,
        };
        eprintln!("contract on PostgreSQL: {name}");
        contract(&fixture).await;
        fixture.store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_on_sqlite() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    for (index, (name, contract)) in contracts().into_iter().enumerate() {
        let url = sqlite_url(&folder, &format!("contract{index}.db"));
        let fixture = Fixture {
            store: open(&url).await,
            admin_url: url.clone(),
            url,
        };
        eprintln!("contract on SQLite: {name}");
        contract(&fixture).await;
        fixture.store.close().await;
    }
}

fn record(n: usize) -> Record {
    let mut record = Record::new(
        Actor {
            kind: ActorKind::Git,
            id: format!("user{}", n % 3),
            email: Some(format!("user{}@example.com", n % 3)),
        },
        if n.is_multiple_of(2) {
            "instance.provision"
        } else {
            "instance.upgrade.step.migrate"
        },
        &format!("instance/i{n}"),
    );
    record.reason = Some(format!("reason {n}"));
    record
}

async fn append_numbered(store: &Store, range: std::ops::Range<usize>) {
    for n in range {
        store.append_one(record(n)).await.expect("an append");
    }
}

async fn verify(store: &Store, anchors: &[Anchor]) -> Result<i64, Problem> {
    let verification = store
        .audit_verify(anchors, 7)
        .await
        .expect("a verification");
    verification.outcome.map(|head| head.seq)
}

async fn audit_chain(fixture: &Fixture) {
    let store = &fixture.store;
    assert_eq!(verify(store, &[]).await, Ok(0), "an empty chain holds");
    let mut full = record(0);
    full.result = Outcome::Failure;
    full.error = Some("health check timed out".into());
    full.region = Some("ng-lagos".into());
    full.host = Some("docker-1".into());
    full.job = Some("job-1".into());
    full.before = Some(serde_json::json!({"version": "1.0.0"}));
    full.after = Some(serde_json::json!({"version": "1.1.0", "ssl": true}));
    full.metadata.insert("attempt".into(), serde_json::json!(2));
    full.commit = Some(Commit {
        sha: "9f2c4e1a".repeat(5),
        author: Person {
            name: "Ada".into(),
            email: "ada@example.com".into(),
        },
        committer: Person {
            name: "GitHub".into(),
            email: "noreply@github.com".into(),
        },
        approved_by: vec!["Bola <bola@example.com>".into()],
        reviewed_by: vec!["Chi <chi@example.com>".into()],
    });
    let first = store.append_one(full.clone()).await.expect("an append");
    assert_eq!(first.seq, 1);
    assert_eq!(first.prev_hash, Hash::GENESIS);
    assert_eq!(first.record, full);

    let batch = store
        .append((1..6).map(record).collect())
        .await
        .expect("a batch");
    assert_eq!(
        batch.iter().map(|entry| entry.seq).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6]
    );
    assert_eq!(batch[0].prev_hash, first.hash);
    for pair in batch.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    let head = store.audit_head().await.expect("a head");
    assert_eq!((head.seq, head.hash), (6, batch[4].hash));

    // What is read back is what was appended, field for field.
    let rows = store.audit_rows(0, 100).await.expect("rows");
    assert_eq!(rows.len(), 6);
    let read = rows[0].entry().expect("an entry");
    assert_eq!(read, first);
    assert_eq!(verify(store, &[]).await, Ok(6));
    assert_eq!(
        store
            .audit_verify(&[], 2)
            .await
            .expect("a verification")
            .records,
        6,
        "pages of 2 read everything"
    );

    // An oversized record is refused, and nothing of its batch is appended.
    let mut huge = record(99);
    huge.reason = Some("x".repeat(2 << 20));
    let refused = store.append(vec![record(98), huge]).await;
    assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
    assert_eq!(store.audit_head().await.expect("a head").seq, 6);
}

async fn audit_query(fixture: &Fixture) {
    let store = &fixture.store;
    append_numbered(store, 0..10).await;
    let mut with_commit = record(10);
    with_commit.commit = Some(Commit {
        sha: "abcdef0123456789".into(),
        author: Person {
            name: "A".into(),
            email: "a@example.com".into(),
        },
        committer: Person {
            name: "A".into(),
            email: "a@example.com".into(),
        },
        approved_by: Vec::new(),
        reviewed_by: Vec::new(),
    });
    store.append_one(with_commit).await.expect("an append");

    let seqs = |rows: Vec<wakafleet::store::audit::StoredRow>| {
        rows.iter().map(|row| row.seq).collect::<Vec<_>>()
    };
    let query = |filter: Filter| async move {
        seqs(store.audit_query(&filter, 100).await.expect("a query"))
    };
    assert_eq!(
        query(Filter {
            action: Some("instance.provision".into()),
            ..Filter::default()
        })
        .await,
        vec![1, 3, 5, 7, 9, 11]
    );
    assert_eq!(
        query(Filter {
            action: Some("instance.upgrade*".into()),
            ..Filter::default()
        })
        .await,
        vec![2, 4, 6, 8, 10]
    );
    assert_eq!(
        query(Filter {
            resource: Some("instance/i1".into()),
            ..Filter::default()
        })
        .await,
        vec![2]
    );
    assert_eq!(
        query(Filter {
            resource: Some("instance/i1*".into()),
            ..Filter::default()
        })
        .await,
        vec![2, 11]
    );
    assert_eq!(
        query(Filter {
            actor: Some("user1@example.com".into()),
            ..Filter::default()
        })
        .await,
        vec![2, 5, 8, 11]
    );
    assert_eq!(
        query(Filter {
            actor: Some("user2".into()),
            ..Filter::default()
        })
        .await,
        vec![3, 6, 9]
    );
    assert_eq!(
        query(Filter {
            commit: Some("abcdef".into()),
            ..Filter::default()
        })
        .await,
        vec![11]
    );
    assert_eq!(
        query(Filter {
            commit: Some("abcdee".into()),
            ..Filter::default()
        })
        .await,
        Vec::<i64>::new()
    );
    // Time ranges: everything was appended just now.
    let now = Utc::now();
    assert_eq!(
        query(Filter {
            since: Some(now - chrono::Duration::minutes(5)),
            until: Some(now + chrono::Duration::minutes(5)),
            ..Filter::default()
        })
        .await
        .len(),
        11
    );
    assert!(
        query(Filter {
            until: Some(now - chrono::Duration::minutes(5)),
            ..Filter::default()
        })
        .await
        .is_empty()
    );
    // Pages: a cursor and a limit.
    let page = store
        .audit_query(
            &Filter {
                after: Some(4),
                ..Filter::default()
            },
            3,
        )
        .await
        .expect("a page");
    assert_eq!(seqs(page), vec![5, 6, 7]);
    let mut scanned = Vec::new();
    let count = store
        .audit_scan(
            &Filter {
                action: Some("instance.provision".into()),
                ..Filter::default()
            },
            2,
            |row| {
                scanned.push(row.seq);
                Ok(())
            },
        )
        .await
        .expect("a scan");
    assert_eq!(count, 6);
    assert_eq!(scanned, vec![1, 3, 5, 7, 9, 11]);
}

fn keyed(n: usize, key: &str) -> Record {
    let mut record = record(n);
    record.key = Some(key.to_string());
    record
}

/// The `seq` of every record of `resource`, as `audit query` selects them.
async fn seqs_of(store: &Store, resource: &str) -> Vec<i64> {
    let filter = Filter {
        resource: Some(resource.to_string()),
        ..Filter::default()
    };
    let rows = store.audit_query(&filter, 100).await.expect("a query");
    rows.iter().map(|row| row.seq).collect()
}

async fn audit_keys(fixture: &Fixture) {
    let store = &fixture.store;
    let backup = "job/j1/step/backup/attempt/1";
    let migrate = "job/j1/step/migrate/attempt/1";

    // Appended twice, separately: the second append gets the first's entry, even when the
    // record it gives differs (a step audited again after a resume).
    let first = store.append_one(keyed(0, backup)).await.expect("an append");
    assert_eq!(first.record.key.as_deref(), Some(backup));
    assert_eq!(
        store.append_one(keyed(0, backup)).await.expect("an append"),
        first
    );
    let mut resumed = keyed(0, backup);
    resumed.reason = Some("audited again after a resume".into());
    assert_eq!(store.append_one(resumed).await.expect("an append"), first);

    // Twice in one batch, among records without a key (never taken for one another) and a
    // record whose key is in the log already.
    let batch = store
        .append(vec![
            record(1),
            keyed(2, migrate),
            record(1),
            keyed(2, migrate),
            keyed(0, backup),
        ])
        .await
        .expect("a batch");
    assert_eq!(
        batch.iter().map(|entry| entry.seq).collect::<Vec<_>>(),
        vec![2, 3, 4, 3, 1]
    );
    assert_eq!(batch[3], batch[1]);
    assert_eq!(batch[4], first);

    // From concurrent appenders: two on this store and one on another, as another process.
    let other = open(&fixture.url).await;
    let switch = "job/j1/step/switch/attempt/1";
    let (one, two, three) = tokio::join!(
        store.append_one(keyed(3, switch)),
        store.append_one(keyed(3, switch)),
        other.append_one(keyed(3, switch)),
    );
    let seqs = [one, two, three].map(|entry| entry.expect("an append").seq);
    assert_eq!(seqs, [5, 5, 5]);
    // The other store chains a new record after the keyed ones, and finds the old keys.
    assert_eq!(
        other
            .append_one(keyed(4, "job/j2/step/backup/attempt/1"))
            .await
            .expect("an append")
            .seq,
        6
    );
    assert_eq!(
        other
            .append_one(keyed(2, migrate))
            .await
            .expect("an append"),
        batch[1]
    );
    other.close().await;

    assert_eq!(verify(store, &[]).await, Ok(6), "one unbroken chain");
    for (resource, seqs) in [
        ("instance/i0", vec![1]),
        ("instance/i1", vec![2, 4]),
        ("instance/i2", vec![3]),
        ("instance/i3", vec![5]),
        ("instance/i4", vec![6]),
    ] {
        assert_eq!(
            seqs_of(store, resource).await,
            seqs,
            "the records of {resource}"
        );
    }
    let stored = store.audit_rows(0, 100).await.expect("rows");
    assert_eq!(stored[4].key.as_deref(), Some(switch), "the key's column");
    assert_eq!(
        stored[4].entry().expect("an entry").record.key.as_deref(),
        Some(switch)
    );
}

async fn audit_append_only(fixture: &Fixture) {
    let store = &fixture.store;
    append_numbered(store, 0..3).await;
    let mut owner = fixture.raw().await;
    let mut statements = vec![
        "UPDATE audit_log SET action = 'x' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 3",
        "DELETE FROM audit_log",
    ];
    if store.backend() == Backend::Postgres {
        statements.push("TRUNCATE audit_log");
    }
    for statement in statements {
        let error = sqlx::raw_sql(statement)
            .execute(&mut owner)
            .await
            .expect_err(statement);
        assert!(
            error.to_string().contains("append-only"),
            "`{statement}` was refused for another reason: {error}"
        );
    }
    assert_eq!(verify(store, &[]).await, Ok(3));
}

/// Appends 20 records and signs checkpoints at 10 and 20.
async fn checkpointed(store: &Store) -> Vec<Anchor> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let mut anchors = Vec::new();
    for range in [0..10, 10..20] {
        append_numbered(store, range).await;
        let head = store.audit_head().await.expect("a head");
        let checkpoint = Checkpoint::sign(head, Utc::now(), &key);
        anchors.push(
            checkpoint
                .check(&key.verifying_key())
                .expect("a valid checkpoint"),
        );
    }
    anchors
}

async fn audit_tampering(fixture: &Fixture) {
    // Each attack on its own chain: a store per attack, in the fixture's database but with
    // the log emptied in between is not possible (append-only), so attacks run in order on
    // one chain, each undone by restoring the rows before the next.
    let store = &fixture.store;
    let anchors = checkpointed(store).await;
    assert_eq!(verify(store, &anchors).await, Ok(20));
    let original = store.audit_rows(0, 100).await.expect("rows");

    let restore = || async {
        let mut sql = String::from("DELETE FROM audit_log");
        for row in &original {
            sql += &format!(
                "; INSERT INTO audit_log (seq, id, at_us, actor_kind, actor_id, actor_email, action, resource, commit_sha, result, body, prev_hash, hash) VALUES ({}, '{}', {}, '{}', '{}', {}, '{}', '{}', NULL, '{}', '{}', {}, {})",
                row.seq,
                row.id,
                row.at_us,
                row.actor_kind,
                row.actor_id,
                row.actor_email
                    .as_ref()
                    .map_or("NULL".to_string(), |email| format!("'{email}'")),
                row.action,
                row.resource,
                row.result,
                row.body.replace('\'', "''"),
                bytes_literal(store.backend(), &row.prev_hash),
                bytes_literal(store.backend(), &row.hash),
            );
        }
        fixture.tamper(&sql).await;
        assert_eq!(verify(store, &anchors).await, Ok(20), "restored");
    };

    // A byte of a record.
    fixture
        .tamper("UPDATE audit_log SET body = replace(body, 'reason 6', 'reason X') WHERE seq = 7")
        .await;
    assert_eq!(
        verify(store, &anchors).await,
        Err(Problem::Altered { seq: 7 })
    );
    restore().await;

    // One record removed.
    fixture.tamper("DELETE FROM audit_log WHERE seq = 12").await;
    assert_eq!(
        verify(store, &anchors).await,
        Err(Problem::Missing { seq: 12, found: 13 })
    );
    restore().await;

    // Two records swapped (all but their seq).
    let (five, nine) = (&original[4], &original[8]);
    let set = |row: &wakafleet::store::audit::StoredRow, seq: i64| {
        format!(
            "UPDATE audit_log SET id = '{}-', actor_id = '{}', action = '{}', resource = '{}', body = '{}', prev_hash = {}, hash = {} WHERE seq = {seq}",
            row.id,
            row.actor_id,
            row.action,
            row.resource,
            row.body,
            bytes_literal(store.backend(), &row.prev_hash),
            bytes_literal(store.backend(), &row.hash),
        )
    };
    fixture
        .tamper(&format!("{}; {}", set(nine, 5), set(five, 9)))
        .await;
    assert_eq!(
        verify(store, &anchors).await,
        Err(Problem::Unlinked { seq: 5 })
    );
    restore().await;

    // The tail removed, and the whole table emptied.
    fixture.tamper("DELETE FROM audit_log WHERE seq > 17").await;
    assert_eq!(
        verify(store, &anchors).await,
        Err(Problem::Truncated {
            seq: 20,
            ends: 17,
            checkpoint: 2
        })
    );
    assert_eq!(
        verify(store, &[]).await,
        Ok(17),
        "without checkpoints a shorter chain holds"
    );
    restore().await;
    let empty = match store.backend() {
        Backend::Postgres => "TRUNCATE audit_log",
        Backend::Sqlite => "DELETE FROM audit_log",
    };
    fixture.tamper(empty).await;
    assert_eq!(
        verify(store, &anchors).await,
        Err(Problem::Truncated {
            seq: 10,
            ends: 0,
            checkpoint: 1
        })
    );
    restore().await;

    // The chain rewritten from record 15 on, every hash recomputed: consistent in itself,
    // caught by the checkpoint at 20.
    let mut rewritten = original.clone();
    let mut buffer = Vec::new();
    let mut prev = Hash(rewritten[13].hash.clone().try_into().expect("32 bytes"));
    let mut sql = String::new();
    for row in &mut rewritten[14..] {
        row.body = row.body.replace("reason", "excuse");
        row.prev_hash = prev.0.to_vec();
        prev = row.compute_hash(&prev, &mut buffer);
        row.hash = prev.0.to_vec();
        sql += &format!(
            "UPDATE audit_log SET body = '{}', prev_hash = {}, hash = {} WHERE seq = {};",
            row.body,
            bytes_literal(store.backend(), &row.prev_hash),
            bytes_literal(store.backend(), &row.hash),
            row.seq
        );
    }
    fixture.tamper(sql.trim_end_matches(';')).await;
    assert_eq!(
        verify(store, &[]).await,
        Ok(20),
        "the rewrite is consistent in itself"
    );
    assert_eq!(
        verify(store, &anchors).await,
        Err(Problem::Rewritten {
            seq: 20,
            since: 10,
            checkpoint: 2
        })
    );
    restore().await;
}

fn bytes_literal(backend: Backend, bytes: &[u8]) -> String {
    match backend {
        Backend::Postgres => format!("'\\x{}'::bytea", hex::encode(bytes)),
        Backend::Sqlite => format!("X'{}'", hex::encode(bytes)),
    }
}

fn spec(version: &str, state: &str) -> snapshot::Instance {
    snapshot::Instance {
        version: version.into(),
        state: state.into(),
        resources: snapshot::InstanceResources {
            cpu: "1.0".into(),
            memory: "2G".into(),
            storage: "20G".into(),
        },
        config: BTreeMap::from([("ssl".to_string(), "true".to_string())]),
    }
}

async fn instances(fixture: &Fixture) {
    let store = &fixture.store;
    let when = at("2026-03-01T10:00:00Z");
    assert!(store.instance("web").await.expect("a read").is_none());
    let mut web = InstanceRecord {
        name: "web".into(),
        status: InstanceStatus::Provisioning,
        version: None,
        config_hash: None,
        spec: None,
        health: None,
        last_error: None,
        updated_at: when,
    };
    store.put_instance(&web).await.expect("a put");
    assert_eq!(
        store.instance("web").await.expect("a read"),
        Some(web.clone())
    );

    web.status = InstanceStatus::Active;
    web.version = Some("1.4.2".into());
    web.config_hash = Some("c0ffee".into());
    web.spec = Some(spec("1.4.2", "active"));
    web.health = Some(serde_json::json!({"status": "healthy"}));
    store.put_instance(&web).await.expect("a put");
    assert_eq!(
        store.instance("web").await.expect("a read"),
        Some(web.clone())
    );

    let later = at("2026-03-01T11:00:00Z");
    assert!(
        store
            .set_instance_status("web", InstanceStatus::Failed, Some("disk full"), later)
            .await
            .expect("an update")
    );
    assert!(
        !store
            .set_instance_status("nope", InstanceStatus::Failed, None, later)
            .await
            .expect("an update")
    );
    let failed = store
        .instance("web")
        .await
        .expect("a read")
        .expect("recorded");
    assert_eq!(failed.status, InstanceStatus::Failed);
    assert_eq!(failed.last_error.as_deref(), Some("disk full"));
    assert_eq!(failed.updated_at, later);
    assert_eq!(
        failed.spec, web.spec,
        "a status change keeps the applied spec"
    );

    store
        .put_instance(&InstanceRecord {
            name: "api".into(),
            ..web.clone()
        })
        .await
        .expect("a put");
    let names: Vec<String> = store
        .instances()
        .await
        .expect("a list")
        .into_iter()
        .map(|instance| instance.name)
        .collect();
    assert_eq!(names, vec!["api", "web"]);
}

async fn snapshot_round_trip(fixture: &Fixture) {
    let store = &fixture.store;
    let when = at("2026-03-01T10:00:00Z");
    let fields = BTreeMap::from([("name".to_string(), "Acme".to_string())]);
    store
        .put_entity(ResourceType::Partner, "acme", &fields, when)
        .await
        .expect("a put");
    store
        .put_instance(&InstanceRecord {
            name: "web".into(),
            status: InstanceStatus::Active,
            version: Some("1.4.2".into()),
            config_hash: None,
            spec: Some(spec("1.4.2", "active")),
            health: None,
            last_error: None,
            updated_at: when,
        })
        .await
        .expect("a put");
    // Not yet applied: not part of the actual state.
    store
        .put_instance(&InstanceRecord {
            name: "new".into(),
            status: InstanceStatus::Provisioning,
            version: None,
            config_hash: None,
            spec: None,
            health: None,
            last_error: None,
            updated_at: when,
        })
        .await
        .expect("a put");
    let snapshot = store.snapshot().await.expect("a snapshot");
    assert_eq!(snapshot.entities.len(), 1);
    assert_eq!(snapshot.entities[0].fields, fields);
    assert_eq!(snapshot.instances.keys().collect::<Vec<_>>(), vec!["web"]);
    let actual = store.actual().await.expect("the actual state");
    assert_eq!(
        actual.instances["web"].version,
        semver::Version::new(1, 4, 2)
    );
    assert_eq!(
        actual.entities[&(ResourceType::Partner, "acme".to_string())],
        fields
    );

    // Importing replaces entities and forgets instances the snapshot lacks.
    let mut other = snapshot.clone();
    other.entities.clear();
    other.instances.clear();
    other
        .instances
        .insert("db".into(), spec("2.0.0", "suspended"));
    store.import(&other, when).await.expect("an import");
    assert_eq!(store.snapshot().await.expect("a snapshot"), other);
    let db = store
        .instance("db")
        .await
        .expect("a read")
        .expect("imported");
    assert_eq!(db.status, InstanceStatus::Suspended);
    assert!(store.instance("web").await.expect("a read").is_none());

    // A snapshot that does not convert changes nothing.
    let mut broken = other.clone();
    broken
        .instances
        .insert("bad".into(), spec("not-semver", "active"));
    assert!(store.import(&broken, when).await.is_err());
    assert_eq!(store.snapshot().await.expect("a snapshot"), other);
    assert!(
        store
            .delete_entity(ResourceType::Partner, "acme")
            .await
            .is_ok_and(|deleted| !deleted)
    );
}

async fn commits(fixture: &Fixture) {
    let store = &fixture.store;
    let seen = at("2026-03-01T10:00:00Z");
    let commit = CommitRecord {
        sha: "1".repeat(40),
        seen_at: seen,
        applied_at: None,
        author: Person {
            name: "Ada Lovelace".into(),
            email: "ada@example.com".into(),
        },
        committer: Person {
            name: "GitHub".into(),
            email: "noreply@github.com".into(),
        },
        summary: "Upgrade acme to 1.5.0".into(),
        approved_by: vec!["Bola <bola@example.com>".into()],
        reviewed_by: Vec::new(),
        valid: true,
    };
    store.record_commit(&commit).await.expect("a record");
    store
        .record_commit(&CommitRecord {
            summary: "seen again".into(),
            ..commit.clone()
        })
        .await
        .expect("a record");
    assert_eq!(
        store.commit(&commit.sha).await.expect("a read"),
        Some(commit.clone()),
        "seeing a commit again changes nothing"
    );
    assert!(store.last_applied_commit().await.expect("a read").is_none());
    let applied = at("2026-03-01T10:05:00Z");
    assert!(
        store
            .mark_commit_applied(&commit.sha, applied)
            .await
            .expect("an update")
    );
    let second = CommitRecord {
        sha: "2".repeat(40),
        valid: false,
        ..commit.clone()
    };
    store.record_commit(&second).await.expect("a record");
    let last = store
        .last_applied_commit()
        .await
        .expect("a read")
        .expect("one");
    assert_eq!(last.sha, commit.sha);
    assert_eq!(last.applied_at, Some(applied));
    assert!(
        !store
            .commit(&second.sha)
            .await
            .expect("a read")
            .expect("one")
            .valid
    );
}

fn new_job(instance: &str, priority: i64, not_before: DateTime<Utc>) -> NewJob {
    NewJob {
        id: None,
        kind: JobKind::Upgrade,
        instance: instance.into(),
        region: "ng-lagos".into(),
        priority,
        max_attempts: 2,
        payload: serde_json::json!({"to": "1.5.0"}),
        commit_sha: Some("ab".repeat(20)),
        reason: "approved by the merge".into(),
        not_before,
    }
}

async fn jobs(fixture: &Fixture) {
    let store = &fixture.store;
    let worker = Claimant::new("w1");
    let t0 = at("2026-03-01T10:00:00Z");
    let web = store
        .enqueue(&new_job("web", 5, t0), t0)
        .await
        .expect("a job");
    assert_eq!(web.status, JobStatus::Pending);
    let refused = store.enqueue(&new_job("web", 5, t0), t0).await;
    assert!(
        matches!(&refused, Err(Error::Invalid(message)) if message.contains(&web.id)),
        "one active job per instance: {refused:?}"
    );
    let api = store
        .enqueue(&new_job("api", 9, t0), t0)
        .await
        .expect("a job");
    let later = store
        .enqueue(&new_job("db", 99, t0 + chrono::Duration::hours(1)), t0)
        .await
        .expect("a job");
    assert_eq!(
        store.due_jobs(t0, 10).await.expect("due"),
        vec![
            Due {
                id: api.id.clone(),
                region: "ng-lagos".into()
            },
            Due {
                id: web.id.clone(),
                region: "ng-lagos".into()
            }
        ]
    );
    assert_eq!(
        store.next_due(t0).await.expect("next"),
        Some(t0 + chrono::Duration::hours(1))
    );

    // Highest priority first; a job not yet due waits; other regions' workers get nothing.
    let elsewhere = Claimant {
        regions: Some(vec!["ke-nairobi".into()]),
        ..Claimant::new("w3")
    };
    assert!(
        store
            .claim(&elsewhere, t0)
            .await
            .expect("a claim")
            .is_none()
    );
    let first = store
        .claim(&worker, t0)
        .await
        .expect("a claim")
        .expect("a job");
    assert_eq!(
        (first.id.as_str(), first.status, first.attempts),
        (api.id.as_str(), JobStatus::Running, 1)
    );
    assert_eq!(first.lease_until, Some(t0 + LEASE));
    let second = store
        .claim(&Claimant::new("w2"), t0)
        .await
        .expect("a claim")
        .expect("a job");
    assert_eq!(second.id, web.id);
    assert!(
        store.claim(&worker, t0).await.expect("a claim").is_none(),
        "{later:?} is not due"
    );

    // Steps: resumed after a crash, counted, fenced by the attempt.
    let lease = second.lease();
    store
        .start_step(&lease, 1, "backup", t0)
        .await
        .expect("a step");
    let output = serde_json::json!({"backup": "x.dump"});
    let backup = store
        .finish_step(&lease, 1, StepStatus::Succeeded, None, Some(&output), t0)
        .await
        .expect("a step");
    assert_eq!(backup.output.as_deref(), Some(r#"{"backup":"x.dump"}"#));
    store
        .start_step(&lease, 2, "migrate", t0)
        .await
        .expect("a step");
    let again = store
        .start_step(&lease, 2, "migrate", t0)
        .await
        .expect("a step");
    assert_eq!(
        again.attempts, 1,
        "a start retried within an attempt counts once"
    );
    let steps = store.steps(&web.id).await.expect("steps");
    assert_eq!(
        steps
            .iter()
            .map(|step| (step.name.as_str(), step.status))
            .collect::<Vec<_>>(),
        vec![
            ("backup", StepStatus::Succeeded),
            ("migrate", StepStatus::Running)
        ]
    );

    // A failure is retried after a backoff with jitter, then dead-lettered; the instance
    // stays as it is while the job will be tried again, and fails with the dead job.
    store
        .put_instance(&InstanceRecord {
            name: "web".into(),
            status: InstanceStatus::Active,
            version: Some("1.0.0".into()),
            config_hash: None,
            spec: None,
            health: None,
            last_error: None,
            updated_at: t0,
        })
        .await
        .expect("a put");
    let status_of_web = async || {
        let record = store.instance("web").await.expect("a read").expect("web");
        (record.status, record.last_error)
    };
    let retried = store
        .finish_job(&lease, Finish::Failed("health check timed out"), t0)
        .await
        .expect("finished");
    assert_eq!(retried.status, JobStatus::Pending);
    assert_eq!(status_of_web().await, (InstanceStatus::Active, None));
    let wait = retried.not_before - t0;
    assert!(
        wait >= backoff(1) && wait < backoff(1) * 2,
        "waits {wait} after the first failure"
    );
    let again = store
        .claim(&worker, retried.not_before)
        .await
        .expect("a claim")
        .expect("the retry");
    assert_eq!((again.id.as_str(), again.attempts), (web.id.as_str(), 2));
    let resumed = store
        .start_step(&again.lease(), 2, "migrate", retried.not_before)
        .await
        .expect("resumed");
    assert_eq!((resumed.attempts, resumed.job_attempt), (2, 2));
    let dead = store
        .finish_job(
            &again.lease(),
            Finish::Failed("health check timed out"),
            retried.not_before,
        )
        .await
        .expect("finished");
    assert_eq!(dead.status, JobStatus::Dead);
    assert_eq!(dead.error.as_deref(), Some("health check timed out"));
    assert_eq!(
        status_of_web().await,
        (
            InstanceStatus::Failed,
            Some("health check timed out".to_string())
        )
    );
    // The instance may have a job again; the dead one cannot be retried while it has.
    let replacement = store
        .enqueue(&new_job("web", 5, t0), t0)
        .await
        .expect("a new job");
    let refused = store.retry(&web.id, t0).await;
    assert!(
        matches!(&refused, Err(Error::Invalid(message)) if message.contains(&replacement.id)),
        "{refused:?}"
    );
    store.cancel(&replacement.id, t0).await.expect("cancelled");
    let back = store.retry(&web.id, t0).await.expect("retried");
    assert_eq!((back.status, back.attempts), (JobStatus::Pending, 0));

    let done = store
        .finish_job(&first.lease(), Finish::Succeeded, t0)
        .await
        .expect("finished");
    assert_eq!(done.status, JobStatus::Succeeded);
    assert!(
        matches!(
            store
                .finish_job(&first.lease(), Finish::Succeeded, t0)
                .await,
            Err(Error::Fenced { .. })
        ),
        "only running jobs finish"
    );
    let cancelled = store.cancel(&later.id, t0).await.expect("cancelled");
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(store.active_job("db").await.expect("a read").is_none());
    let counts = store.job_counts().await.expect("counts");
    assert_eq!(
        counts,
        vec![
            (JobStatus::Pending, 1),
            (JobStatus::Succeeded, 1),
            (JobStatus::Cancelled, 2)
        ]
    );
    let listed = store
        .list_jobs(
            &JobFilter {
                status: Some(JobStatus::Cancelled),
                instance: Some("db".into()),
            },
            10,
        )
        .await
        .expect("a list");
    assert_eq!(
        listed.iter().map(|job| &job.id).collect::<Vec<_>>(),
        [&later.id]
    );
}

/// A worker that stops renewing loses its job to the reaper and then to another worker,
/// and can write nothing more for it; a cancelled running job keeps its slot until its
/// worker stops.
async fn leases(fixture: &Fixture) {
    let store = &fixture.store;
    let t0 = at("2026-03-01T10:00:00Z");
    let seconds = chrono::Duration::seconds;
    let job = store
        .enqueue(&new_job("web", 0, t0), t0)
        .await
        .expect("a job");
    let first = store
        .claim(&Claimant::new("w1"), t0)
        .await
        .expect("a claim")
        .expect("the job");
    let old = first.lease();
    assert_eq!(
        store
            .renew(&old, t0 + seconds(10), LEASE)
            .await
            .expect("renewed"),
        Renewal::Held
    );
    store
        .start_step(&old, 0, "validate", t0 + seconds(11))
        .await
        .expect("a step");
    // Renewed at 10 s, the lease lasts until 40 s.
    assert!(
        store
            .reap(t0 + seconds(39), 3)
            .await
            .expect("reaped")
            .is_empty()
    );
    let reaped = store.reap(t0 + seconds(41), 3).await.expect("reaped");
    assert_eq!(reaped.len(), 1);
    assert_eq!(
        (reaped[0].status, reaped[0].stalls),
        (JobStatus::Pending, 1)
    );
    assert!(
        reaped[0]
            .error
            .as_deref()
            .is_some_and(|error| error.contains("w1")),
        "{:?}",
        reaped[0].error
    );
    assert_eq!(
        store
            .renew(&old, t0 + seconds(42), LEASE)
            .await
            .expect("a renewal"),
        Renewal::Lost
    );
    let second = store
        .claim(&Claimant::new("w2"), t0 + seconds(42))
        .await
        .expect("a claim")
        .expect("taken over");
    assert_eq!((second.attempts, second.worker.as_deref()), (2, Some("w2")));
    // The first worker is fenced off everywhere.
    let later = t0 + seconds(43);
    for refused in [
        store.start_step(&old, 1, "allocate", later).await.map(drop),
        store
            .finish_step(&old, 0, StepStatus::Succeeded, None, None, later)
            .await
            .map(drop),
        store
            .finish_job(&old, Finish::Succeeded, later)
            .await
            .map(drop),
    ] {
        assert!(
            matches!(&refused, Err(Error::Fenced { attempt: 1, reason, .. }) if reason.contains("attempt 2")),
            "{refused:?}"
        );
    }
    let new = second.lease();
    let step = store
        .start_step(&new, 0, "validate", later)
        .await
        .expect("the step again");
    assert_eq!((step.attempts, step.job_attempt), (2, 2));
    // Past its lease a worker writes nothing either, even before the reaper came.
    let expired = later + LEASE + seconds(1);
    assert!(matches!(
        store
            .finish_step(&new, 0, StepStatus::Succeeded, None, None, expired)
            .await,
        Err(Error::Fenced { reason, .. }) if reason.contains("lease ran out")
    ));

    // Cancelling keeps the slot until the worker stops at a step boundary.
    let cancelling = store.cancel(&job.id, later).await.expect("cancelling");
    assert_eq!(cancelling.status, JobStatus::Cancelling);
    assert!(
        store
            .enqueue(&new_job("web", 0, later), later)
            .await
            .is_err()
    );
    assert_eq!(
        store.renew(&new, later, LEASE).await.expect("a renewal"),
        Renewal::Cancelling
    );
    store
        .finish_step(&new, 0, StepStatus::Succeeded, None, None, later)
        .await
        .expect("the running step still finishes");
    assert!(matches!(
        store.start_step(&new, 1, "allocate", later).await,
        Err(Error::Cancelling(id)) if id == job.id
    ));
    let cancelled = store
        .finish_job(&new, Finish::Cancelled, later)
        .await
        .expect("cancelled");
    assert_eq!(cancelled.status, JobStatus::Cancelled);

    // Stalled too often: dead. A cancelled job whose worker vanished is cancelled.
    let stalling = store
        .enqueue(&new_job("api", 0, later), later)
        .await
        .expect("a job");
    let mut now = later;
    for stall in 1..=2 {
        store
            .claim(&Claimant::new("w"), now)
            .await
            .expect("a claim")
            .expect("the job");
        now += LEASE + seconds(1);
        let reaped = store.reap(now, 1).await.expect("reaped");
        let expected = if stall == 1 {
            JobStatus::Pending
        } else {
            JobStatus::Dead
        };
        assert_eq!(reaped[0].status, expected, "stall {stall}");
    }
    assert_eq!(
        store
            .job(&stalling.id)
            .await
            .expect("a read")
            .map(|job| job.stalls),
        Some(2)
    );
    let vanished = store
        .enqueue(&new_job("db", 0, now), now)
        .await
        .expect("a job");
    store
        .claim(&Claimant::new("w"), now)
        .await
        .expect("a claim")
        .expect("the job");
    store.cancel(&vanished.id, now).await.expect("cancelling");
    let reaped = store
        .reap(now + LEASE + seconds(1), 5)
        .await
        .expect("reaped");
    assert_eq!(reaped[0].status, JobStatus::Cancelled);

    // Only failures count against the attempts: a job that stalled once, then failed once,
    // of two attempts allowed, is retried.
    let now = now + LEASE * 2;
    store
        .enqueue(&new_job("mq", 0, now), now)
        .await
        .expect("a job");
    store
        .claim(&Claimant::new("w"), now)
        .await
        .expect("a claim")
        .expect("the job");
    let later = now + LEASE + seconds(1);
    store.reap(later, 5).await.expect("reaped");
    let second = store
        .claim(&Claimant::new("w"), later)
        .await
        .expect("a claim")
        .expect("the job");
    assert_eq!(second.attempts, 2);
    let retried = store
        .finish_job(&second.lease(), Finish::Failed("boom"), later)
        .await
        .expect("finished");
    assert_eq!(
        (retried.status, retried.failures, retried.stalls),
        (JobStatus::Pending, 1, 1)
    );
}

async fn schedules(fixture: &Fixture) {
    let store = &fixture.store;
    let t0 = at("2026-03-01T02:00:00Z");
    let schedule = Schedule {
        name: "backup/web".into(),
        cron: "0 2 * * *".into(),
        timezone: "Africa/Lagos".into(),
        job_kind: JobKind::Backup,
        instance: Some("web".into()),
        region: "ng-lagos".into(),
        payload: serde_json::json!({}),
        enabled: true,
        last_run_at: None,
        next_run_at: t0,
    };
    store.put_schedule(&schedule).await.expect("a schedule");
    store
        .put_schedule(&Schedule {
            name: "backup/off".into(),
            enabled: false,
            ..schedule.clone()
        })
        .await
        .expect("a schedule");
    let due = store.due_schedules(t0).await.expect("due");
    assert_eq!(
        due.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["backup/web"]
    );
    assert_eq!(due[0], schedule);
    let next = t0 + chrono::Duration::days(1);
    assert!(
        store
            .mark_schedule_ran("backup/web", t0, next)
            .await
            .expect("marked")
    );
    assert!(store.due_schedules(t0).await.expect("due").is_empty());
    assert_eq!(store.due_schedules(next).await.expect("due").len(), 1);
    // Two schedulers see the same firing: one of them advances it.
    let after = next + chrono::Duration::days(1);
    let (one, two) = tokio::join!(
        store.advance_schedule("backup/web", next, next, after),
        store.advance_schedule("backup/web", next, next, after)
    );
    assert_eq!(
        [one.expect("advanced"), two.expect("advanced")]
            .iter()
            .filter(|won| **won)
            .count(),
        1
    );
    assert!(store.due_schedules(next).await.expect("due").is_empty());
}

/// Workers claiming at once, through separate connections: every job goes to exactly one,
/// whatever the backend (PostgreSQL passes over locked rows with `SKIP LOCKED`).
async fn concurrent_claims(fixture: &Fixture) {
    let store = &fixture.store;
    let t0 = at("2026-03-01T10:00:00Z");
    for index in 0..60 {
        store
            .enqueue(&new_job(&format!("i{index}"), index % 3, t0), t0)
            .await
            .expect("a job");
    }
    let claimers = (0..6).map(|worker| async move {
        let claimant = Claimant::new(&format!("w{worker}"));
        let mut taken = Vec::new();
        while let Some(job) = store.claim(&claimant, t0).await.expect("a claim") {
            taken.push(job.id);
        }
        taken
    });
    let mut taken: Vec<String> = futures_util::future::join_all(claimers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let claimed = taken.len();
    taken.sort();
    taken.dedup();
    assert_eq!((claimed, taken.len()), (60, 60), "each job claimed once");
}

/// Whether `result` is the refusal of a write by the leader of `epoch` at `current`.
fn deposed<T: std::fmt::Debug>(result: Result<T, Error>, epoch: i64, current: i64) -> bool {
    match result {
        Err(Error::Deposed {
            epoch: refused,
            current: found,
        }) => (refused, found) == (epoch, current),
        other => panic!("expected epoch {epoch} deposed at {current}, got {other:?}"),
    }
}

/// Terms begin with a higher epoch each time, and a leader's writes are refused, writing
/// nothing, once a later term has begun.
async fn leadership(fixture: &Fixture) {
    let store = &fixture.store;
    let (t0, t1) = (at("2026-03-01T10:00:00Z"), at("2026-03-01T10:00:05Z"));
    assert_eq!(
        store.term().await.expect("a read"),
        None,
        "no term before the first"
    );
    let first = store.begin_term("host-a:1", t0).await.expect("a term");
    assert_eq!(
        (
            first.epoch,
            first.holder.as_str(),
            first.since,
            first.renewed
        ),
        (1, "host-a:1", t0, t0)
    );
    store.renew_term(1, t1).await.expect("a renewal");
    let second = store.begin_term("host-b:2", t1).await.expect("a term");
    assert_eq!(second.epoch, 2);
    assert_eq!(store.term().await.expect("a read"), Some(second));
    assert!(deposed(store.renew_term(1, t1).await, 1, 2));

    // Jobs: the stale epoch enqueues nothing, the current one enqueues once by id.
    let job = NewJob {
        id: Some("fenced".into()),
        ..new_job("web", 0, t0)
    };
    assert!(deposed(store.enqueue_fenced(&job, t1, 1).await, 1, 2));
    assert!(store.jobs_of("web").await.expect("a read").is_empty());
    let enqueued = store.enqueue_fenced(&job, t1, 2).await.expect("a job");
    assert_eq!(
        store.enqueue_fenced(&job, t1, 2).await.expect("the job"),
        enqueued
    );
    assert!(deposed(store.enqueue_fenced(&job, t1, 1).await, 1, 2));
    let other = NewJob {
        id: Some("other".into()),
        ..new_job("web", 0, t0)
    };
    assert!(matches!(
        store.enqueue_fenced(&other, t1, 2).await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(store.jobs_of("web").await.expect("a read"), vec![enqueued]);

    // Commits.
    let commit = CommitRecord {
        sha: "2".repeat(40),
        seen_at: t0,
        applied_at: None,
        author: Person {
            name: "Ada".into(),
            email: "ada@example.com".into(),
        },
        committer: Person {
            name: "Ada".into(),
            email: "ada@example.com".into(),
        },
        summary: "A commit".into(),
        approved_by: Vec::new(),
        reviewed_by: Vec::new(),
        valid: true,
    };
    store.record_commit(&commit).await.expect("a record");
    assert!(deposed(
        store.mark_commit_applied_fenced(&commit.sha, t1, 1).await,
        1,
        2
    ));
    assert_eq!(store.last_applied_commit().await.expect("a read"), None);
    assert!(
        store
            .mark_commit_applied_fenced(&commit.sha, t1, 2)
            .await
            .expect("applied")
    );
    assert!(
        !store
            .mark_commit_applied_fenced(&"3".repeat(40), t1, 2)
            .await
            .expect("not recorded")
    );
    let applied = store.last_applied_commit().await.expect("a read");
    assert_eq!(applied.and_then(|commit| commit.applied_at), Some(t1));

    // Entities.
    let fields = BTreeMap::from([("name".to_string(), "Acme".to_string())]);
    let entities = || async { store.snapshot().await.expect("a snapshot").entities.len() };
    assert!(deposed(
        store
            .put_entity_fenced(ResourceType::Partner, "acme", &fields, t1, 1)
            .await,
        1,
        2
    ));
    assert_eq!(entities().await, 0);
    store
        .put_entity_fenced(ResourceType::Partner, "acme", &fields, t1, 2)
        .await
        .expect("a put");
    store
        .put_entity_fenced(ResourceType::Partner, "acme", &fields, t1, 2)
        .await
        .expect("a put again");
    assert_eq!(entities().await, 1);
    assert!(deposed(
        store
            .delete_entity_fenced(ResourceType::Partner, "acme", 1)
            .await,
        1,
        2
    ));
    assert_eq!(entities().await, 1);
    assert!(
        store
            .delete_entity_fenced(ResourceType::Partner, "acme", 2)
            .await
            .expect("a delete")
    );
    assert!(
        !store
            .delete_entity_fenced(ResourceType::Partner, "acme", 2)
            .await
            .expect("nothing to delete")
    );
    assert_eq!(entities().await, 0);
}

async fn migrations(fixture: &Fixture) {
    // Opening an up-to-date store again migrates nothing and keeps everything.
    append_numbered(&fixture.store, 0..2).await;
    let again = open(&fixture.url).await;
    assert_eq!(again.audit_head().await.expect("a head").seq, 2);
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_role_can_only_insert_and_select_the_audit_log() {
    let postgres = Postgres::start();
    let database = postgres.create_database("fleet").await;
    let owner = open(&postgres.admin_url(&database)).await;
    append_numbered(&owner, 0..3).await;
    postgres
        .execute(
            "postgres",
            "CREATE ROLE app LOGIN PASSWORD 'app-password' IN ROLE wakafleet_app",
        )
        .await
        .expect("create the application's login role");

    // The application opens the up-to-date store without rights to change the schema, and
    // appends and reads.
    let app_url = postgres.url("app", "app-password", &database);
    let app = open(&app_url).await;
    app.append_one(record(3))
        .await
        .expect("the application appends");
    assert_eq!(verify(&app, &[]).await, Ok(4));

    sqlx::any::install_default_drivers();
    let mut connection = sqlx::AnyConnection::connect(&app_url)
        .await
        .expect("the application's connection");
    for statement in [
        "UPDATE audit_log SET action = 'x' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 1",
        "TRUNCATE audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER USER",
        "DROP TRIGGER audit_log_no_truncate ON audit_log",
    ] {
        let error = sqlx::raw_sql(statement)
            .execute(&mut connection)
            .await
            .expect_err(statement)
            .to_string();
        assert!(
            error.contains("permission denied") || error.contains("must be owner"),
            "`{statement}` failed for another reason: {error}"
        );
    }
    // Its other tables are its own.
    sqlx::raw_sql("DELETE FROM jobs")
        .execute(&mut connection)
        .await
        .expect("the application manages jobs");
    assert_eq!(verify(&owner, &[]).await, Ok(4));
}

/// 8 tasks append 10,000 records each through one store, while a second store on the same
/// database (another process, as far as the chain knows) appends too.
async fn concurrent_appends(url: &str, per_task: usize) {
    let store = std::sync::Arc::new(open(url).await);
    let other = std::sync::Arc::new(open(url).await);
    let mut tasks = Vec::new();
    for task in 0..8 {
        let store = if task == 7 {
            other.clone()
        } else {
            store.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(per_task);
            for n in 0..per_task {
                let mut record = record(n);
                record.actor.id = format!("task{task}");
                let entry = store.append_one(record).await.expect("an append");
                seqs.push(entry.seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        let mine = task.await.expect("a task");
        assert!(
            mine.windows(2).all(|pair| pair[0] < pair[1]),
            "a task's records are in order"
        );
        seqs.extend(mine);
    }
    seqs.sort_unstable();
    let total = 8 * per_task;
    assert_eq!(
        seqs,
        (1..=total as i64).collect::<Vec<_>>(),
        "one record per append, no gaps"
    );
    assert_eq!(
        verify(&store, &[]).await,
        Ok(total as i64),
        "one unbroken chain"
    );
    for task in 0..8 {
        let rows = store
            .audit_query(
                &Filter {
                    actor: Some(format!("task{task}")),
                    ..Filter::default()
                },
                1_000_000,
            )
            .await
            .expect("a query");
        assert_eq!(rows.len(), per_task, "nothing of task {task} is lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_make_one_chain_on_postgres() {
    let postgres = Postgres::start();
    let database = postgres.create_database("fleet").await;
    concurrent_appends(&postgres.admin_url(&database), 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_make_one_chain_on_sqlite() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    concurrent_appends(&sqlite_url(&folder, "state.db"), 10_000).await;
}

#[tokio::test]
async fn a_corrupt_sqlite_file_is_reported_and_left_alone() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let path = folder.path().join("state.db");
    let garbage: Vec<u8> = (0..8192_u32).map(|n| (n * 31 % 251) as u8).collect();
    std::fs::write(&path, &garbage).expect("write");
    let error = Store::open(
        &format!("sqlite://{}", path.display()).into(),
        Options::default(),
    )
    .await
    .expect_err("a corrupt file does not open");
    assert!(matches!(error, Error::Corrupt { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains("not a usable SQLite database"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        garbage,
        "the file is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_at_start_and_during_appends_loses_nothing() {
    let mut postgres = Postgres::start();
    let database = postgres.create_database("fleet").await;
    let url = postgres.admin_url(&database);

    // Down at start, for good: a clear error after the retry budget.
    postgres.stop();
    let quick = Options {
        retry_for: Duration::from_secs(2),
        ..Options::default()
    };
    let error = Store::open(&url.as_str().into(), quick)
        .await
        .expect_err("no server");
    let message = error.to_string();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(
        message.contains(&format!("127.0.0.1:{}", postgres.port))
            && !message.contains(common::postgres::PASSWORD),
        "the error names the endpoint, not the password: {message}"
    );

    // Down at start, back later: the open waits for it.
    let patient = Options {
        retry_for: Duration::from_secs(60),
        ..Options::default()
    };
    let opening = tokio::spawn({
        let url = url.clone();
        let patient = patient.clone();
        async move { Store::open(&url.as_str().into(), patient).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !opening.is_finished(),
        "the open waits while the server is down"
    );
    postgres.start_again();
    let store = std::sync::Arc::new(
        opening
            .await
            .expect("a task")
            .expect("opened once the server is back"),
    );
    append_numbered(&store, 0..5).await;

    // Down during appends: they wait, then land; none is lost or doubled.
    postgres.stop();
    let appending = tokio::spawn({
        let store = store.clone();
        async move {
            let mut seqs = Vec::new();
            for n in 5..10 {
                seqs.push(store.append_one(record(n)).await.map(|entry| entry.seq));
            }
            seqs
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !appending.is_finished(),
        "appends wait while the server is down"
    );
    postgres.start_again();
    let seqs: Vec<i64> = appending
        .await
        .expect("a task")
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every append lands once the server is back");
    assert_eq!(seqs, vec![6, 7, 8, 9, 10]);
    assert_eq!(verify(&store, &[]).await, Ok(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_committed_together() {
    let postgres = Postgres::start_with(&[]);
    let database = postgres.create_database("fleet").await;
    let store = std::sync::Arc::new(open(&postgres.admin_url(&database)).await);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..200 {
                store.append_one(record(n)).await.expect("an append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a task");
    }
    // Records of one statement share their time stamp.
    let rows = store.audit_rows(0, 10_000).await.expect("rows");
    let statements = rows
        .iter()
        .map(|row| row.at_us)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(rows.len(), 1_600);
    assert!(
        statements * 2 < rows.len(),
        "{} records in {statements} statements: appends waiting together should share one",
        rows.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_in_several_databases_of_one_server_can_be_made_at_once() {
    // The first migration makes the application's role, which the server keeps for all of its
    // databases: stores made at once in two of them both find it missing.
    let postgres = Postgres::start();
    let mut urls = Vec::new();
    for n in 0..8 {
        let database = postgres.create_database(&format!("at_once_{n}")).await;
        urls.push(wakafleet::secret::Secret::new(
            postgres.admin_url(&database),
        ));
    }
    let opened =
        futures_util::future::join_all(urls.iter().map(|url| Store::open(url, Options::default())))
            .await;
    for opened in opened {
        if let Err(error) = opened {
            let cause = std::error::Error::source(&error).map(ToString::to_string);
            panic!("{error}: {cause:?}");
        }
    }
}

/// The fingerprint of what `status` shows moves with every change of it, and only then.
async fn fingerprint(fixture: &Fixture) {
    let store = &fixture.store;
    let t0 = at("2026-05-01T10:00:00Z");
    let mut last = store.fingerprint().await.expect("a fingerprint");
    assert_eq!(
        store.fingerprint().await.expect("again"),
        last,
        "nothing changed"
    );
    let mut moved = async |what: &str| {
        let now = store.fingerprint().await.expect("a fingerprint");
        assert_ne!(now, last, "{what} moves the fingerprint");
        last = now;
    };
    let job = store
        .enqueue(&new_job("fingerprinted", 5, t0), t0)
        .await
        .expect("a job");
    moved("an enqueued job").await;
    store.cancel(&job.id, t0).await.expect("cancelled");
    moved("a cancelled job").await;
    store
        .retry(&job.id, t0)
        .await
        .expect_err("a cancelled job is not retried");
    store
        .put_daemon_state("reconcile", &serde_json::json!({"last": "now"}), t0)
        .await
        .expect("a report");
    moved("the daemon's report").await;
}
