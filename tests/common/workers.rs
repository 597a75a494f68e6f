//! Jobs run by real `wakafleet worker` processes, for tests: a fleet whose one region is the
//! local Docker engine and a throwaway PostgreSQL server (shared by the tests of a binary that
//! run at once), which holds the store too; workers that a test starts, kills and stops; and a
//! gate that holds a step's recorded end back so a test can catch the step while it runs.
//!
//! The gate is a trigger in the store's database that makes the write recording the step's
//! end wait for an advisory lock the test holds. A worker killed there has done the step and
//! audited it, but the store still says the step runs, as after a crash; a slow step is
//! usually caught, and killed, long before its end. Without the gate a step of a few
//! milliseconds (validate, activate) is over before a poll sees it. Nothing in wakafleet knows
//! of the gate.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use sqlx::Connection;

use crate::common::{
    docker::{LABEL, Sweep, images, target},
    postgres::Postgres,
};
use wakafleet::{
    driver::{self, Driver, Region, database_name},
    jobs::{Payload, WireTarget, lifecycle::workflow},
    store::{
        Options, Store,
        audit::{Entry, Filter},
        jobs::{Job, JobKind, JobStatus, NewJob, Step, StepStatus},
        state::InstanceStatus,
    },
};

/// The fleet's one region.
pub const REGION: &str = "ng-lagos";
/// The workers' key for instance passwords, as `WAKAFLEET_SECRETS_KEY` holds it.
pub const SECRETS_KEY: [u8; 32] = [0x5a; 32];
/// How long any awaited state may take to come about.
const DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(10);
/// The advisory lock of the gate.
const GATE: i64 = 7_357;

/// The test binary's PostgreSQL server, shared by the tests that run at once and stopped when the
/// last of them ends: a server in a static would never be dropped, and would outlive the run.
pub fn server() -> Arc<Postgres> {
    static SHARED: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(Postgres::start());
    *shared = Arc::downgrade(&server);
    server
}

/// One test's world: its store (a database of the shared server), a fleet folder naming the
/// region, the region's backups folder, its workers' logs, and a driver for looking at what
/// the workers made. Workers are the test's own locals, so they are killed before the sweep.
pub struct Fleet {
    pub store: Store,
    store_url: String,
    driver: Driver,
    folder: tempfile::TempDir,
    backups: tempfile::TempDir,
    logs: tempfile::TempDir,
    spawned: AtomicUsize,
    sweep: Sweep,
    postgres: Arc<Postgres>,
}

/// When [`Fleet::crash_at_every_step`] kills a worker in its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// As soon as the step is seen running: a slow step is cut off halfway, a step of
    /// milliseconds at the gate.
    WhenRunning,
    /// At the gate: the step is done and audited, and the store still says it runs.
    AtItsEnd,
}

/// A `wakafleet worker` process, killed when dropped.
pub struct Worker {
    child: Child,
    stderr: PathBuf,
}

/// Holds the recorded end of one step of one job in the store until released: a trigger on
/// `job_steps` waits for the advisory lock [`GATE`], which this connection holds meanwhile.
pub struct Gate {
    connection: sqlx::PgConnection,
    locked: bool,
}

impl Fleet {
    pub async fn new(test: &str) -> Fleet {
        images();
        let postgres = server();
        let store_url =
            postgres.admin_url(&postgres.create_database(&format!("store_{test}")).await);
        let store = Store::open(&store_url.as_str().into(), Options::default())
            .await
            .expect("the store");
        let (folder, backups, logs) = (tempdir(), tempdir(), tempdir());
        let settings = crate::common::FLEET_TOML
            .replace(
                "WAKAFLEET_NG_LAGOS_DATABASE_URL",
                "WAKAFLEET_TEST_REGION_DATABASE",
            )
            .replace(
                "\"/var/lib/wakafleet/backups/ng-lagos\"",
                &format!("{:?}", backups.path().display().to_string()),
            );
        assert!(settings.contains("_TEST_REGION_") && !settings.contains("/var/lib"));
        crate::common::write(folder.path(), "fleet.toml", settings);
        let sweep = Sweep::new();
        let region = Region {
            name: REGION.into(),
            docker: "unix:///var/run/docker.sock".into(),
            database: postgres.admin_url("postgres").into(),
            backups: backups.path().to_path_buf(),
        };
        let options = driver::Options {
            labels: sweep.labels(),
            ..driver::Options::default()
        };
        Fleet {
            store,
            store_url,
            driver: Driver::new(&region, options).expect("a driver"),
            folder,
            backups,
            logs,
            spawned: AtomicUsize::new(0),
            sweep,
            postgres,
        }
    }

    /// Starts a worker: lease 3 s, upkeep every second, one job at a time.
    pub fn worker(&self) -> Worker {
        let name = format!(
            "worker-{}",
            self.spawned.fetch_add(1, Ordering::Relaxed) + 1
        );
        let log = |stream: &str| self.logs.path().join(format!("{name}.{stream}"));
        let file = |path: &PathBuf| File::create(path).expect("a log file");
        let label = format!("{LABEL}={}", self.sweep.labels()[LABEL]);
        let child = Command::new(env!("CARGO_BIN_EXE_wakafleet"))
            .args(["worker", "--store", &self.store_url, "--queue", "local"])
            .arg("--fleet")
            .arg(self.folder.path())
            .args(["--secrets-key", "env:WAKAFLEET_SECRETS_KEY", "--lease", "3"])
            // Every kill is a stall: a job killed at each of its steps must not die of it.
            .args(["--upkeep", "1", "--max-stalls", "100", "--concurrency", "1"])
            .args(["--name", &name, "--label", &label])
            .env(
                "WAKAFLEET_TEST_REGION_DATABASE",
                self.postgres.admin_url("postgres"),
            )
            .env("WAKAFLEET_SECRETS_KEY", hex(&SECRETS_KEY))
            .env("WAKAFLEET_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file(&log("stdout")))
            .stderr(file(&log("stderr")))
            .spawn()
            .expect("start wakafleet worker");
        Worker {
            child,
            stderr: log("stderr"),
        }
    }

    pub async fn enqueue(
        &self,
        kind: JobKind,
        instance: &str,
        payload: Payload,
        tries: i64,
    ) -> String {
        let job = NewJob {
            id: None,
            kind,
            instance: instance.into(),
            region: REGION.into(),
            priority: 0,
            max_attempts: tries,
            payload: payload.encode(),
            commit_sha: None,
            reason: format!("test: {} {instance}", kind.as_str()),
            not_before: Utc::now(),
        };
        let enqueued = self.store.enqueue(&job, Utc::now()).await;
        enqueued.expect("enqueued").id
    }

    /// Enqueues a job and waits until it ends (a worker must be running).
    pub async fn run(&self, kind: JobKind, instance: &str, payload: Payload, tries: i64) -> Job {
        let id = self.enqueue(kind, instance, payload, tries).await;
        self.ended(&id).await
    }

    /// [`Fleet::run`], which must succeed.
    pub async fn succeeds(&self, kind: JobKind, instance: &str, payload: Payload) -> Job {
        let job = self.run(kind, instance, payload, 3).await;
        let what = format!("{} of {instance}: {:?}", kind.as_str(), job.error);
        assert_eq!(job.status, JobStatus::Succeeded, "{what}");
        job
    }

    pub async fn job(&self, id: &str) -> Job {
        self.store.job(id).await.expect("read").expect("the job")
    }

    pub async fn steps(&self, id: &str) -> Vec<Step> {
        self.store.steps(id).await.expect("the steps")
    }

    /// What the step `name` of job `id` left for later steps.
    pub async fn output(&self, id: &str, name: &str) -> serde_json::Value {
        let steps = self.steps(id).await;
        let step = steps
            .iter()
            .find(|step| step.name == name)
            .expect("the step");
        serde_json::from_str(step.output.as_deref().expect("an output")).expect("JSON")
    }

    pub async fn ended(&self, id: &str) -> Job {
        until(&format!("job {id} to end"), async || {
            let job = self.job(id).await;
            (!job.status.is_active()).then_some(job)
        })
        .await
    }

    /// Waits until the step at `position` runs under the job's current attempt; returns it.
    pub async fn running(&self, id: &str, position: usize) -> i64 {
        until(&format!("step {position} of job {id} to run"), async || {
            let (job, steps) = (self.job(id).await, self.steps(id).await);
            let step = steps.iter().find(|step| step.position == index(position))?;
            (job.status == JobStatus::Running
                && step.status == StepStatus::Running
                && step.job_attempt == job.attempts)
                .then_some(job.attempts)
        })
        .await
    }

    /// Runs job `id` with a new worker per step, killing each while its step runs (the
    /// worker of attempt n at step n - 1, at the moment `kill` says), then one more that
    /// finishes it.
    pub async fn crash_at_every_step(
        &self,
        gate: &mut Gate,
        id: &str,
        kind: JobKind,
        kill: Kill,
    ) -> Job {
        for position in 0..workflow(kind).len() {
            gate.hold(id, position).await;
            let worker = self.worker();
            let attempt = self.running(id, position).await;
            assert_eq!(attempt, index(position) + 1, "one attempt per kill");
            if kill == Kill::AtItsEnd {
                gate.reached().await;
            }
            worker.kill();
            gate.cut_off().await;
        }
        gate.release().await;
        let _last = self.worker();
        self.ended(id).await
    }

    /// The instance's recorded status and version.
    pub async fn recorded(&self, name: &str) -> (InstanceStatus, String) {
        let record = self.store.instance(name).await.expect("read");
        let record = record.expect("the instance's record");
        (record.status, record.version.unwrap_or_default())
    }

    /// Every audit record about `instance`, oldest first.
    pub async fn audit(&self, instance: &str) -> Vec<Entry> {
        let filter = Filter {
            resource: Some(format!("instance/{instance}")),
            ..Filter::default()
        };
        let rows = self.store.audit_query(&filter, 100_000).await;
        let rows = rows.expect("the audit log");
        rows.iter()
            .map(|row| row.entry().expect("a record"))
            .collect()
    }

    /// `wakafleet audit verify` passes on the store.
    pub fn audit_verifies(&self) {
        let args = ["audit", "verify", "--store", &self.store_url];
        crate::common::stdout_of_success(&crate::common::wakafleet(self.folder.path(), &args));
    }

    /// What Docker lists of the test's own (`ps -a`, `network ls`, `volume ls`), each shown
    /// as `format` says, sorted.
    pub fn on_engine(&self, list: &[&str], format: &str) -> Vec<String> {
        let filter = format!("label={LABEL}={}", self.sweep.labels()[LABEL]);
        let output = Command::new("docker")
            .args(list)
            .args(["--filter", &filter, "--format", format])
            .output()
            .expect("docker");
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "docker {list:?}: {error}");
        let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    /// What the engine holds of the test: containers, networks and volumes.
    pub fn parts(&self) -> [Vec<String>; 3] {
        [
            self.on_engine(&["ps", "-a"], "{{.Names}}"),
            self.on_engine(&["network", "ls"], "{{.Name}}"),
            self.on_engine(&["volume", "ls"], "{{.Name}}"),
        ]
    }

    /// The instance's backup files whose names end with `suffix`, by name.
    pub fn backups(&self, instance: &str, suffix: &str) -> Vec<String> {
        let folder = wakafleet::backups::folder(self.backups.path(), instance);
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .into_iter()
            .flatten()
            .map(|entry| {
                entry
                    .expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(suffix))
            .collect();
        names.sort();
        names
    }

    /// A column that a query as the server's superuser in the instance's database selects.
    pub async fn select(&self, instance: &str, sql: &str) -> Vec<String> {
        let url = self.postgres.admin_url(&database_name(instance));
        let connection = sqlx::PgConnection::connect(&url).await;
        let mut connection = connection.expect("the instance's database");
        sqlx::query_scalar(sql)
            .fetch_all(&mut connection)
            .await
            .expect(sql)
    }

    pub async fn add_item(&self, instance: &str, name: &str) {
        let sql = format!("INSERT INTO items (name) VALUES ('{name}') RETURNING name");
        assert_eq!(self.select(instance, &sql).await, [name]);
    }

    pub async fn items(&self, instance: &str) -> Vec<String> {
        self.select(instance, "SELECT name FROM items ORDER BY id")
            .await
    }

    pub async fn migrations(&self, instance: &str) -> Vec<String> {
        let sql = "SELECT version FROM schema_migrations ORDER BY version";
        self.select(instance, sql).await
    }

    pub async fn tables(&self, instance: &str) -> Vec<String> {
        let sql = "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1";
        self.select(instance, sql).await
    }

    /// How many of the instance's database and role the region's server holds.
    pub async fn database_and_role(&self, instance: &str) -> (i64, i64) {
        let url = self.postgres.admin_url("postgres");
        let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = $1), \
             (SELECT count(*) FROM pg_roles WHERE rolname = $1)",
        )
        .bind(database_name(instance))
        .fetch_one(&mut admin)
        .await
        .expect("counts")
    }

    /// The instance runs `version` of the test catalogue, healthy and out of maintenance;
    /// `when` says where the test is.
    pub async fn runs(&self, instance: &str, version: &str, when: &str) {
        let drift = self.driver.observe(&target(instance, version)).await;
        let drift = drift.expect("observed");
        assert!(drift.is_empty(), "{when}: {drift:?}");
        if let Err(error) = self.driver.health(instance).await {
            panic!("{when}: not healthy: {error}");
        }
        if let Err(error) = self.driver.smoke(instance).await {
            panic!("{when}: the smoke test failed: {error}");
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let folder = std::fs::read_dir(self.logs.path()).into_iter().flatten();
        let mut logs: Vec<PathBuf> = folder.flatten().map(|entry| entry.path()).collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("===== {}\n{text}", log.display());
        }
    }
}

impl Worker {
    /// SIGKILL, and waits until the process is gone.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait for the killed worker");
    }

    /// Sends SIGTERM and waits until the worker says it is stopping.
    pub async fn terminate(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(status.expect("kill -TERM").success(), "kill -TERM {pid}");
        until("the worker to take SIGTERM", async || {
            let log = std::fs::read_to_string(&self.stderr).ok()?;
            log.contains("stopping: no new claims").then_some(())
        })
        .await;
    }

    /// Waits until the process exits; its exit code.
    pub async fn exited(&mut self) -> Option<i32> {
        until("the worker to exit", async || {
            let status = self.child.try_wait().expect("wait");
            status.map(|status| status.code())
        })
        .await
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gate {
    pub async fn new(fleet: &Fleet) -> Gate {
        let connection = sqlx::PgConnection::connect(&fleet.store_url).await;
        let mut connection = connection.expect("connect to the store");
        let sql = format!(
            "{}; CREATE TRIGGER test_gate BEFORE UPDATE ON job_steps \
             FOR EACH ROW EXECUTE FUNCTION test_gate()",
            gate_function("", -1)
        );
        sqlx::raw_sql(&sql)
            .execute(&mut connection)
            .await
            .expect("the gate");
        Gate {
            connection,
            locked: false,
        }
    }

    /// Holds the end of step `position` of job `id`, and of no other.
    pub async fn hold(&mut self, id: &str, position: usize) {
        let mut sql = gate_function(id, index(position));
        if !self.locked {
            sql += &format!("; SELECT pg_advisory_lock({GATE})");
        }
        sqlx::raw_sql(&sql)
            .execute(&mut self.connection)
            .await
            .expect("hold");
        self.locked = true;
    }

    /// Lets the held step end, and holds nothing more.
    pub async fn release(&mut self) {
        let sql = format!(
            "SELECT pg_advisory_unlock({GATE}); {}",
            gate_function("", -1)
        );
        sqlx::raw_sql(&sql)
            .execute(&mut self.connection)
            .await
            .expect("release");
        self.locked = false;
    }

    /// Waits until a worker waits at the gate.
    pub async fn reached(&mut self) {
        let sql = waiting_sql("count(*)");
        until("a worker to reach the gate", async || {
            let waiting: Result<i64, _> = sqlx::query_scalar(&sql)
                .fetch_one(&mut self.connection)
                .await;
            (waiting.expect("pg_locks") > 0).then_some(())
        })
        .await;
    }

    /// Ends the session of a killed worker that waits at the gate, as the server does once it
    /// notices that its client is gone; its write would land when the gate opens otherwise.
    pub async fn cut_off(&mut self) {
        let sql = waiting_sql("count(pg_terminate_backend(pid))");
        until("the killed worker's session to end", async || {
            let waiting: Result<i64, _> = sqlx::query_scalar(&sql)
                .fetch_one(&mut self.connection)
                .await;
            (waiting.expect("pg_locks") == 0).then_some(())
        })
        .await;
    }
}

/// A query of `select` over the sessions that wait at the gate.
fn waiting_sql(select: &str) -> String {
    format!(
        "SELECT {select} FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND objid = {GATE} \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
}

fn gate_function(id: &str, position: i64) -> String {
    let id_like = id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    assert!(id_like, "a job id: {id}");
    format!(
        "CREATE OR REPLACE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $gate$ BEGIN \
         IF NEW.job_id = '{id}' AND NEW.position = {position} AND NEW.status <> 'running' THEN \
         PERFORM pg_advisory_xact_lock_shared({GATE}); END IF; RETURN NEW; END $gate$"
    )
}

/// Polls `probe` until it gives a value; fails after [`DEADLINE`], saying what it waited for.
pub async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {DEADLINE:?} for {what}");
        tokio::time::sleep(POLL).await;
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary folder")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn index(position: usize) -> i64 {
    i64::try_from(position).expect("a small position")
}

pub fn strings(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|text| text.to_string()).collect()
}

/// A payload that takes `instance` to `to` of the test catalogue, from `from`.
pub fn change(instance: &str, to: &str, from: Option<&str>) -> Payload {
    Payload {
        target: Some(WireTarget::of(&target(instance, to))),
        from: from.map(|from| WireTarget::of(&target(instance, from))),
        ..Payload::default()
    }
}
