use sea_orm::entity::prelude::*;

use crate::{AuthType, RequestStatus};

/// One submission to a model. `principal_id` is the user id for `USER`
/// requests and the session id for `ANON` ones.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "work_requests")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub model_id: String,
    pub auth_type: AuthType,
    pub principal_id: Uuid,
    pub session_id: Uuid,
    pub client_request_id: Option<String>,
    pub status: RequestStatus,
    pub input: Json,
    pub output: Option<Json>,
    pub error: Option<String>,
    pub logs: Option<String>,
    pub attempts: i32,
    pub instance_id: Option<Uuid>,
    pub created_at: DateTimeUtc,
    pub job_started_at: Option<DateTimeUtc>,
    pub job_finished_at: Option<DateTimeUtc>,
    pub completed_at: Option<DateTimeUtc>,
    pub queue_ms: Option<i64>,
    pub job_ms: Option<i64>,
    pub total_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::model::Entity",
        from = "Column::ModelId",
        to = "super::model::Column::Id"
    )]
    Model,
}

impl Related<super::model::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Model.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
