//! Models: listing for everyone, management for admins.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use async_graphql::{Context, InputObject, Json, Object, Result, SimpleObject};

use super::RequirePermission;
use crate::auth::Permission;
use crate::config::Config;
use crate::error::ApiError;
use crate::models::{LocalSpec, ModelConfig, ModelRegistry, ModelSpec, Protocol, SetupSpec};

/// Something that can be run.
pub struct Model(pub ModelSpec);

#[Object]
impl Model {
    async fn id(&self) -> &str {
        &self.0.id
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    async fn protocol(&self) -> Protocol {
        self.0.protocol
    }
    /// Disabled models refuse new requests.
    async fn enabled(&self) -> bool {
        self.0.enabled
    }
    async fn min_instances(&self) -> u32 {
        self.0.min_instances
    }
    async fn max_instances(&self) -> u32 {
        self.0.max_instances
    }
    async fn idle_timeout_secs(&self) -> i64 {
        self.0.idle_timeout_ms / 1000
    }
    async fn request_timeout_secs(&self) -> i64 {
        self.0.request_timeout_ms / 1000
    }
    /// The largest `input` accepted, in bytes of JSON.
    async fn max_input_bytes(&self) -> i64 {
        self.0.max_input_bytes
    }
    /// How the local backend starts it (admins only: commands and
    /// environments may hold secrets).
    #[graphql(guard = "RequirePermission(Permission::ManageModels)")]
    async fn local(&self) -> Option<LocalSettings> {
        self.0.local.as_ref().map(|l| LocalSettings {
            command: l.command.clone(),
            workdir: l.workdir.display().to_string(),
            env: l.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            start_timeout_secs: l.start_timeout_secs,
            setup_command: l.setup.as_ref().map(|s| s.command.clone()),
        })
    }
    /// How the Kubernetes backend runs it: its pod settings, as the
    /// model's `kubernetes` table in the configuration file (admins only:
    /// an environment may hold secrets).
    #[graphql(guard = "RequirePermission(Permission::ManageModels)")]
    async fn kubernetes(&self) -> Option<Json<serde_json::Value>> {
        self.0.kubernetes.clone().map(Json)
    }
}

#[derive(SimpleObject)]
pub struct LocalSettings {
    command: Vec<String>,
    workdir: String,
    /// `NAME=value` entries.
    env: Vec<String>,
    start_timeout_secs: u64,
    setup_command: Option<Vec<String>>,
}

#[derive(InputObject)]
pub struct ModelInput {
    /// 1-63 lower-case letters, digits and `-`.
    id: String,
    name: Option<String>,
    #[graphql(default)]
    description: String,
    #[graphql(default = true)]
    enabled: bool,
    #[graphql(default = 0)]
    min_instances: u32,
    #[graphql(default = 1)]
    max_instances: u32,
    #[graphql(default = 300)]
    idle_timeout_secs: u64,
    #[graphql(default = 600)]
    request_timeout_secs: u64,
    #[graphql(default = 1048576)]
    max_input_bytes: u64,
    local: Option<LocalInput>,
    /// Pod settings for the Kubernetes backend, with the keys of a model's
    /// `kubernetes` table in the configuration file: `image` (required),
    /// `port`, `command`, `args`, `env`, `requests`, `limits`,
    /// `node_selector`, `tolerations`, `image_pull_secrets`,
    /// `service_account`. Required for an enabled model when the server
    /// runs instances on Kubernetes.
    kubernetes: Option<Json<serde_json::Value>>,
}

#[derive(InputObject)]
pub struct LocalInput {
    command: Vec<String>,
    /// Relative paths are taken from the server's configuration folder.
    workdir: String,
    /// `NAME=value` entries.
    #[graphql(default)]
    env: Vec<String>,
    #[graphql(default = 300)]
    start_timeout_secs: u64,
    setup_command: Option<Vec<String>>,
    /// Files whose contents decide when the setup runs again.
    #[graphql(default)]
    setup_inputs: Vec<String>,
}

impl ModelInput {
    fn into_config(self) -> Result<ModelConfig, ApiError> {
        let local = match self.local {
            None => None,
            Some(l) => {
                let mut env = BTreeMap::new();
                for entry in l.env {
                    let Some((k, v)) = entry.split_once('=') else {
                        return Err(ApiError::field(
                            "local.env",
                            format!("`{entry}` is not NAME=value"),
                        ));
                    };
                    env.insert(k.to_owned(), v.to_owned());
                }
                Some(LocalSpec {
                    command: l.command,
                    workdir: PathBuf::from(l.workdir),
                    env,
                    start_timeout_secs: l.start_timeout_secs,
                    setup: l.setup_command.map(|command| SetupSpec {
                        command,
                        inputs: l.setup_inputs.into_iter().map(PathBuf::from).collect(),
                    }),
                })
            }
        };
        Ok(ModelConfig {
            id: self.id,
            name: self.name,
            description: self.description,
            protocol: Protocol::Cog,
            enabled: self.enabled,
            min_instances: self.min_instances,
            max_instances: self.max_instances,
            idle_timeout_secs: self.idle_timeout_secs,
            request_timeout_secs: self.request_timeout_secs,
            max_input_bytes: self.max_input_bytes,
            local,
            kubernetes: self.kubernetes.map(|k| k.0),
        })
    }
}

fn registry<'a>(ctx: &Context<'a>) -> &'a ModelRegistry {
    ctx.data_unchecked::<ModelRegistry>()
}

#[derive(Default)]
pub struct ModelsQuery;

#[Object]
impl ModelsQuery {
    /// Every model, by id. Disabled ones only when asked.
    async fn models(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] include_disabled: bool,
    ) -> Result<Vec<Model>> {
        let models = registry(ctx)
            .list(include_disabled)
            .await
            .map_err(ApiError::from)?;
        Ok(models.into_iter().map(Model).collect())
    }

    async fn model(&self, ctx: &Context<'_>, id: String) -> Result<Option<Model>> {
        Ok(registry(ctx)
            .get(&id)
            .await
            .map_err(ApiError::from)?
            .map(Model))
    }
}

#[derive(Default)]
pub struct ModelsMutation;

#[Object]
impl ModelsMutation {
    /// Creates or replaces a model. Every broken rule is reported at once.
    #[graphql(guard = "RequirePermission(Permission::ManageModels)")]
    async fn upsert_model(&self, ctx: &Context<'_>, input: ModelInput) -> Result<Model> {
        let config = ctx.data_opt::<Arc<Config>>();
        let base = config
            .map(|c| std::path::absolute(&c.base_dir).unwrap_or_else(|_| c.base_dir.clone()))
            .unwrap_or_default();
        let on_pods =
            config.is_some_and(|c| c.kubernetes.backend == crate::config::BackendKind::Kubernetes);
        let spec = input
            .into_config()?
            .validate(&base)
            .map_err(ApiError::BadUserInput)?;
        if on_pods && spec.enabled && spec.kubernetes.is_none() {
            return Err(ApiError::field(
                "kubernetes",
                "is required: this server runs instances as Kubernetes pods".to_owned(),
            )
            .into());
        }
        registry(ctx)
            .upsert(&spec, "api")
            .await
            .map_err(ApiError::from)?;
        tracing::info!(model_id = %spec.id, "model saved through the API");
        Ok(Model(spec))
    }

    /// Turns a model on or off. Disabled models refuse new requests; their
    /// queued and running requests still finish.
    #[graphql(guard = "RequirePermission(Permission::ManageModels)")]
    async fn set_model_enabled(
        &self,
        ctx: &Context<'_>,
        id: String,
        enabled: bool,
    ) -> Result<Model> {
        let spec = registry(ctx)
            .set_enabled(&id, enabled)
            .await
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound("model"))?;
        Ok(Model(spec))
    }
}

/// Loads models by id, one query per batch.
pub struct ModelLoader(pub ModelRegistry);

impl Loader<String> for ModelLoader {
    type Value = ModelSpec;
    type Error = Arc<sea_orm::DbErr>;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, ModelSpec>, Self::Error> {
        let all = self.0.get_many(keys).await.map_err(Arc::new)?;
        Ok(all.into_iter().map(|m| (m.id.clone(), m)).collect())
    }
}
