//! One leader among several processes: electors on one store against a throwaway PostgreSQL
//! server shared by the file's scenarios (a database each), and the single elector of SQLite.

mod common;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use common::postgres::{PASSWORD, Postgres};
use wakafleet::{
    daemon::leader::{Elector, Error as ElectorError, Lost},
    secret::Secret,
    store::{
        Error, Options, Store,
        jobs::{JobKind, NewJob},
        leadership::Term,
    },
};

/// How often electors check: short, so losses show quickly.
const CHECK: Duration = Duration::from_millis(100);
/// Long enough for anything that is coming.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long to wait for what must not come: several checks.
const SHORT: Duration = Duration::from_millis(500);

/// A store in a database of its own, and the superuser's way into that database.
struct Fixture {
    url: String,
    store: Arc<Store>,
}

impl Fixture {
    fn elector(&self, holder: &str) -> Elector {
        Elector::postgres(&Secret::new(self.url.as_str()), holder.to_string(), CHECK)
            .expect("a PostgreSQL URL")
    }

    async fn admin(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("a superuser's connection")
    }
}

type Scenario = for<'a> fn(&'a Fixture) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

fn scenarios() -> Vec<(&'static str, Scenario)> {
    vec![
        ("a lost connection hands leadership over", |f| {
            Box::pin(a_lost_connection_hands_leadership_over(f))
        }),
        ("a stop releases the lock", |f| {
            Box::pin(a_stop_releases_the_lock(f))
        }),
        ("a wrong password fails without showing it", |f| {
            Box::pin(a_wrong_password_fails_without_showing_it(f))
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let postgres = Postgres::start();
    for (index, (name, scenario)) in scenarios().into_iter().enumerate() {
        let database = postgres
            .create_database(&format!("leadership{index}"))
            .await;
        let url = postgres.admin_url(&database);
        let store = Store::open(&Secret::new(url.as_str()), Options::default())
            .await
            .unwrap_or_else(|error| panic!("open the store of {name}: {error:?}"));
        let fixture = Fixture {
            url,
            store: Arc::new(store),
        };
        eprintln!("leadership on PostgreSQL: {name}");
        scenario(&fixture).await;
        fixture.store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_elector_leads_at_once_on_sqlite() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let url = format!("sqlite://{}", folder.path().join("state.db").display());
    let store = Store::open(&Secret::new(url), Options::default())
        .await
        .expect("a store");
    let mut elector = Elector::single("host-a:1".into());
    let stop = CancellationToken::new();
    let term = tokio::time::timeout(PATIENCE, elector.acquire(&store, &stop))
        .await
        .expect("a single elector does not wait")
        .expect("a term")
        .expect("not stopped");
    assert_eq!((term.epoch, term.holder.as_str()), (1, "host-a:1"));
    stop.cancel();
    let lost = elector.hold(&store, &term, &stop).await;
    assert!(matches!(lost, Lost::Stopped), "{lost:?}");
    let again = elector.acquire(&store, &stop).await.expect("no error");
    assert_eq!(again, None, "a cancelled stop begins no term");
    store.close().await;
}

/// The first elector leads; the second waits for as long as the first holds the lock; the
/// server ends the first's session; the first steps down, the second leads under a later
/// epoch, and the first's writes are refused.
async fn a_lost_connection_hands_leadership_over(fixture: &Fixture) {
    let store = &fixture.store;
    let mut admin = fixture.admin().await;
    let mut first = fixture.elector("host-a:1");
    let (stop_first, stop_second) = (CancellationToken::new(), CancellationToken::new());
    let term = first
        .acquire(store, &stop_first)
        .await
        .expect("no error")
        .expect("a term");
    assert_eq!((term.epoch, term.holder.as_str()), (1, "host-a:1"));
    let holder = only_lock_holder(&mut admin).await;

    let mut second = tokio::spawn(acquire(
        fixture.elector("host-b:2"),
        store.clone(),
        stop_second.clone(),
    ));
    // The second has tried the lock on a session of its own and did not get it.
    eventually("the second elector tries the lock", || async {
        let mut admin = fixture.admin().await;
        let tried = leader_sessions(&mut admin)
            .await
            .iter()
            .any(|(pid, query)| *pid != holder && query.contains("pg_try_advisory_lock"));
        admin.close().await.ok();
        tried
    })
    .await;
    assert!(
        tokio::time::timeout(SHORT, &mut second).await.is_err(),
        "the second elector waits while the first holds the lock"
    );
    assert_eq!(only_lock_holder(&mut admin).await, holder);
    assert_eq!(store.term().await.expect("a read"), Some(term.clone()));

    let holding = tokio::spawn({
        let store = store.clone();
        let term = term.clone();
        async move { first.hold(&store, &term, &stop_first).await }
    });
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holder)
        .fetch_one(&mut admin)
        .await
        .expect("terminate the first elector's session");
    assert!(terminated);
    let lost = tokio::time::timeout(PATIENCE, holding)
        .await
        .expect("the first elector notices within a few checks")
        .expect("hold does not panic");
    assert!(
        matches!(lost, Lost::Connection(_) | Lost::Unanswered(_)),
        "{lost:?}"
    );
    let (_second, next) = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("the second elector takes over")
        .expect("acquire does not panic");
    let next = next.expect("no error").expect("a term");
    assert_eq!((next.epoch, next.holder.as_str()), (2, "host-b:2"));
    assert_ne!(only_lock_holder(&mut admin).await, holder);

    // The deposed leader's writes are refused and write nothing; the new leader's pass.
    let t0 = at("2026-03-01T10:00:00Z");
    let refused = store.enqueue_fenced(&job("web"), t0, term.epoch).await;
    assert!(
        matches!(
            refused,
            Err(Error::Deposed {
                epoch: 1,
                current: 2
            })
        ),
        "{refused:?}"
    );
    assert!(store.jobs_of("web").await.expect("a read").is_empty());
    store
        .enqueue_fenced(&job("web"), t0, next.epoch)
        .await
        .expect("the leader's job");
    stop_second.cancel();
    admin.close().await.ok();
}

/// A leader that stops unlocks on its live session, so a waiting elector takes the lock at
/// its next try; an elector asked to stop while it waits returns no term.
async fn a_stop_releases_the_lock(fixture: &Fixture) {
    let store = &fixture.store;
    let mut admin = fixture.admin().await;
    let mut first = fixture.elector("host-a:1");
    let stop_first = CancellationToken::new();
    let term = first
        .acquire(store, &stop_first)
        .await
        .expect("no error")
        .expect("a term");
    let holder = only_lock_holder(&mut admin).await;
    let stop_second = CancellationToken::new();
    let second = tokio::spawn(acquire(
        fixture.elector("host-b:2"),
        store.clone(),
        stop_second.clone(),
    ));

    stop_first.cancel();
    let lost = tokio::time::timeout(PATIENCE, first.hold(store, &term, &stop_first))
        .await
        .expect("a stopped leader returns at once");
    assert!(matches!(lost, Lost::Stopped), "{lost:?}");
    let (_second, next) = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("the waiting elector takes the lock")
        .expect("acquire does not panic");
    let next = next.expect("no error").expect("a term");
    assert_eq!((next.epoch, next.holder.as_str()), (2, "host-b:2"));
    let sessions = leader_sessions(&mut admin).await;
    assert!(
        sessions.iter().any(|(pid, _)| *pid == holder),
        "the first released the lock on a live session, not by losing it: {sessions:?}"
    );
    assert_ne!(only_lock_holder(&mut admin).await, holder);

    // A third elector waits, and stops waiting when asked.
    let stop_third = CancellationToken::new();
    let third = tokio::spawn(acquire(
        fixture.elector("host-c:3"),
        store.clone(),
        stop_third.clone(),
    ));
    stop_third.cancel();
    let (_third, outcome) = tokio::time::timeout(PATIENCE, third)
        .await
        .expect("a stopped elector returns")
        .expect("acquire does not panic");
    assert_eq!(outcome.expect("no error"), None);
    assert_eq!(
        store.term().await.expect("a read").map(|term| term.epoch),
        Some(2)
    );
    stop_second.cancel();
    admin.close().await.ok();
}

async fn a_wrong_password_fails_without_showing_it(fixture: &Fixture) {
    let url = fixture.url.replace(PASSWORD, "not-the-password-xyz");
    let mut elector =
        Elector::postgres(&Secret::new(url), "host-a:1".into(), CHECK).expect("a PostgreSQL URL");
    let error = tokio::time::timeout(
        PATIENCE,
        elector.acquire(&fixture.store, &CancellationToken::new()),
    )
    .await
    .expect("a refused password is not retried")
    .expect_err("a refused password");
    assert!(matches!(error, ElectorError::Lock { .. }), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("not-the-password-xyz"), "{shown}");
    assert_eq!(fixture.store.term().await.expect("a read"), None);
}

/// Runs an elector's `acquire` on a task of its own, handing the elector back.
async fn acquire(
    mut elector: Elector,
    store: Arc<Store>,
    stop: CancellationToken,
) -> (Elector, Result<Option<Term>, ElectorError>) {
    let term = elector.acquire(&store, &stop).await;
    (elector, term)
}

/// The one session holding an advisory lock in this database.
async fn only_lock_holder(admin: &mut PgConnection) -> i32 {
    let holders: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(admin)
    .await
    .expect("read pg_locks");
    assert_eq!(holders.len(), 1, "one session holds the lock: {holders:?}");
    holders[0]
}

/// The electors' sessions in this database and the last statement of each.
async fn leader_sessions(admin: &mut PgConnection) -> Vec<(i32, String)> {
    sqlx::query_as(
        "SELECT pid, query FROM pg_stat_activity WHERE application_name = 'wakafleet leader' \
         AND datname = current_database()",
    )
    .fetch_all(admin)
    .await
    .expect("read pg_stat_activity")
}

/// Waits until `condition` holds, failing the test after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("an RFC 3339 time")
}

fn job(instance: &str) -> NewJob {
    NewJob {
        id: Some(format!("upgrade-{instance}")),
        kind: JobKind::Upgrade,
        instance: instance.into(),
        region: "ng-lagos".into(),
        priority: 0,
        max_attempts: 1,
        payload: serde_json::json!({}),
        commit_sha: None,
        reason: "a test".into(),
        not_before: at("2026-03-01T10:00:00Z"),
    }
}
