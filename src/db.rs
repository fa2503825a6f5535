//! Database connection and migrations.
//!
//! SQLite runs in WAL mode with foreign keys enforced. On PostgreSQL an
//! optional schema holds everything: it is created if missing, and every
//! pooled connection is opened with its `search_path` set to it, so no
//! statement (migrations included) can land in `public`.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr};

use crate::config::DatabaseConfig;

/// Opens the pool described by `config`.
pub async fn connect(config: &DatabaseConfig) -> Result<DatabaseConnection, DbErr> {
    let mut opts = ConnectOptions::new(config.url.clone());
    opts.max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if config.is_sqlite() {
        opts.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
                .create_if_missing(true)
        });
    }
    if let Some(schema) = &config.schema {
        create_schema(&config.url, schema).await?;
        opts.set_schema_search_path(schema.clone());
    }
    Database::connect(opts).await
}

/// Creates a PostgreSQL schema on a connection of its own, before the pool
/// that uses it exists. `schema` has been checked to be a plain identifier.
async fn create_schema(url: &str, schema: &str) -> Result<(), DbErr> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(1).sqlx_logging(false);
    let conn = Database::connect(opts).await?;
    let created = conn
        .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .await;
    if let Err(e) = created {
        // Servers starting together race here: `IF NOT EXISTS` does not
        // stop two from creating it at once. The loser finds it made.
        let exists = conn
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                [schema.into()],
            ))
            .await?
            .is_some();
        if !exists {
            return Err(e);
        }
    }
    conn.close().await
}

/// Applies every pending migration. On PostgreSQL, servers starting
/// together take turns (two at once would both create the first tables,
/// and one would fail): each holds a session advisory lock, on a
/// connection of its own, while it migrates.
pub async fn migrate(db: &DatabaseConnection, config: &DatabaseConfig) -> Result<(), DbErr> {
    use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
    use sea_orm::sqlx::{ConnectOptions as _, Connection as _};
    if config.is_sqlite() {
        return Migrator::up(db, None).await;
    }
    let failed = |e: sea_orm::sqlx::Error| DbErr::Custom(format!("migration lock: {e}"));
    let opts: PgConnectOptions = config.url.parse().map_err(failed)?;
    let mut lock: PgConnection = opts
        .disable_statement_logging()
        .connect()
        .await
        .map_err(failed)?;
    let key = advisory_key(&format!(
        "modelfleet migrations {}",
        config.schema.as_deref().unwrap_or("")
    ));
    sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut lock)
        .await
        .map_err(failed)?;
    let applied = Migrator::up(db, None).await;
    // Ending the session releases the lock.
    let _ = lock.close().await;
    applied
}

/// A PostgreSQL advisory lock key for `what` (a purpose and a schema).
pub fn advisory_key(what: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(what.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Why the server is not ready: a summary fit for any caller, and the
/// detail for the log.
#[derive(Debug)]
pub struct NotReady {
    pub summary: &'static str,
    pub detail: String,
}

/// Whether the database answers and has every migration applied.
pub async fn ready(db: &DatabaseConnection) -> Result<(), NotReady> {
    db.ping().await.map_err(|e| NotReady {
        summary: "database unreachable",
        detail: e.to_string(),
    })?;
    let pending = Migrator::get_pending_migrations(db)
        .await
        .map_err(|e| NotReady {
            summary: "cannot read migrations",
            detail: e.to_string(),
        })?;
    if pending.is_empty() {
        Ok(())
    } else {
        Err(NotReady {
            summary: "migrations pending",
            detail: format!("{} migrations pending", pending.len()),
        })
    }
}
