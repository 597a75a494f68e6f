//! The migrations embedded in the binary, applied when a store is opened.
//!
//! A role that may not change the schema (the application's role on PostgreSQL) can still
//! open a store that is up to date: the migrator runs only when a migration is missing.

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use crate::store::{Backend, Error, Store};

/// Each backend's migrations: version, description, SQL.
const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "store",
        include_str!("../../migrations/postgres/0001_store.sql"),
    ),
    (
        2,
        "secrets",
        include_str!("../../migrations/postgres/0002_secrets.sql"),
    ),
    (
        3,
        "audit keys",
        include_str!("../../migrations/postgres/0003_audit_keys.sql"),
    ),
    (
        4,
        "leases",
        include_str!("../../migrations/postgres/0004_leases.sql"),
    ),
    (
        5,
        "leadership",
        include_str!("../../migrations/postgres/0005_leadership.sql"),
    ),
    (
        6,
        "daemon",
        include_str!("../../migrations/postgres/0006_daemon.sql"),
    ),
];
const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "store",
        include_str!("../../migrations/sqlite/0001_store.sql"),
    ),
    (
        2,
        "secrets",
        include_str!("../../migrations/sqlite/0002_secrets.sql"),
    ),
    (
        3,
        "audit keys",
        include_str!("../../migrations/sqlite/0003_audit_keys.sql"),
    ),
    (
        4,
        "leases",
        include_str!("../../migrations/sqlite/0004_leases.sql"),
    ),
    (
        5,
        "leadership",
        include_str!("../../migrations/sqlite/0005_leadership.sql"),
    ),
    (
        6,
        "daemon",
        include_str!("../../migrations/sqlite/0006_daemon.sql"),
    ),
];

#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

impl Store {
    /// Applies the migrations the store lacks.
    pub(crate) async fn migrate(&self) -> Result<(), Error> {
        let migrations = match self.backend {
            Backend::Postgres => POSTGRES,
            Backend::Sqlite => SQLITE,
        };
        let applied: Result<Vec<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(self.pool())
                .await;
        match applied {
            Ok(applied)
                if migrations
                    .iter()
                    .all(|(version, _, _)| applied.contains(version)) =>
            {
                return Ok(());
            }
            Err(error) if super::sqlite_corruption(&error).is_some() => {
                return Err(self.migrate_error(error.into()));
            }
            // A migration is missing, or the table is (a new store): migrate.
            Ok(_) | Err(sqlx::Error::Database(_)) => {}
            Err(error) => return Err(self.migrate_error(error.into())),
        }
        let migrator = Migrator::new(Embedded(migrations))
            .await
            .map_err(|error| self.migrate_error(error.into()))?;
        // The first migration makes the application's role, which PostgreSQL keeps for the
        // whole server: stores in two of its databases migrated at once may both find the role
        // missing, and the second to make it fails. Its migration is rolled back with it (each
        // runs in a transaction), and the next run finds the role.
        let mut tries = 0;
        loop {
            tries += 1;
            let mut connection = self
                .pool()
                .acquire()
                .await
                .map_err(|error| self.migrate_error(error.into()))?;
            // `run_direct`, sqlx's way past `Acquire` on a borrowed connection not being general
            // enough for the future to be `Send`.
            let Err(error) = migrator.run_direct(&mut *connection).await else {
                return Ok(());
            };
            // sqlx keeps its lock of the database when a run fails; it goes with the session.
            drop(sqlx::Connection::close(connection.detach()).await);
            if tries >= 3 || !made_meanwhile(&error) {
                return Err(self.migrate_error(error.into()));
            }
            tracing::debug!(%error, "a role was made meanwhile by another database's migration; migrating again");
        }
    }

    fn migrate_error(&self, source: Box<dyn std::error::Error + Send + Sync>) -> Error {
        let sqlx_error = source.downcast_ref::<sqlx::Error>().or_else(|| {
            match source.downcast_ref::<sqlx::migrate::MigrateError>() {
                Some(sqlx::migrate::MigrateError::Execute(error))
                | Some(sqlx::migrate::MigrateError::ExecuteMigration(error, _)) => Some(error),
                _ => None,
            }
        });
        if let Some(reason) = sqlx_error.and_then(super::sqlite_corruption) {
            return Error::Corrupt {
                path: super::sqlite_path(&self.url).to_string(),
                reason,
            };
        }
        Error::Migrate {
            url: self.url.clone(),
            source,
        }
    }
}

/// Whether a migration failed because another database's migration made a role at the same
/// time: a unique violation in the server's catalogue of roles.
fn made_meanwhile(error: &sqlx::migrate::MigrateError) -> bool {
    match error {
        sqlx::migrate::MigrateError::ExecuteMigration(sqlx::Error::Database(error), _) => {
            error.is_unique_violation() && error.constraint() == Some("pg_authid_rolname_index")
        }
        _ => false,
    }
}
