//! Enumerations stored as strings.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// How a session was started.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum AuthType {
    #[sea_orm(string_value = "ANON")]
    Anon,
    #[sea_orm(string_value = "USER")]
    User,
}

/// Where a work request is in its lifecycle.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum RequestStatus {
    #[sea_orm(string_value = "QUEUED")]
    Queued,
    #[sea_orm(string_value = "RUNNING")]
    Running,
    #[sea_orm(string_value = "SUCCEEDED")]
    Succeeded,
    #[sea_orm(string_value = "FAILED")]
    Failed,
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
}

/// Where a model instance is in its lifecycle.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum InstanceStatus {
    #[sea_orm(string_value = "PENDING")]
    Pending,
    #[sea_orm(string_value = "STARTING")]
    Starting,
    #[sea_orm(string_value = "READY")]
    Ready,
    #[sea_orm(string_value = "BUSY")]
    Busy,
    #[sea_orm(string_value = "STOPPING")]
    Stopping,
    #[sea_orm(string_value = "STOPPED")]
    Stopped,
    #[sea_orm(string_value = "FAILED")]
    Failed,
}
