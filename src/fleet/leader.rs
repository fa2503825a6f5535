//! One scaler per database. Several servers may share one database; only
//! the one holding the lock runs the scaler (and recovery), the others
//! serve the API and wait to take over.
//!
//! With the Kubernetes backend the lock is a `coordination.k8s.io` Lease
//! (see [`LeaseLock`]). Otherwise, on PostgreSQL it is a session advisory
//! lock on a connection of its own, keyed by the schema; it is released
//! when that connection ends, however the server ends. On SQLite it is an
//! exclusive `flock` on a file beside the database.

use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::watch;

use super::kubernetes::lease::LeaseLock;
use crate::config::DatabaseConfig;

/// How the servers sharing a database choose the one running the scaler.
#[derive(Clone)]
pub enum Election {
    /// A lock in (or beside) the database.
    Database(DatabaseConfig),
    /// A Lease on the cluster the instances run on.
    Lease(Box<LeaseLock>),
}

/// Held while this server runs the scaler.
pub enum Leadership {
    Postgres(PgConnection),
    Sqlite(Flock<std::fs::File>),
    /// An in-memory SQLite database: nothing else can share it.
    Alone,
    /// Renewed by its own task, so that a long scaler pass cannot let it
    /// run out.
    Lease {
        /// Until when it holds, as of its last renewal.
        until: watch::Receiver<tokio::time::Instant>,
        release: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    },
}

impl Leadership {
    /// Tries once to take the lock; `Ok(None)` when another server holds it.
    pub async fn try_acquire(election: &Election) -> Result<Option<Leadership>, String> {
        match election {
            Election::Database(config) => Self::try_lock_database(config).await,
            Election::Lease(lock) => {
                let mut lock = LeaseLock::clone(lock);
                match lock.try_acquire().await {
                    Ok(true) => Ok(Some(Self::keep_lease(lock))),
                    Ok(false) => Ok(None),
                    Err(e) => Err(format!("cannot read the scaler lease: {e}")),
                }
            }
        }
    }

    async fn try_lock_database(config: &DatabaseConfig) -> Result<Option<Leadership>, String> {
        if config.is_sqlite() {
            return sqlite_lock(&config.url);
        }
        let opts: PgConnectOptions = config
            .url
            .parse()
            .map_err(|e| format!("database URL: {e}"))?;
        let mut conn = opts
            .disable_statement_logging()
            .connect()
            .await
            .map_err(|e| format!("cannot connect for the scaler lock: {e}"))?;
        let row = sea_orm::sqlx::query("SELECT pg_try_advisory_lock($1) AS held")
            .bind(lock_key(config.schema.as_deref().unwrap_or("")))
            .fetch_one(&mut conn)
            .await
            .map_err(|e| format!("cannot take the scaler lock: {e}"))?;
        let held: bool = row.try_get("held").map_err(|e| e.to_string())?;
        if held {
            Ok(Some(Leadership::Postgres(conn)))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Renews a lease just taken every third of its duration, until it is
    /// lost or released.
    fn keep_lease(mut lock: LeaseLock) -> Leadership {
        let now = tokio::time::Instant::now();
        let (until_tx, until) = watch::channel(lock.held_until().unwrap_or(now));
        let (release, mut released) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Every third of the duration; sooner again after a failure.
            let mut wait = lock.duration() / 3;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = &mut released => {
                        lock.release().await;
                        return;
                    }
                }
                let held = lock.renew().await;
                let until = lock.held_until();
                until_tx.send_replace(until.unwrap_or_else(tokio::time::Instant::now));
                if !held || until.is_none() {
                    return;
                }
                let renewed = until.is_some_and(|u| {
                    u.saturating_duration_since(tokio::time::Instant::now()) > lock.duration() / 2
                });
                wait = if renewed {
                    lock.duration() / 3
                } else {
                    lock.duration() / 10
                };
            }
        });
        Leadership::Lease {
            until,
            release: Some(release),
            task,
        }
    }

    /// Whether the lock still holds: its session is alive and answers in
    /// time (a session lock lasts as long as its session), or the lease
    /// was renewed in time.
    pub async fn still_held(&mut self) -> bool {
        match self {
            Leadership::Postgres(conn) => tokio::time::timeout(Duration::from_secs(2), conn.ping())
                .await
                .is_ok_and(|r| r.is_ok()),
            Leadership::Sqlite(_) | Leadership::Alone => true,
            // By the clock, not by the renewing task: a stuck call cannot
            // keep it held past its deadline.
            Leadership::Lease { until, .. } => tokio::time::Instant::now() < *until.borrow(),
        }
    }

    /// Completes when a lease's deadline passes (never for the database
    /// locks, which [`Leadership::still_held`] checks).
    pub async fn expired(&mut self) {
        let Leadership::Lease { until, .. } = self else {
            return std::future::pending().await;
        };
        loop {
            let deadline = *until.borrow_and_update();
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                changed = until.changed() => {
                    if changed.is_err() {
                        // The renewing task ended: the deadline is final.
                        tokio::time::sleep_until(deadline).await;
                        return;
                    }
                }
            }
        }
    }

    /// Lets another server take over now (a lease is handed back rather
    /// than left to run out).
    pub async fn release(mut self) {
        if let Leadership::Lease { release, task, .. } = &mut self
            && let Some(release) = release.take()
        {
            let _ = release.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Waits until this server holds the lock, or `stop` completes first.
    pub async fn acquire(
        election: &Election,
        mut stop: impl FnMut() -> bool,
    ) -> Option<Leadership> {
        let mut waiting_logged = false;
        // A lease is checked often, so that a dead leader is replaced soon
        // after its lease runs out.
        let retry = match election {
            Election::Database(_) => Duration::from_secs(5),
            Election::Lease(lock) => (lock.duration() / 5).min(Duration::from_secs(2)),
        };
        loop {
            match Self::try_acquire(election).await {
                Ok(Some(held)) => return Some(held),
                Ok(None) if !waiting_logged => {
                    tracing::info!("another server runs the scaler; waiting to take over");
                    waiting_logged = true;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot take the scaler lock"),
            }
            let waited = tokio::time::Instant::now();
            while waited.elapsed() < retry {
                if stop() {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Leadership::Lease { task, release, .. } = self
            && release.is_some()
        {
            // Dropped without release: stop renewing, let it run out.
            task.abort();
        }
    }
}

/// One lock per schema, so that separate deployments in one database do not
/// wait on each other.
fn lock_key(schema: &str) -> i64 {
    crate::db::advisory_key(&format!("modelfleet scaler {schema}"))
}

fn sqlite_lock(url: &str) -> Result<Option<Leadership>, String> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(Some(Leadership::Alone));
    }
    let lock_path = format!("{path}.scaler-lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {lock_path}: {e}"))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(Leadership::Sqlite(lock))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(format!("cannot lock {lock_path}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_sqlite_scaler_per_database_file() {
        let dir = tempfile::tempdir().expect("dir");
        let config = DatabaseConfig {
            url: format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display()),
            ..Default::default()
        };
        let config = Election::Database(config);
        let first = Leadership::try_acquire(&config).await.expect("lock");
        assert!(matches!(first, Some(Leadership::Sqlite(_))));
        assert!(
            Leadership::try_acquire(&config)
                .await
                .expect("lock")
                .is_none()
        );
        drop(first);
        assert!(
            Leadership::try_acquire(&config)
                .await
                .expect("lock")
                .is_some()
        );
    }

    #[test]
    fn schemas_have_their_own_lock() {
        assert_ne!(lock_key(""), lock_key("fleet"));
        assert_eq!(lock_key("fleet"), lock_key("fleet"));
    }
}
