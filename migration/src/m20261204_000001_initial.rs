//! The first schema: accounts and sessions, models, work requests, instances
//! and their events.
//!
//! Timestamps are `timestamp with time zone` and always written by the server
//! in UTC (never a database default), so that SQLite's text timestamps sort
//! and compare correctly. Durations are stored as integer milliseconds when a
//! job ends, which keeps min/max/avg portable between the two databases.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261204_000001_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Users::Table)
                .col(pk_uuid(Users::Id))
                .col(string(Users::Username))
                .col(string_uniq(Users::UsernameKey))
                .col(string(Users::Email))
                .col(string_uniq(Users::EmailKey))
                .col(string(Users::PasswordHash))
                .col(timestamp_with_time_zone(Users::CreatedAt))
                .col(timestamp_with_time_zone(Users::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(UserRoles::Table)
                .col(uuid(UserRoles::UserId))
                .col(string(UserRoles::Role))
                .col(timestamp_with_time_zone(UserRoles::GrantedAt))
                .primary_key(Index::create().col(UserRoles::UserId).col(UserRoles::Role))
                .foreign_key(
                    ForeignKey::create()
                        .from(UserRoles::Table, UserRoles::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Sessions::Table)
                .col(pk_uuid(Sessions::Id))
                .col(string_uniq(Sessions::TokenHash))
                .col(string(Sessions::AuthType))
                .col(uuid_null(Sessions::UserId))
                .col(timestamp_with_time_zone(Sessions::CreatedAt))
                .col(timestamp_with_time_zone(Sessions::ExpiresAt))
                .col(timestamp_with_time_zone(Sessions::LastSeenAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Sessions::Table, Sessions::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        index(m, "idx_sessions_user", Sessions::Table, &[Sessions::UserId]).await?;
        index(
            m,
            "idx_sessions_expires",
            Sessions::Table,
            &[Sessions::ExpiresAt],
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Models::Table)
                .col(string(Models::Id).primary_key())
                .col(string(Models::Name))
                .col(text(Models::Description))
                .col(string(Models::Protocol))
                .col(boolean(Models::Enabled))
                .col(integer(Models::MinInstances))
                .col(integer(Models::MaxInstances))
                .col(big_integer(Models::IdleTimeoutMs))
                .col(big_integer(Models::RequestTimeoutMs))
                .col(big_integer(Models::MaxInputBytes))
                .col(json_binary_null(Models::Local))
                .col(json_binary_null(Models::Kubernetes))
                .col(string(Models::Source))
                .col(timestamp_with_time_zone(Models::CreatedAt))
                .col(timestamp_with_time_zone(Models::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(WorkRequests::Table)
                .col(pk_uuid(WorkRequests::Id))
                .col(string(WorkRequests::ModelId))
                .col(string(WorkRequests::AuthType))
                .col(uuid(WorkRequests::PrincipalId))
                .col(uuid(WorkRequests::SessionId))
                .col(string_null(WorkRequests::ClientRequestId))
                .col(string(WorkRequests::Status))
                .col(json_binary(WorkRequests::Input))
                .col(json_binary_null(WorkRequests::Output))
                .col(text_null(WorkRequests::Error))
                .col(text_null(WorkRequests::Logs))
                .col(integer(WorkRequests::Attempts))
                .col(uuid_null(WorkRequests::InstanceId))
                .col(timestamp_with_time_zone(WorkRequests::CreatedAt))
                .col(timestamp_with_time_zone_null(WorkRequests::JobStartedAt))
                .col(timestamp_with_time_zone_null(WorkRequests::JobFinishedAt))
                .col(timestamp_with_time_zone_null(WorkRequests::CompletedAt))
                .col(big_integer_null(WorkRequests::QueueMs))
                .col(big_integer_null(WorkRequests::JobMs))
                .col(big_integer_null(WorkRequests::TotalMs))
                .foreign_key(
                    ForeignKey::create()
                        .from(WorkRequests::Table, WorkRequests::ModelId)
                        .to(Models::Table, Models::Id)
                        .on_delete(ForeignKeyAction::Restrict),
                )
                .to_owned(),
        )
        .await?;
        // Listings page newest first by (created_at, id); stats filter by
        // model, principal, status and date range.
        use WorkRequests as W;
        index(m, "idx_requests_created", W::Table, &[W::CreatedAt, W::Id]).await?;
        index(
            m,
            "idx_requests_model_created",
            W::Table,
            &[W::ModelId, W::CreatedAt],
        )
        .await?;
        let principal = [W::AuthType, W::PrincipalId, W::CreatedAt];
        index(m, "idx_requests_principal_created", W::Table, &principal).await?;
        index(
            m,
            "idx_requests_status_created",
            W::Table,
            &[W::Status, W::CreatedAt],
        )
        .await?;
        m.create_index(
            Index::create()
                .name("uq_requests_client_request_id")
                .table(W::Table)
                .col(W::PrincipalId)
                .col(W::ClientRequestId)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Instances::Table)
                .col(pk_uuid(Instances::Id))
                .col(string(Instances::ModelId))
                .col(string(Instances::Backend))
                .col(string_null(Instances::Handle))
                .col(string_null(Instances::Node))
                .col(string(Instances::Status))
                .col(json_binary_null(Instances::StatusDetail))
                .col(uuid_null(Instances::RequestId))
                .col(string_null(Instances::Owner))
                .col(timestamp_with_time_zone(Instances::CreatedAt))
                .col(timestamp_with_time_zone_null(Instances::ReadyAt))
                .col(timestamp_with_time_zone_null(Instances::IdleSince))
                .col(timestamp_with_time_zone_null(Instances::StoppedAt))
                .col(text_null(Instances::StopReason))
                .foreign_key(
                    ForeignKey::create()
                        .from(Instances::Table, Instances::ModelId)
                        .to(Models::Table, Models::Id)
                        .on_delete(ForeignKeyAction::Restrict),
                )
                .to_owned(),
        )
        .await?;
        use Instances as I;
        index(
            m,
            "idx_instances_model_status",
            I::Table,
            &[I::ModelId, I::Status],
        )
        .await?;
        index(m, "idx_instances_status", I::Table, &[I::Status]).await?;
        index(m, "idx_instances_created", I::Table, &[I::CreatedAt, I::Id]).await?;

        m.create_table(
            Table::create()
                .table(InstanceEvents::Table)
                .col(big_pk_auto(InstanceEvents::Id))
                .col(uuid(InstanceEvents::InstanceId))
                .col(timestamp_with_time_zone(InstanceEvents::At))
                .col(string(InstanceEvents::Kind))
                .col(string(InstanceEvents::Reason))
                .col(text(InstanceEvents::Message))
                .col(json_binary_null(InstanceEvents::Raw))
                .foreign_key(
                    ForeignKey::create()
                        .from(InstanceEvents::Table, InstanceEvents::InstanceId)
                        .to(Instances::Table, Instances::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        use InstanceEvents as E;
        index(
            m,
            "idx_instance_events_instance",
            E::Table,
            &[E::InstanceId, E::Id],
        )
        .await?;

        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            InstanceEvents::Table.into_iden(),
            Instances::Table.into_iden(),
            WorkRequests::Table.into_iden(),
            Models::Table.into_iden(),
            Sessions::Table.into_iden(),
            UserRoles::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

async fn index<T, C>(m: &SchemaManager<'_>, name: &str, table: T, cols: &[C]) -> Result<(), DbErr>
where
    T: IntoIden,
    C: IntoIden + Copy,
{
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for col in cols {
        stmt.col(*col);
    }
    m.create_index(stmt.to_owned()).await
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    UsernameKey,
    Email,
    EmailKey,
    PasswordHash,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum UserRoles {
    Table,
    UserId,
    Role,
    GrantedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Sessions {
    Table,
    Id,
    TokenHash,
    AuthType,
    UserId,
    CreatedAt,
    ExpiresAt,
    LastSeenAt,
}

#[derive(DeriveIden)]
enum Models {
    Table,
    Id,
    Name,
    Description,
    Protocol,
    Enabled,
    MinInstances,
    MaxInstances,
    IdleTimeoutMs,
    RequestTimeoutMs,
    MaxInputBytes,
    Local,
    Kubernetes,
    Source,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum WorkRequests {
    Table,
    Id,
    ModelId,
    AuthType,
    PrincipalId,
    SessionId,
    ClientRequestId,
    Status,
    Input,
    Output,
    Error,
    Logs,
    Attempts,
    InstanceId,
    CreatedAt,
    JobStartedAt,
    JobFinishedAt,
    CompletedAt,
    QueueMs,
    JobMs,
    TotalMs,
}

#[derive(DeriveIden, Clone, Copy)]
enum Instances {
    Table,
    Id,
    ModelId,
    Backend,
    Handle,
    Node,
    Status,
    StatusDetail,
    RequestId,
    Owner,
    CreatedAt,
    ReadyAt,
    IdleSince,
    StoppedAt,
    StopReason,
}

#[derive(DeriveIden, Clone, Copy)]
enum InstanceEvents {
    Table,
    Id,
    InstanceId,
    At,
    Kind,
    Reason,
    Message,
    Raw,
}
