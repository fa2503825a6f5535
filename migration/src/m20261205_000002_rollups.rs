//! Stats over purged requests, and the bookkeeping of the retention task.
//!
//! `request_rollups` holds the mergeable figures of purged requests per
//! quarter-hour slot (`slot_start`, Unix seconds), model, auth type and
//! principal. Quarter hours rather than days: every UTC offset in use is a
//! whole number of quarter hours, so the slots of any time zone's local day
//! are exact, and `DAY` stats in any zone stay right after a purge.
//!
//! `maintenance` has one row per periodic task. A task updates its row first
//! thing in each transaction, which makes the transactions of replicas
//! running the same task take turns.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_000002_rollups"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        use RequestRollups as R;
        let mut table = Table::create();
        table
            .table(R::Table)
            .col(big_integer(R::SlotStart))
            .col(string(R::ModelId))
            .col(string(R::AuthType))
            .col(uuid(R::PrincipalId))
            .col(big_integer(R::TotalCount))
            .col(big_integer(R::SuccessCount))
            .col(big_integer(R::FailedCount))
            .col(big_integer(R::CancelledCount));
        for [sum, min, max, count] in [
            [R::JobMsSum, R::JobMsMin, R::JobMsMax, R::JobMsCount],
            [R::TotalMsSum, R::TotalMsMin, R::TotalMsMax, R::TotalMsCount],
            [R::QueueMsSum, R::QueueMsMin, R::QueueMsMax, R::QueueMsCount],
        ] {
            table
                .col(big_integer(sum))
                .col(big_integer_null(min))
                .col(big_integer_null(max))
                .col(big_integer(count));
        }
        table.primary_key(
            Index::create()
                .col(R::SlotStart)
                .col(R::ModelId)
                .col(R::AuthType)
                .col(R::PrincipalId),
        );
        m.create_table(table.to_owned()).await?;
        m.create_index(
            Index::create()
                .name("idx_rollups_model_slot")
                .table(R::Table)
                .col(R::ModelId)
                .col(R::SlotStart)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_rollups_principal_slot")
                .table(R::Table)
                .col(R::AuthType)
                .col(R::PrincipalId)
                .col(R::SlotStart)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Maintenance::Table)
                .col(string(Maintenance::Task).primary_key())
                .col(timestamp_with_time_zone_null(Maintenance::LastStartedAt))
                .col(timestamp_with_time_zone_null(Maintenance::LastFinishedAt))
                .col(big_integer(Maintenance::RowsPurged).default(0))
                .to_owned(),
        )
        .await?;
        m.exec_stmt(
            Query::insert()
                .into_table(Maintenance::Table)
                .columns([Maintenance::Task, Maintenance::RowsPurged])
                .values_panic(["requests".into(), 0.into()])
                .values_panic(["instances".into(), 0.into()])
                .to_owned(),
        )
        .await?;

        // The instance-history purge looks for finished instances by age.
        m.create_index(
            Index::create()
                .name("idx_instances_stopped")
                .table(Instances::Table)
                .col(Instances::StoppedAt)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("idx_instances_stopped")
                .table(Instances::Table)
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(Maintenance::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(RequestRollups::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum RequestRollups {
    Table,
    SlotStart,
    ModelId,
    AuthType,
    PrincipalId,
    TotalCount,
    SuccessCount,
    FailedCount,
    CancelledCount,
    JobMsSum,
    JobMsMin,
    JobMsMax,
    JobMsCount,
    TotalMsSum,
    TotalMsMin,
    TotalMsMax,
    TotalMsCount,
    QueueMsSum,
    QueueMsMin,
    QueueMsMax,
    QueueMsCount,
}

#[derive(DeriveIden)]
enum Maintenance {
    Table,
    Task,
    LastStartedAt,
    LastFinishedAt,
    RowsPurged,
}

#[derive(DeriveIden)]
enum Instances {
    Table,
    StoppedAt,
}
