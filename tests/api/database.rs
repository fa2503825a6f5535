//! The embedded SQLite database runs in WAL mode with foreign keys enforced
//! on every pooled connection.

use chrono::Utc;
use entity::user_role;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbBackend, EntityTrait, Statement};

use crate::support::{Db, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_uses_wal_and_enforces_foreign_keys() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let db = &app.state.db;
    // Ask several times so that more than one pooled connection answers.
    let mut asks = Vec::new();
    for _ in 0..6 {
        asks.push(async {
            let mode = db
                .query_one_raw(Statement::from_string(
                    DbBackend::Sqlite,
                    "PRAGMA journal_mode",
                ))
                .await
                .expect("pragma")
                .expect("row")
                .try_get_by_index::<String>(0)
                .expect("mode");
            let fk = db
                .query_one_raw(Statement::from_string(
                    DbBackend::Sqlite,
                    "PRAGMA foreign_keys",
                ))
                .await
                .expect("pragma")
                .expect("row")
                .try_get_by_index::<i32>(0)
                .expect("fk");
            (mode, fk)
        });
    }
    for (mode, fk) in futures_util::future::join_all(asks).await {
        assert_eq!(mode, "wal");
        assert_eq!(fk, 1);
    }
    // A role for a user that does not exist is refused by the database.
    let orphan = user_role::Entity::insert(user_role::ActiveModel {
        user_id: Set(uuid::Uuid::now_v7()),
        role: Set("ADMIN".to_owned()),
        granted_at: Set(Utc::now()),
    })
    .exec(db)
    .await;
    assert!(orphan.is_err(), "foreign key not enforced");
}

/// Replicas starting together on a new PostgreSQL database all come up:
/// they take turns applying the migrations instead of racing to create the
/// same tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_migrating_a_new_postgres_database_together_take_turns() {
    let (_db, url) = crate::support::TestDb::create(Db::Postgres).await;
    for schema in [None, Some("fleet".to_owned())] {
        let config = modelfleet::config::DatabaseConfig {
            url: url.clone(),
            schema,
            ..Default::default()
        };
        // Each connects (making the schema) and migrates, all at once.
        let servers = (0..6).map(|_| {
            let config = config.clone();
            tokio::spawn(async move {
                let db = modelfleet::db::connect(&config).await?;
                modelfleet::db::migrate(&db, &config).await?;
                db.close().await
            })
        });
        for started in futures_util::future::join_all(servers).await {
            started.expect("ran").expect("every server comes up");
        }
    }
}
