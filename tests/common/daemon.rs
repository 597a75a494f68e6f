//! The daemon in tests: a git repository holding a small fleet of the test catalogue's
//! releases, whose region's instance databases are on the test binary's PostgreSQL server,
//! and `wakafleet run` against it, once (`--once`) or as a process that keeps running.
//!
//! Instance names start with a prefix of the world's own, because container names are
//! global on the engine; everything the daemon makes carries the world's sweep label.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Arc,
    time::Duration,
};

use crate::common::{
    FLEET_TOML, commit_all,
    docker::{IMAGE, LABEL, Sweep, images},
    postgres::Postgres,
    wakafleet_with,
    workers::{SECRETS_KEY, server},
    write,
};

/// How long `run --once` may take.
const ONCE: Duration = Duration::from_secs(240);

/// One test's repository, store and engine objects.
pub struct World {
    pub repo: tempfile::TempDir,
    state: tempfile::TempDir,
    backups: tempfile::TempDir,
    pub prefix: String,
    pub sweep: Sweep,
    pub store_url: String,
    postgres: Arc<Postgres>,
}

/// A `wakafleet run` that keeps running, killed when dropped.
pub struct Running {
    child: Child,
    pub stderr: PathBuf,
}

impl Running {
    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Kills it at once, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl World {
    /// A repository with the fleet settings, the catalogue (1.0.0, 1.1.0, 1.2.0), a
    /// manual-approval channel, a partner and a tenant, committed; a SQLite store.
    pub async fn new() -> World {
        World::with_store(None).await
    }

    /// [`World::new`] with its store in a database of the test binary's PostgreSQL server.
    pub async fn on_postgres() -> World {
        let postgres = server();
        let database = postgres
            .create_database(&format!("store_{}", uuid::Uuid::new_v4().simple()))
            .await;
        World::with_store(Some(postgres.admin_url(&database))).await
    }

    async fn with_store(store_url: Option<String>) -> World {
        let catalogue = images();
        let postgres = server();
        let (repo, state, backups) = (tempdir(), tempdir(), tempdir());
        let store_url = store_url
            .unwrap_or_else(|| format!("sqlite://{}", state.path().join("state.db").display()));
        let world = World {
            prefix: format!("w{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
            sweep: Sweep::new(),
            store_url,
            repo,
            state,
            backups,
            postgres,
        };
        let settings = FLEET_TOML
            .replace(
                "WAKAFLEET_NG_LAGOS_DATABASE_URL",
                "WAKAFLEET_TEST_REGION_DATABASE",
            )
            .replace(
                "\"/var/lib/wakafleet/backups/ng-lagos\"",
                &format!("{:?}", world.backups.path().display().to_string()),
            );
        world.write("fleet.toml", &settings);
        for release in ["1.0.0", "1.1.0", "1.2.0"] {
            let text = std::fs::read_to_string(catalogue.join(format!("releases/{release}.toml")))
                .expect("the catalogue's release");
            world.write(&format!("releases/{release}.toml"), &text);
        }
        world.write(
            "channels/manual.toml",
            "name = \"manual\"\nmode = \"manual-approval\"\n",
        );
        world.write(
            "partners/p1.toml",
            "id = \"p1\"\nname = \"Partner One\"\nemail = \"ops@p1.example\"\n",
        );
        world.write(
            "tenants/t1.toml",
            "id = \"t1\"\npartner = \"p1\"\nname = \"Tenant One\"\n",
        );
        world.commit("The fleet, with no instance yet");
        // The store exists before the daemon first runs, so plans can be made against it.
        let store = wakafleet::store::Store::open(
            &world.store_url.as_str().into(),
            wakafleet::store::Options::default(),
        )
        .await
        .expect("the store");
        store.close().await;
        world
    }

    /// The instance's full name: the world's prefix and `name`.
    pub fn name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Writes `instances/<prefix>-<name>.toml` at `version`, with `extra` lines.
    pub fn instance(&self, name: &str, version: &str, extra: &str) {
        let name = self.name(name);
        self.write(
            &format!("instances/{name}.toml"),
            &format!(
                "name = \"{name}\"\ntype = \"partner-deployed\"\npartner = \"p1\"\ntenant = \"t1\"\nregion = \"ng-lagos\"\ndata_residency = [\"NG\"]\nsuites = [\"commerce\"]\nsize = \"small\"\nchannel = \"manual\"\nversion = \"{version}\"\n{extra}"
            ),
        );
    }

    /// Writes a file of the fleet folder.
    pub fn write(&self, path: &str, text: &str) {
        write(&self.fleet(), path, text);
    }

    pub fn fleet(&self) -> PathBuf {
        self.repo.path().join("fleet")
    }

    /// Commits the work tree; returns the commit's hash.
    pub fn commit(&self, message: &str) -> String {
        commit_all(self.repo.path(), message).to_string()
    }

    /// The variables the daemon needs: the region's database and the secrets key.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "WAKAFLEET_TEST_REGION_DATABASE".to_string(),
                self.postgres.admin_url("postgres"),
            ),
            (
                "WAKAFLEET_SECRETS_KEY".to_string(),
                hex::encode(SECRETS_KEY),
            ),
            ("WAKAFLEET_LOG".to_string(), "info".to_string()),
        ]
    }

    fn label(&self) -> String {
        format!("{LABEL}={}", self.sweep.labels()[LABEL])
    }

    /// `wakafleet run fleet --once` with `extra` arguments.
    pub fn run_once(&self, extra: &[&str]) -> Output {
        let label = self.label();
        let mut args = vec![
            "run",
            "fleet",
            "--once",
            "--store",
            &self.store_url,
            "--label",
            &label,
            "--interval",
            "5",
        ];
        args.extend_from_slice(extra);
        self.wakafleet(&args)
    }

    /// `wakafleet run fleet --once` that must converge: exit 0.
    pub fn converges(&self) -> Output {
        let output = self.run_once(&[]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "run --once did not converge:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Starts `wakafleet run fleet` that keeps running, with `extra` arguments.
    pub fn start(&self, extra: &[&str]) -> Running {
        self.start_on(Path::new("fleet"), extra)
    }

    /// Starts `wakafleet run PATH` that keeps running, with `extra` arguments.
    pub fn start_on(&self, path: &Path, extra: &[&str]) -> Running {
        self.start_with(path, extra, &[])
    }

    /// [`World::start_on`] with more variables in the daemon's environment.
    pub fn start_with(&self, path: &Path, extra: &[&str], env: &[(&str, &str)]) -> Running {
        let label = self.label();
        let stderr = self
            .state
            .path()
            .join(format!("run-{}.stderr", uuid::Uuid::new_v4().simple()));
        // Daemons of tests running side by side must not fight over the default port.
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "off"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_wakafleet"))
            .arg("run")
            .arg(path)
            .args(["--store", &self.store_url, "--label", &label])
            .args(listen)
            .args(extra)
            .current_dir(self.repo.path())
            .envs(self.env())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("a log file"))
            .spawn()
            .expect("start wakafleet run");
        Running { child, stderr }
    }

    /// Runs a wakafleet command in the repository with the daemon's variables.
    pub fn wakafleet(&self, args: &[&str]) -> Output {
        let env = self.env();
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        wakafleet_with(self.repo.path(), args, &env, ONCE)
    }

    /// The JSON a command prints, which must exit 0.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let output = self.wakafleet(args);
        let stdout = crate::common::stdout_of_success(&output);
        serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{args:?}: {error}: {stdout}"))
    }

    /// The plan against the store, as JSON.
    pub fn plan(&self) -> serde_json::Value {
        self.json(&[
            "plan",
            "fleet",
            "--store",
            &self.store_url,
            "--format",
            "json",
        ])
    }

    /// The ready instance actions of the plan against the store, as `(kind, instance)`.
    pub fn ready(&self) -> Vec<(String, String)> {
        let plan = self.plan();
        let mut ready: Vec<(String, String)> = plan["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .filter(|action| {
                action["resource"]["type"] == "instance"
                    && action["status"] == "ready"
                    && action["kind"] != "orphaned"
            })
            .map(|action| {
                (
                    action["kind"].as_str().expect("a kind").to_string(),
                    action["resource"]["id"]
                        .as_str()
                        .expect("an id")
                        .to_string(),
                )
            })
            .collect();
        ready.sort();
        ready
    }

    /// Every job, as `jobs list --format json` gives them, oldest first.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        let jobs = self.json(&[
            "jobs",
            "list",
            "--store",
            &self.store_url,
            "--limit",
            "1000",
            "--format",
            "json",
        ]);
        let mut jobs = jobs["jobs"].as_array().expect("jobs").clone();
        jobs.reverse();
        jobs
    }

    /// The status, as JSON.
    pub fn status(&self) -> serde_json::Value {
        self.json(&["status", "--store", &self.store_url, "--format", "json"])
    }

    /// The instance's entry in the status.
    pub fn status_of(&self, name: &str) -> serde_json::Value {
        self.listed(name)
            .unwrap_or_else(|| panic!("`{name}` is in the status: {}", self.status()))
    }

    /// The instance's entry in the status, if it has one.
    pub fn listed(&self, name: &str) -> Option<serde_json::Value> {
        let name = self.name(name);
        let status = self.status();
        status["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .find(|instance| instance["name"] == name.as_str())
            .cloned()
    }

    /// `audit verify` passes.
    pub fn audit_verifies(&self) {
        crate::common::stdout_of_success(&self.wakafleet(&[
            "audit",
            "verify",
            "--store",
            &self.store_url,
        ]));
    }

    /// The audit records whose action starts with `action`, as `audit query` gives them.
    pub fn audit(&self, action: &str) -> Vec<serde_json::Value> {
        let pattern = format!("{action}*");
        let records = self.json(&[
            "audit",
            "query",
            "--store",
            &self.store_url,
            "--action",
            &pattern,
            "--limit",
            "10000",
            "--format",
            "json",
        ]);
        records["records"].as_array().cloned().unwrap_or_default()
    }

    /// The world's containers on the engine, as `name image state`, sorted.
    pub fn containers(&self) -> Vec<String> {
        let filter = format!("label={}", self.label());
        let output = Command::new("docker")
            .args(["ps", "-a", "--filter", &filter])
            .args(["--format", "{{.Names}} {{.Image}} {{.State}}"])
            .output()
            .expect("docker ps");
        assert!(output.status.success(), "docker ps failed");
        let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// The container line `containers` shows for a running instance at `version`.
    pub fn running(&self, name: &str, role: &str, version: &str) -> String {
        format!(
            "wakafleet-{}-{role} {IMAGE}:{version} running",
            self.name(name)
        )
    }

    /// Whether the instance's database exists on the region's server.
    pub async fn database_exists(&self, name: &str) -> bool {
        let database = format!("wf_{}", self.name(name).replace('-', "_"));
        let url = self.postgres.admin_url("postgres");
        let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("the region's server");
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&database)
            .fetch_optional(&mut connection)
            .await
            .expect("pg_database");
        found.is_some()
    }

    /// The world's own folder for files a test needs beside the repository.
    pub fn state_path(&self) -> &Path {
        self.state.path()
    }

    pub fn repo_path(&self) -> &Path {
        self.repo.path()
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary folder")
}
