use sea_orm::entity::prelude::*;

use crate::InstanceStatus;

/// One running (or once running) copy of a model.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "instances")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub model_id: String,
    /// `local` or `kubernetes`.
    pub backend: String,
    /// The backend's name for it: a process id or a pod name.
    pub handle: Option<String>,
    pub node: Option<String>,
    pub status: InstanceStatus,
    pub status_detail: Option<Json>,
    pub request_id: Option<Uuid>,
    /// Which server run started it, so a restart can tell its own from others'.
    pub owner: Option<String>,
    pub created_at: DateTimeUtc,
    pub ready_at: Option<DateTimeUtc>,
    pub idle_since: Option<DateTimeUtc>,
    pub stopped_at: Option<DateTimeUtc>,
    pub stop_reason: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::model::Entity",
        from = "Column::ModelId",
        to = "super::model::Column::Id"
    )]
    Model,
    #[sea_orm(has_many = "super::instance_event::Entity")]
    Event,
}

impl Related<super::model::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Model.def()
    }
}

impl Related<super::instance_event::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Event.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
