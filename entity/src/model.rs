use sea_orm::entity::prelude::*;

/// A runnable model. Backend settings are kept as JSON documents so that each
/// backend owns its own shape.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "models")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    pub description: String,
    pub protocol: String,
    pub enabled: bool,
    pub min_instances: i32,
    pub max_instances: i32,
    pub idle_timeout_ms: i64,
    pub request_timeout_ms: i64,
    pub max_input_bytes: i64,
    pub local: Option<Json>,
    pub kubernetes: Option<Json>,
    /// `config` for models applied from configuration, `api` for models made
    /// through the API.
    pub source: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
