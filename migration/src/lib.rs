//! Database migrations for modelfleet.
//!
//! Every statement here runs unqualified, so on PostgreSQL the tables land in
//! whichever schema the connection's `search_path` names first. The server
//! sets that path on every pooled connection before migrating.

pub use sea_orm_migration::prelude::*;

mod m20261204_000001_initial;
mod m20261205_000002_rollups;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261204_000001_initial::Migration),
            Box::new(m20261205_000002_rollups::Migration),
        ]
    }
}
