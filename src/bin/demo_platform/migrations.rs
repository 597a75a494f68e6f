//! The demo platform's migrations: `0000_base` and one observable table per named migration,
//! each applied once, in its own transaction, with its row in `schema_migrations`.

use sqlx::PgPool;

/// Always the first migration.
pub const BASE: &str = "0000_base";

const BASE_SQL: &str = "
CREATE TABLE items (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE platform_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE worker_heartbeat (id INT PRIMARY KEY, at TIMESTAMPTZ NOT NULL);
";

/// Serializes concurrent `migrate` runs against one database.
const LOCK: i64 = 0x7761_6b61_6465_6d6f;

/// `0000_base`, then the names of `DEMO_MIGRATIONS` (comma-separated), each once.
pub fn list(demo_migrations: &str) -> Vec<String> {
    let mut names = vec![BASE.to_string()];
    for name in demo_migrations.split(',').map(str::trim) {
        if !name.is_empty() && !names.iter().any(|known| known == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// Applies the migrations not yet recorded, in order; returns the ones it applied.
pub async fn apply(pool: &PgPool, names: &[String]) -> Result<Vec<String>, sqlx::Error> {
    let mut applied = Vec::new();
    for name in names {
        let mut transaction = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK)
            .execute(&mut *transaction)
            .await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version TEXT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .execute(&mut *transaction)
        .await?;
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)",
        )
        .bind(name)
        .fetch_one(&mut *transaction)
        .await?;
        if done {
            transaction.commit().await?;
            continue;
        }
        let sql = if name == BASE {
            BASE_SQL.to_string()
        } else {
            format!("CREATE TABLE {} (id INT)", quote(&format!("m_{name}")))
        };
        sqlx::raw_sql(&sql).execute(&mut *transaction).await?;
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(name)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        tracing::info!(migration = %name, "applied");
        applied.push(name.clone());
    }
    Ok(applied)
}

/// The recorded migrations, in the order they were applied.
pub async fn applied(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY applied_at, version")
        .fetch_all(pool)
        .await
}

/// A quoted SQL identifier.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_comes_first_and_names_come_once() {
        assert_eq!(list(""), [BASE]);
        assert_eq!(
            list("0012_a, 0013_b,,0012_a,0000_base"),
            [BASE, "0012_a", "0013_b"]
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote(r#"m_a"b"#), r#""m_a""b""#);
    }
}
