//! One region's PostgreSQL server: a database and a role per instance, backups with
//! `pg_dump` in the custom format, restores with `pg_restore`, and the maintenance flag the
//! platform reads.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Stdio,
};

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use crate::{backups, driver::Error, secret::Secret};

/// A PostgreSQL URL taken apart: `postgres://USER:PASSWORD@HOST:PORT/DATABASE`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub user: String,
    pub password: Secret,
    pub host: String,
    pub port: u16,
    pub database: String,
}

impl std::fmt::Debug for ServerUrl {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.shown())
    }
}

impl ServerUrl {
    /// Takes `url` apart; the error never holds the password.
    pub fn parse(url: &str) -> Result<ServerUrl, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("a database URL starts with postgres://")?;
        // The user information ends at the last `@`, so a password with an unescaped `/`,
        // `?` or `@` is still taken whole (as `secret::redact_url` takes it).
        let (credentials, rest) = rest
            .rsplit_once('@')
            .ok_or("a database URL names its user: postgres://USER:PASSWORD@HOST/DATABASE")?;
        let rest = rest.split('?').next().unwrap_or(rest);
        let (address, database) = rest.split_once('/').unwrap_or((rest, "postgres"));
        let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .map_err(|_| format!("`{port}` is not a port number"))?,
            ),
            None => (address, 5432),
        };
        Ok(ServerUrl {
            user: percent_decode(user)?,
            password: Secret::new(percent_decode(password)?),
            host: host.to_string(),
            port,
            database: percent_decode(database)?,
        })
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, database: &str) -> ServerUrl {
        ServerUrl {
            database: database.to_string(),
            ..self.clone()
        }
    }

    /// For messages: no password.
    pub fn shown(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.user)
            .password(self.password.expose())
            .database(&self.database)
    }

    /// The URL with its parts encoded: a secret, since it holds the password.
    pub fn url(&self) -> Secret {
        Secret::new(format!(
            "postgres://{}:{}@{}:{}/{}",
            percent_encode(&self.user),
            percent_encode(self.password.expose()),
            self.host,
            self.port,
            percent_encode(&self.database)
        ))
    }
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text
                .get(index + 1..index + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or("a database URL has a bad %-escape")?;
            out.push(hex);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a database URL is not UTF-8 once decoded".to_string())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The region's server, as its administrator.
#[derive(Clone, Debug)]
pub struct Server {
    pub region: String,
    pub admin: ServerUrl,
}

/// A backup file and its checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    /// The file name, which `restore` takes.
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

impl Server {
    fn error(&self, source: sqlx::Error) -> Error {
        Error::Database {
            region: self.region.clone(),
            endpoint: self.admin.shown(),
            source,
        }
    }

    /// A connection to `database` as the administrator.
    pub async fn connect(&self, database: &str) -> Result<PgConnection, Error> {
        PgConnection::connect_with(&self.admin.with_database(database).options())
            .await
            .map_err(|e| self.error(e))
    }

    /// Fails unless the server answers.
    pub async fn ping(&self) -> Result<(), Error> {
        let mut connection = self.connect(&self.admin.database).await?;
        sqlx::query("SELECT 1")
            .execute(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        connection.close().await.map_err(|e| self.error(e))
    }

    /// Makes the role (with this password) and its database exist; only the role and the
    /// administrator may connect to the database.
    pub async fn ensure_database(&self, name: &str, password: &Secret) -> Result<(), Error> {
        let mut connection = self.connect(&self.admin.database).await?;
        let role_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(name)
                .fetch_one(&mut connection)
                .await
                .map_err(|e| self.error(e))?;
        let verb = if role_exists { "ALTER" } else { "CREATE" };
        // The server is sent a SCRAM verifier, never the password: a statement is written to
        // the server's log when it fails (or when statements are logged), and the verifier
        // tells nothing that opens the role. The verifier is base64 and `$`, `:` and the name
        // a checked identifier, so both are safe to quote; PostgreSQL takes neither as a
        // parameter here.
        let verifier = scram_verifier(password)?;
        self.raw(
            &mut connection,
            format!(
                "{verb} ROLE \"{name}\" LOGIN PASSWORD '{verifier}' NOSUPERUSER NOCREATEDB NOCREATEROLE"
            ),
        )
        .await?;
        let database_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&mut connection)
                .await
                .map_err(|e| self.error(e))?;
        if !database_exists {
            self.raw(
                &mut connection,
                format!("CREATE DATABASE \"{name}\" OWNER \"{name}\""),
            )
            .await?;
        }
        self.raw(
            &mut connection,
            format!(
                "REVOKE ALL ON DATABASE \"{name}\" FROM PUBLIC; GRANT CONNECT, TEMPORARY ON DATABASE \"{name}\" TO \"{name}\""
            ),
        )
        .await?;
        connection.close().await.map_err(|e| self.error(e))
    }

    /// Runs statements without parameters. Boxed with the connection's own `execute`: the
    /// future of `RawSql::execute` is generic over its executor, and a job step that awaits
    /// it cannot be shown to be `Send` (rust-lang/rust#102211).
    fn raw<'a>(
        &'a self,
        connection: &'a mut PgConnection,
        sql: String,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // Through the connection's own (boxed) `execute`: `RawSql::execute`'s future is
            // generic over the executor, which defeats the `Send` proof.
            sqlx::Executor::execute(&mut *connection, sqlx::raw_sql(&sql))
                .await
                .map_err(|e| self.error(e))?;
            Ok(())
        })
    }

    pub async fn database_exists(&self, name: &str) -> Result<bool, Error> {
        let mut connection = self.connect(&self.admin.database).await?;
        let exists =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&mut connection)
                .await
                .map_err(|e| self.error(e))?;
        connection.close().await.map_err(|e| self.error(e))?;
        Ok(exists)
    }

    /// Drops the database and its role, closing their sessions first.
    pub async fn drop_database(&self, name: &str) -> Result<(), Error> {
        let mut connection = self.connect(&self.admin.database).await?;
        // Separate statements: DROP DATABASE cannot run inside the transaction a
        // multi-statement query makes.
        for statement in [
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS \"{name}\""),
        ] {
            self.raw(&mut connection, statement).await?;
        }
        connection.close().await.map_err(|e| self.error(e))
    }

    /// Turns the platform's maintenance mode on or off (its `platform_settings` table); a
    /// database without the table yet (before the first migration) has nothing to turn.
    pub async fn set_maintenance(&self, database: &str, on: bool) -> Result<(), Error> {
        let mut connection = self.connect(database).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('platform_settings') IS NOT NULL")
                .fetch_one(&mut connection)
                .await
                .map_err(|e| self.error(e))?;
        if exists {
            let sql = if on {
                "INSERT INTO platform_settings (key, value) VALUES ('maintenance', 'on') ON CONFLICT (key) DO UPDATE SET value = 'on'"
            } else {
                "DELETE FROM platform_settings WHERE key = 'maintenance'"
            };
            sqlx::query(sql)
                .execute(&mut connection)
                .await
                .map_err(|e| self.error(e))?;
        }
        connection.close().await.map_err(|e| self.error(e))
    }

    /// Dumps `database` into `folder` as `<label>.dump` ([`backups::named`]) with its checksum beside it
    /// (`<label>.dump.sha256`), written to a temporary name first so a crash leaves no
    /// half-written backup under the final name. The checksum is written before the dump
    /// takes its name: a crash between the two leaves no `.dump` without a checksum, which
    /// [`Server::backups`] would not count and a repeated step would back up again beside.
    pub async fn backup(
        &self,
        database: &str,
        folder: &Path,
        label: &str,
    ) -> Result<Backup, Error> {
        tokio::fs::create_dir_all(folder).await.map_err(|error| {
            Error::Invalid(format!(
                "region `{}`: cannot create the backups folder {}: {error}",
                self.region,
                folder.display()
            ))
        })?;
        let name = backups::named(label);
        let path = folder.join(&name);
        let partial = folder.join(format!("{name}.partial"));
        self.pg_tool(
            "pg_dump",
            &[
                "--format=custom",
                "--file",
                path_text(&partial)?,
                "--dbname",
                database,
            ],
        )
        .await?;
        let (sha256, bytes) = checksum(&partial).await?;
        tokio::fs::write(
            folder.join(checksum_name(&name)),
            format!("{sha256}  {name}\n"),
        )
        .await
        .map_err(|error| Error::Invalid(format!("writing the backup's checksum: {error}")))?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|error| Error::Invalid(format!("moving the backup into place: {error}")))?;
        Ok(Backup {
            name,
            path,
            sha256,
            bytes,
        })
    }

    /// The file names of the complete backups of `folder` (each `.dump` file whose checksum
    /// is written beside it), in name order: oldest first for backups taken for a purpose,
    /// whose names start with their time. A folder that does not exist holds none; one that
    /// cannot be read is an error, never "none": the caller would take a new backup in place
    /// of the one it is looking for.
    pub async fn backups(&self, folder: &Path) -> Result<Vec<String>, Error> {
        let unreadable = |error: std::io::Error| {
            Error::Invalid(format!(
                "region `{}`: cannot read the backups folder {}: {error}",
                self.region,
                folder.display()
            ))
        };
        let mut entries = match tokio::fs::read_dir(folder).await {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(unreadable(error)),
        };
        let mut names = BTreeSet::new();
        while let Some(entry) = entries.next_entry().await.map_err(unreadable)? {
            // A name that is not UTF-8 is none the driver wrote.
            if let Ok(name) = entry.file_name().into_string() {
                names.insert(name);
            }
        }
        Ok(names
            .iter()
            .filter(|name| {
                name.ends_with(backups::EXTENSION) && names.contains(&checksum_name(name))
            })
            .cloned()
            .collect())
    }

    /// The newest complete backup of `folder` for `purpose` ([`Server::backups`]), by name:
    /// the time a name starts with makes the newest sort last.
    pub async fn latest_backup(
        &self,
        folder: &Path,
        purpose: backups::Purpose<'_>,
    ) -> Result<Option<String>, Error> {
        let names = self.backups(folder).await?;
        Ok(names
            .into_iter()
            .rfind(|name| backups::is_for(name, purpose)))
    }

    /// Deletes a backup of `folder` and its checksum; one already gone is fine. The checksum
    /// goes first, so a deletion cut off between the two leaves no complete backup behind.
    /// A name that is not a backup's plain file name is refused, and nothing is deleted.
    pub async fn remove_backup(&self, folder: &Path, name: &str) -> Result<(), Error> {
        let path = backup_path(folder, name)?;
        for file in [folder.join(checksum_name(name)), path] {
            match tokio::fs::remove_file(&file).await {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(Error::Invalid(format!(
                        "region `{}`: cannot delete {}: {error}",
                        self.region,
                        file.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The migrations `schema_migrations` records (none before the first).
    pub async fn applied_migrations(
        &self,
        connection: &mut PgConnection,
    ) -> Result<Vec<String>, Error> {
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('schema_migrations') IS NOT NULL")
                .fetch_one(&mut *connection)
                .await
                .map_err(|e| self.error(e))?;
        if !exists {
            return Ok(Vec::new());
        }
        sqlx::query_scalar("SELECT version::text FROM schema_migrations")
            .fetch_all(&mut *connection)
            .await
            .map_err(|e| self.error(e))
    }

    /// A backup of `folder` by name, after checking the file against its recorded checksum.
    pub async fn checked_backup(&self, folder: &Path, name: &str) -> Result<Backup, Error> {
        let path = backup_path(folder, name)?;
        let recorded = tokio::fs::read_to_string(folder.join(checksum_name(name)))
            .await
            .map_err(|error| {
                Error::Invalid(format!(
                    "the backup {} has no checksum: {error}",
                    path.display()
                ))
            })?;
        let (sha256, bytes) = checksum(&path).await?;
        if recorded.split_whitespace().next() != Some(sha256.as_str()) {
            return Err(Error::Invalid(format!(
                "the backup {} does not match its checksum; it is not restored",
                path.display()
            )));
        }
        Ok(Backup {
            name: name.to_string(),
            path,
            sha256,
            bytes,
        })
    }

    /// Restores a backup of `folder` into `database`, replacing its objects, after checking
    /// the file against its recorded checksum.
    pub async fn restore(
        &self,
        database: &str,
        folder: &Path,
        name: &str,
    ) -> Result<Backup, Error> {
        let backup = self.checked_backup(folder, name).await?;
        self.pg_tool(
            "pg_restore",
            &[
                "--clean",
                "--if-exists",
                "--single-transaction",
                "--exit-on-error",
                "--dbname",
                database,
                path_text(&backup.path)?,
            ],
        )
        .await?;
        Ok(backup)
    }

    /// Runs a PostgreSQL client program against this server, the password in its
    /// environment rather than on its command line.
    async fn pg_tool(&self, program: &str, args: &[&str]) -> Result<(), Error> {
        let binary = pg_binary(program)?;
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(args)
            .env("PGHOST", &self.admin.host)
            .env("PGPORT", self.admin.port.to_string())
            .env("PGUSER", &self.admin.user)
            .env("PGPASSWORD", self.admin.password.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // An operation given up (a job cancelled or timed out) leaves no dump or restore
            // running behind it.
            .kill_on_drop(true);
        // `--dbname NAME` is a database name: the connection comes from the environment.
        let output = command
            .output()
            .await
            .map_err(|error| Error::Invalid(format!("cannot run {}: {error}", binary.display())))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Error::Step {
                step: program.to_string(),
                reason: format!(
                    "region `{}` ({}): {}",
                    self.region,
                    self.admin.shown(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            })
        }
    }
}

/// The iterations of a SCRAM verifier: PostgreSQL's default (`scram_iterations`).
const SCRAM_ITERATIONS: u32 = 4096;

/// The SCRAM-SHA-256 verifier of `password` as PostgreSQL stores it (RFC 5802 and 7677):
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, in base64. Given as a role's
/// `PASSWORD`, PostgreSQL keeps it as it is.
///
/// PostgreSQL runs a password through SASLprep first; the generated passwords are hex,
/// which SASLprep leaves as it is.
pub fn scram_verifier(password: &Secret) -> Result<String, Error> {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use hmac::{Hmac, Mac};
    type HmacSha256 = Hmac<Sha256>;

    let mut salt = [0; 16];
    getrandom::fill(&mut salt)
        .map_err(|error| Error::Invalid(format!("no randomness for a salt: {error}")))?;
    let mut salted = [0; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(
        password.expose().as_bytes(),
        &salt,
        SCRAM_ITERATIONS,
        &mut salted,
    );
    let key = |text: &[u8]| {
        let mut mac = HmacSha256::new_from_slice(&salted).expect("HMAC takes a key of any length");
        mac.update(text);
        mac.finalize().into_bytes()
    };
    let stored_key = Sha256::digest(key(b"Client Key"));
    let server_key = key(b"Server Key");
    Ok(format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    ))
}

/// The path of the backup `name` in `folder`, refusing a name that is not a backup's plain
/// file name: one with a `/` or `..` could reach outside the folder, and every backup's name
/// ends with [`backups::EXTENSION`].
fn backup_path(folder: &Path, name: &str) -> Result<PathBuf, Error> {
    if name.contains('/') || name.contains("..") || !name.ends_with(backups::EXTENSION) {
        return Err(Error::Invalid(format!("`{name}` is not a backup name")));
    }
    Ok(folder.join(name))
}

/// The file name of the checksum written beside the backup `name`.
fn checksum_name(name: &str) -> String {
    format!("{name}.sha256")
}

fn path_text(path: &Path) -> Result<&str, Error> {
    path.to_str()
        .ok_or_else(|| Error::Invalid(format!("{} is not a UTF-8 path", path.display())))
}

async fn checksum(path: &Path) -> Result<(String, u64), Error> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|error| Error::Invalid(format!("reading {}: {error}", path.display())))?;
    Ok((hex::encode(Sha256::digest(&bytes)), bytes.len() as u64))
}

/// A PostgreSQL client program: on the PATH, or Debian's newest under /usr/lib/postgresql.
fn pg_binary(program: &str) -> Result<PathBuf, Error> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .collect()
        })
        .unwrap_or_default();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin").join(program))
        .collect();
    debian.sort();
    candidates.extend(debian.into_iter().rev());
    candidates.into_iter().find(|path| path.is_file()).ok_or_else(|| {
        Error::Invalid(format!(
            "{program} is needed for backups: install PostgreSQL's client programs (`apt-get install -y postgresql-client`)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_taken_apart_and_put_back() {
        let url = ServerUrl::parse("postgres://admin:p%40ss@db.example:6543/fleet?sslmode=disable")
            .expect("a URL");
        assert_eq!(url.user, "admin");
        assert_eq!(url.password.expose(), "p@ss");
        assert_eq!((url.host.as_str(), url.port), ("db.example", 6543));
        assert_eq!(url.database, "fleet");
        assert_eq!(url.shown(), "db.example:6543");
        assert_eq!(ServerUrl::parse(url.url().expose()).expect("a URL"), url);
        assert!(!format!("{url:?}").contains("p@ss"));
        let bare = ServerUrl::parse("postgres://admin@db").expect("a URL");
        assert_eq!((bare.port, bare.database.as_str()), (5432, "postgres"));
        let slashed = ServerUrl::parse("postgres://app:s3cr/et?pw@db:5432/fleet").expect("a URL");
        assert_eq!(slashed.password.expose(), "s3cr/et?pw");
        assert_eq!(
            (slashed.host.as_str(), slashed.database.as_str()),
            ("db", "fleet")
        );
        assert!(ServerUrl::parse("mysql://x@y/z").is_err());
        assert!(ServerUrl::parse("postgres://db/z").is_err());
    }
}
