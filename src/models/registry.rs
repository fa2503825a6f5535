//! Models in the database.

use chrono::Utc;
use entity::model;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
};

use super::{LocalSpec, ModelSpec, Protocol};

/// Reads and writes models. Cheap to clone.
#[derive(Clone)]
pub struct ModelRegistry {
    db: DatabaseConnection,
}

impl ModelRegistry {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Creates or replaces a model. `source` is `config` or `api`.
    pub async fn upsert(&self, spec: &ModelSpec, source: &str) -> Result<(), DbErr> {
        let now = Utc::now();
        let local = spec
            .local
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| DbErr::Custom(format!("model settings: {e}")))?;
        let row = model::ActiveModel {
            id: Set(spec.id.clone()),
            name: Set(spec.name.clone()),
            description: Set(spec.description.clone()),
            protocol: Set(spec.protocol.as_str().to_owned()),
            enabled: Set(spec.enabled),
            min_instances: Set(spec.min_instances as i32),
            max_instances: Set(spec.max_instances as i32),
            idle_timeout_ms: Set(spec.idle_timeout_ms),
            request_timeout_ms: Set(spec.request_timeout_ms),
            max_input_bytes: Set(spec.max_input_bytes),
            local: Set(local),
            kubernetes: Set(spec.kubernetes.clone()),
            source: Set(source.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
        };
        model::Entity::insert(row)
            .on_conflict(
                OnConflict::column(model::Column::Id)
                    .update_columns([
                        model::Column::Name,
                        model::Column::Description,
                        model::Column::Protocol,
                        model::Column::Enabled,
                        model::Column::MinInstances,
                        model::Column::MaxInstances,
                        model::Column::IdleTimeoutMs,
                        model::Column::RequestTimeoutMs,
                        model::Column::MaxInputBytes,
                        model::Column::Local,
                        model::Column::Kubernetes,
                        model::Column::Source,
                        model::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Applies the configured models at start-up. Models an earlier
    /// configuration brought that this one no longer names are disabled
    /// (not deleted: their requests keep their history).
    pub async fn apply_config(&self, specs: &[ModelSpec]) -> Result<(), DbErr> {
        for spec in specs {
            self.upsert(spec, "config").await?;
            tracing::info!(model_id = %spec.id, enabled = spec.enabled, "model applied from configuration");
        }
        let named: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
        let gone = model::Entity::update_many()
            .col_expr(model::Column::Enabled, false.into())
            .col_expr(model::Column::UpdatedAt, Utc::now().into())
            .filter(model::Column::Source.eq("config"))
            .filter(model::Column::Enabled.eq(true))
            .filter(model::Column::Id.is_not_in(named))
            .exec(&self.db)
            .await?;
        if gone.rows_affected > 0 {
            tracing::info!(
                models_disabled = gone.rows_affected,
                "models no longer in the configuration disabled"
            );
        }
        Ok(())
    }

    /// Turns a model on or off; `None` when there is no such model.
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<Option<ModelSpec>, DbErr> {
        let updated = model::Entity::update_many()
            .col_expr(model::Column::Enabled, enabled.into())
            .col_expr(model::Column::UpdatedAt, Utc::now().into())
            .filter(model::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        if updated.rows_affected == 0 {
            return Ok(None);
        }
        tracing::info!(model_id = %id, enabled, "model enabled changed");
        self.get(id).await
    }

    pub async fn get(&self, id: &str) -> Result<Option<ModelSpec>, DbErr> {
        Ok(model::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(spec_of))
    }

    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<ModelSpec>, DbErr> {
        Ok(model::Entity::find()
            .filter(model::Column::Id.is_in(ids.iter().cloned()))
            .all(&self.db)
            .await?
            .into_iter()
            .map(spec_of)
            .collect())
    }

    pub async fn list(&self, include_disabled: bool) -> Result<Vec<ModelSpec>, DbErr> {
        let mut query = model::Entity::find().order_by_asc(model::Column::Id);
        if !include_disabled {
            query = query.filter(model::Column::Enabled.eq(true));
        }
        Ok(query
            .all(&self.db)
            .await?
            .into_iter()
            .map(spec_of)
            .collect())
    }
}

fn spec_of(row: model::Model) -> ModelSpec {
    ModelSpec {
        local: row
            .local
            .and_then(|v| serde_json::from_value::<LocalSpec>(v).ok()),
        id: row.id,
        name: row.name,
        description: row.description,
        protocol: Protocol::Cog,
        enabled: row.enabled,
        min_instances: row.min_instances.max(0) as u32,
        max_instances: row.max_instances.max(0) as u32,
        idle_timeout_ms: row.idle_timeout_ms,
        request_timeout_ms: row.request_timeout_ms,
        max_input_bytes: row.max_input_bytes,
        kubernetes: row.kubernetes,
    }
}
