//! A throwaway PostgreSQL server for tests and benchmarks: `initdb` into a temporary folder,
//! started on a free loopback port, stopped (immediately) and removed on drop.
//!
//! The superuser is `postgres` with the password [`PASSWORD`]; TCP connections need a
//! password (scram-sha-256), so roles and their privileges are real. It listens on every
//! address, so containers can reach it through the Docker host's gateway. When the tests run as
//! root the server runs as the `postgres` user, as PostgreSQL refuses to run as root.

#![allow(dead_code, reason = "each test binary uses part of the helpers")]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The superuser's password.
pub const PASSWORD: &str = "wakafleet-test";

const INSTALL: &str = "PostgreSQL's server programs (initdb, pg_ctl) are needed for this test: install them with `apt-get install -y postgresql` (scripts/test does this on Debian)";

pub struct Postgres {
    bin: PathBuf,
    folder: tempfile::TempDir,
    pub port: u16,
    settings: Vec<(String, String)>,
    running: bool,
}

/// The folder holding `initdb` and `pg_ctl`: on the PATH, or Debian's newest.
fn bin_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for folder in std::env::split_paths(&path) {
            if folder.join("initdb").is_file() && folder.join("pg_ctl").is_file() {
                return folder;
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).expect(INSTALL)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.starts_with(b"0\n"))
}

/// A command run as the server's user.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("{what}: {error}; {INSTALL}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

impl Postgres {
    /// A new server with settings for tests: no fsync, so it is quick. Commits still reach
    /// the kernel before they are acknowledged, so stopping the server (as a crash would)
    /// loses nothing; only a crash of the machine would.
    pub fn start() -> Postgres {
        Postgres::start_with(&[("fsync", "off")])
    }

    /// A new server with these `postgresql.conf` settings.
    pub fn start_with(settings: &[(&str, &str)]) -> Postgres {
        let bin = bin_dir();
        let folder = tempfile::Builder::new()
            .prefix("wakafleet-pg-")
            .tempdir()
            .expect("a temporary folder");
        std::fs::write(folder.path().join("password"), PASSWORD).expect("write the password file");
        if is_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(folder.path());
            run(chown, "chown the server's folder to the postgres user");
        }
        let mut initdb = as_server_user(&bin.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(folder.path().join("data"))
            .args([
                "--username=postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!(
                "--pwfile={}",
                folder.path().join("password").display()
            ))
            .args(["--encoding=UTF8", "--locale=C", "--no-sync"]);
        run(initdb, "initdb");
        // Containers reach the server through the Docker host's gateway address, with a
        // password like any other remote client.
        let hba = folder.path().join("data/pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        rules += "host all all 0.0.0.0/0 scram-sha-256\n";
        std::fs::write(&hba, rules).expect("write pg_hba.conf");
        let mut postgres = Postgres {
            bin,
            folder,
            port: free_port(),
            settings: settings
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            running: false,
        };
        postgres.start_again();
        postgres
    }

    fn data(&self) -> PathBuf {
        self.folder.path().join("data")
    }

    /// Starts the server again on the same port after [`Postgres::stop`].
    pub fn start_again(&mut self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=* -c max_connections=200",
            self.port,
            self.folder.path().display()
        );
        for (name, value) in &self.settings {
            options += &format!(" -c {name}={value}");
        }
        let mut start = as_server_user(&self.bin.join("pg_ctl"));
        start
            .arg("--pgdata")
            .arg(self.data())
            .arg("--log")
            .arg(self.folder.path().join("server.log"))
            .args(["--wait", "--timeout=60", "-o", &options, "start"]);
        run(start, "pg_ctl start");
        self.running = true;
    }

    /// Stops the server at once (as a crash would), keeping its data.
    pub fn stop(&mut self) {
        let mut stop = as_server_user(&self.bin.join("pg_ctl"));
        stop.arg("--pgdata")
            .arg(self.data())
            .args(["--wait", "--mode=immediate", "stop"]);
        run(stop, "pg_ctl stop");
        self.running = false;
    }

    /// The URL of `database` for `user` with `password`.
    pub fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// The superuser's URL of `database`.
    pub fn admin_url(&self, database: &str) -> String {
        self.url("postgres", PASSWORD, database)
    }

    /// Runs SQL as the superuser in `database` through psql-free means: sqlx.
    pub async fn execute(&self, database: &str, sql: &str) -> Result<(), sqlx::Error> {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&self.admin_url(database)).await?;
        sqlx::raw_sql(sql).execute(&mut connection).await?;
        connection.close().await
    }

    /// Creates a database owned by the superuser and returns its name.
    pub async fn create_database(&self, name: &str) -> String {
        self.execute("postgres", &format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|error| panic!("create database {name}: {error}"));
        name.to_string()
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.folder.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let mut stop = as_server_user(&self.bin.join("pg_ctl"));
            stop.arg("--pgdata")
                .arg(self.data())
                .args(["--wait", "--mode=immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = stop.status();
        }
    }
}
