//! Typed configuration, read once at start-up.
//!
//! Sources, later ones winning:
//! 1. built-in defaults (everything works with nothing set);
//! 2. a TOML file: `--config PATH`, else `modelfleet.toml` in the working
//!    folder if it exists;
//! 3. environment variables: `DATABASE_URL`, the shorthands listed on
//!    [`ENV_SHORTHANDS`], and `MODELFLEET_<SECTION>__<KEY>` for any key
//!    (`MODELFLEET_AUTH__SESSION_LIFETIME_SECS=3600`).
//!
//! A value of the wrong type, an unknown key or a value that breaks a rule
//! stops start-up with a message that names the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::models::{ModelConfig, ModelSpec};

/// Extra models, read from beside the configuration file.
pub const MODELS_FILE: &str = "models.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    #[serde(default)]
    models: Vec<ModelConfig>,
}

/// `models` written as a `[[models]]` TOML document, as a configuration file
/// or a `models.toml` holds them (tests and benchmarks write configuration
/// files with it).
pub fn models_toml(models: &[ModelConfig]) -> Result<String, toml::ser::Error> {
    #[derive(Serialize)]
    struct Models<'a> {
        models: &'a [ModelConfig],
    }
    toml::to_string(&Models { models })
}

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "modelfleet.toml";

/// Environment variables that set one key each, besides the general
/// `MODELFLEET_<SECTION>__<KEY>` form.
pub const ENV_SHORTHANDS: &[(&str, &str)] = &[
    ("MODELFLEET_BIND", "server.bind"),
    ("MODELFLEET_DATABASE_SCHEMA", "database.schema"),
    ("MODELFLEET_LOG_FORMAT", "log.format"),
    ("MODELFLEET_BACKEND", "kubernetes.backend"),
    ("MODELFLEET_LOG_LEVEL", "log.level"),
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub graphql: GraphqlConfig,
    pub retention: RetentionConfig,
    pub kubernetes: KubernetesConfig,
    /// `[[models]]`: the models to serve (see [`crate::models::ModelConfig`]);
    /// more may come from a `models.toml` beside the configuration file.
    /// With none anywhere, the example models are served.
    pub models: Vec<ModelConfig>,
    /// The folder relative model paths are taken from: the configuration
    /// file's, else the working folder.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `server.bind` / `MODELFLEET_BIND`: address and port to listen on.
    /// Default `127.0.0.1:8080`.
    pub bind: SocketAddr,
    /// `server.trust_forwarded_for`: take the client address from the first
    /// `X-Forwarded-For` entry (only behind a proxy that sets it). Default
    /// `false`.
    pub trust_forwarded_for: bool,
    /// `server.shutdown_grace_secs`: on SIGINT/SIGTERM, how long open
    /// connections may take to finish before the process exits. Default 10.
    pub shutdown_grace_secs: u64,
    /// `server.console`: serve the admin console at `/console/` (and send
    /// `/` there). Default `true`.
    pub console: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            trust_forwarded_for: false,
            shutdown_grace_secs: 10,
            console: true,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `database.url` / `DATABASE_URL`: `sqlite://PATH?mode=rwc` or
    /// `postgres://...`. Default: the SQLite file `modelfleet.db` in the
    /// working folder.
    pub url: String,
    /// `database.schema` / `MODELFLEET_DATABASE_SCHEMA` (PostgreSQL only):
    /// keep every table in this schema, created if missing. Default: none
    /// (the server's default search path).
    pub schema: Option<String>,
    /// `database.max_connections`: pool size. Default 10.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://modelfleet.db?mode=rwc".to_owned(),
            schema: None,
            max_connections: 10,
        }
    }
}

/// Prints the URL without its password.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.redacted_url())
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl DatabaseConfig {
    /// The URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            _ => self.url.clone(),
        }
    }

    pub fn is_sqlite(&self) -> bool {
        self.url.starts_with("sqlite:")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `log.format` / `MODELFLEET_LOG_FORMAT`: `text` (default) or `json`.
    pub format: LogFormat,
    /// `log.level` / `MODELFLEET_LOG_LEVEL`: a tracing filter such as `info`
    /// or `modelfleet=debug,info`. `RUST_LOG`, when set, wins. Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `auth.session_lifetime_secs`: how long a signed-in session lives
    /// without use. Default 7 days.
    pub session_lifetime_secs: u64,
    /// `auth.anonymous_session_lifetime_secs`: the same for anonymous
    /// sessions. Default 1 day.
    pub anonymous_session_lifetime_secs: u64,
    /// `auth.session_cache_capacity`: sessions kept in memory. Default 100000.
    pub session_cache_capacity: u64,
    /// `auth.session_cache_ttl_secs`: the longest a cached session is trusted
    /// without a database read. It bounds how long a change made elsewhere
    /// (another replica, the `user` command) takes to be seen. Default 60.
    pub session_cache_ttl_secs: u64,
    /// `auth.rate_limit_per_minute`: sign-up and login attempts allowed per
    /// client address per minute. Default 20.
    pub rate_limit_per_minute: u32,
    /// `auth.rate_limit_burst`: attempts allowed at once before the rate
    /// applies. Default 10.
    pub rate_limit_burst: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_lifetime_secs: 7 * 24 * 3600,
            anonymous_session_lifetime_secs: 24 * 3600,
            session_cache_capacity: 100_000,
            session_cache_ttl_secs: 60,
            rate_limit_per_minute: 20,
            rate_limit_burst: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlConfig {
    /// `graphql.max_depth`: deepest selection allowed. Default 12.
    pub max_depth: usize,
    /// `graphql.max_complexity`: most fields a query may select, counting
    /// each field as 1 (list fields as `first` items). Default 1000.
    pub max_complexity: usize,
    /// `graphql.max_body_bytes`: largest request body. Default 1 MiB.
    pub max_body_bytes: usize,
    /// `graphql.ws_init_timeout_secs`: how long a WebSocket may stay open
    /// without its `connection_init` message. Default 10.
    pub ws_init_timeout_secs: u64,
    /// `graphql.playground`: serve GraphiQL at `/graphiql`. Default `true`.
    pub playground: bool,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        Self {
            max_depth: 12,
            max_complexity: 1000,
            max_body_bytes: 1024 * 1024,
            ws_init_timeout_secs: 10,
            playground: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// `retention.requests_days`: finished requests older than this are
    /// folded into the stats rollup and deleted, input and output with them.
    /// `0` keeps them forever. Default 7.
    pub requests_days: u32,
    /// `retention.instance_history_days`: stopped and failed instances, and
    /// their events, are deleted this long after they ended. `0` keeps them
    /// forever. Default 7.
    pub instance_history_days: u32,
    /// `retention.interval_secs`: how often the purge runs. Default 3600.
    pub interval_secs: u64,
    /// `retention.batch_size`: rows deleted per transaction, so no lock is
    /// held for long. Default 1000.
    pub batch_size: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            requests_days: 7,
            instance_history_days: 7,
            interval_secs: 3600,
            batch_size: 1000,
        }
    }
}

/// Where instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Child processes on this machine.
    #[default]
    Local,
    /// Pods on a Kubernetes cluster.
    Kubernetes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// `kubernetes.backend` / `MODELFLEET_BACKEND`: `local` (child
    /// processes, the default) or `kubernetes` (pods).
    pub backend: BackendKind,
    /// `kubernetes.namespace`: where pods go. Default: the namespace of the
    /// inferred credentials (the pod's own in a cluster, the kubeconfig
    /// context's outside).
    pub namespace: Option<String>,
    /// `kubernetes.api_url`: talk to this API server without credentials
    /// (for a local proxy such as `kubectl proxy`, and the tests). Default:
    /// kube-rs's usual inference (in-cluster, then kubeconfig).
    pub api_url: Option<String>,
    /// `kubernetes.start_timeout_secs`: how long a pod may take to be
    /// scheduled, pulled and ready. Default 600.
    pub start_timeout_secs: u64,
    /// `kubernetes.stop_grace_secs`: the grace period of a pod deletion.
    /// Default 30.
    pub stop_grace_secs: u64,
    /// `kubernetes.max_restarts`: crash-loop restarts before a starting
    /// pod is given up (an image that cannot be pulled is given up after
    /// its first back-off). Default 3.
    pub max_restarts: u32,
    /// `kubernetes.lease_duration_secs`: how long the scaler's Lease
    /// (`coordination.k8s.io`) holds without renewal. A replica takes over
    /// from a leader that died within this time; the leader renews every
    /// third of it. Default 15.
    pub lease_duration_secs: u64,
    /// `[kubernetes.autoscaler]`: the node autoscaler.
    pub autoscaler: AutoscalerConfig,
}

/// `[kubernetes.autoscaler]`: grows and shrinks Cluster API
/// MachineDeployments to fit modelfleet's pods.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalerConfig {
    /// `kubernetes.autoscaler.enabled`: run it (on the replica that runs
    /// the scaler). Default false.
    pub enabled: bool,
    /// `kubernetes.autoscaler.namespace`: look for MachineDeployments only
    /// here. Default: every namespace.
    pub namespace: Option<String>,
    /// `kubernetes.autoscaler.selector`: only MachineDeployments with these
    /// labels (`key=value,key2=value2`). Default: all.
    pub selector: Option<String>,
    /// `kubernetes.autoscaler.scale_down_unneeded_secs`: how long a node
    /// holds no modelfleet pod before it is removed. Default 600.
    pub scale_down_unneeded_secs: u64,
    /// `kubernetes.autoscaler.scale_down_delay_after_add_secs`: no node is
    /// removed this long after a scale-up. Default 600.
    pub scale_down_delay_after_add_secs: u64,
    /// `kubernetes.autoscaler.scale_down_confirm_secs`: between cordoning a
    /// node and removing it, the time for anything already on its way to
    /// land on it. Default 10.
    pub scale_down_confirm_secs: u64,
    /// `kubernetes.autoscaler.gather_quiet_ms`: unschedulable pods are
    /// gathered until none is new for this long. Default 1000.
    pub gather_quiet_ms: u64,
    /// `kubernetes.autoscaler.gather_max_ms`: and for at most this long.
    /// Default 10000.
    pub gather_max_ms: u64,
    /// `[[kubernetes.autoscaler.pools]]`: settings that win over a
    /// MachineDeployment's annotations.
    pub pools: Vec<PoolOverride>,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            namespace: None,
            selector: None,
            scale_down_unneeded_secs: 600,
            scale_down_delay_after_add_secs: 600,
            scale_down_confirm_secs: 10,
            gather_quiet_ms: 1000,
            gather_max_ms: 10_000,
            pools: Vec::new(),
        }
    }
}

/// `[[kubernetes.autoscaler.pools]]`: one MachineDeployment's settings,
/// in place of its annotations. A MachineDeployment named here is a pool
/// even without the size annotations, given both sizes here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolOverride {
    /// The MachineDeployment's name.
    pub name: String,
    /// Its namespace; any when not given.
    pub namespace: Option<String>,
    pub min_size: Option<u32>,
    pub max_size: Option<u32>,
    /// What one node offers: quantities as Kubernetes writes them.
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub gpu_count: Option<u64>,
    /// The GPU resource name. Default `nvidia.com/gpu`.
    pub gpu_type: Option<String>,
    pub max_pods: Option<u64>,
    pub labels: Option<BTreeMap<String, String>>,
    /// `key=value:Effect`.
    pub taints: Option<Vec<String>>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Local,
            namespace: None,
            api_url: None,
            start_timeout_secs: 600,
            stop_grace_secs: 30,
            max_restarts: 3,
            lease_duration_secs: 15,
            autoscaler: AutoscalerConfig::default(),
        }
    }
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("configuration: {0}")]
    Value(String),
    #[error("configuration key `{key}`: {rule}")]
    Rule { key: String, rule: String },
}

impl Config {
    /// Reads the configuration from defaults, the file and the process
    /// environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError::File {
                        path: path.to_owned(),
                        reason: "no such file".to_owned(),
                    });
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => {
                if Path::new(DEFAULT_CONFIG_FILE).is_file() {
                    figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
                }
            }
        }
        figment = figment.merge(env_provider(env));
        let mut config: Config = figment.extract().map_err(describe)?;
        config.base_dir =
            match path.or_else(|| Some(Path::new(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file())) {
                Some(file) => file
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
                None => PathBuf::from("."),
            };
        let models_file = config.base_dir.join(MODELS_FILE);
        if models_file.is_file() {
            let file: ModelsFile = Figment::from(Toml::file_exact(&models_file))
                .extract()
                .map_err(|e| ConfigError::File {
                    path: models_file.clone(),
                    reason: e.to_string(),
                })?;
            config.models.extend(file.models);
        }
        config.check()?;
        Ok(config)
    }

    /// The models to serve, validated: the configured ones, or the examples
    /// when none is configured.
    pub fn model_specs(&self) -> Result<Vec<ModelSpec>, ConfigError> {
        let configured = if self.models.is_empty() {
            crate::models::example_models()
        } else {
            self.models.clone()
        };
        let base = std::path::absolute(&self.base_dir).unwrap_or_else(|_| self.base_dir.clone());
        let mut seen = std::collections::HashSet::new();
        let mut specs = Vec::new();
        for (i, model) in configured.into_iter().enumerate() {
            let id = model.id.clone();
            let spec = model.validate(&base).map_err(|errors| {
                let (field, messages) = errors.into_iter().next().unwrap_or_default();
                ConfigError::Rule {
                    key: format!("models[{i}].{field}"),
                    rule: messages.join("; "),
                }
            })?;
            if !seen.insert(id.clone()) {
                return Err(ConfigError::Rule {
                    key: format!("models[{i}].id"),
                    rule: format!("`{id}` is used by an earlier model"),
                });
            }
            specs.push(spec);
        }
        Ok(specs)
    }

    /// The autoscaler's rules: its backend, windows, and each pool's
    /// settings.
    fn validate_autoscaler(&self) -> Result<(), ConfigError> {
        use crate::fleet::kubernetes::autoscaler::{plan::Taint, pools};
        let rule = |key: String, rule: &str| {
            Err(ConfigError::Rule {
                key,
                rule: rule.to_owned(),
            })
        };
        let a = &self.kubernetes.autoscaler;
        if !a.enabled {
            return Ok(());
        }
        let key = |k: &str| format!("kubernetes.autoscaler.{k}");
        if self.kubernetes.backend != BackendKind::Kubernetes {
            return rule(key("enabled"), "needs kubernetes.backend = \"kubernetes\"");
        }
        if a.gather_quiet_ms == 0 || a.gather_quiet_ms > a.gather_max_ms {
            return rule(
                key("gather_quiet_ms"),
                "must be at least 1 and at most gather_max_ms",
            );
        }
        if a.scale_down_unneeded_secs == 0 {
            return rule(key("scale_down_unneeded_secs"), "must be at least 1");
        }
        if a.scale_down_confirm_secs == 0 {
            return rule(key("scale_down_confirm_secs"), "must be at least 1");
        }
        if let Some(selector) = &a.selector
            && selector.split(',').any(|p| {
                p.split_once('=')
                    .is_none_or(|(k, v)| k.trim().is_empty() || v.contains('='))
            })
        {
            return rule(
                key("selector"),
                "must be key=value pairs separated by commas",
            );
        }
        for (i, pool) in a.pools.iter().enumerate() {
            let at = |k: &str| format!("kubernetes.autoscaler.pools[{i}].{k}");
            if pool.name.is_empty() {
                return rule(at("name"), "is required: the MachineDeployment's name");
            }
            if let (Some(min), Some(max)) = (pool.min_size, pool.max_size)
                && min > max
            {
                return rule(at("min_size"), "must not be above max_size");
            }
            if let Some(cpu) = &pool.cpu
                && pools::cpu_millis(cpu).is_none()
            {
                return rule(at("cpu"), "must be a CPU quantity such as 4 or 3500m");
            }
            if let Some(memory) = &pool.memory
                && pools::bytes(memory).is_none()
            {
                return rule(at("memory"), "must be a memory quantity such as 16Gi");
            }
            if let Some(bad) = pool
                .taints
                .iter()
                .flatten()
                .find(|t| Taint::parse(t).is_none())
            {
                return rule(
                    at("taints"),
                    &format!(
                        "`{bad}` is not key=value:Effect (NoSchedule, PreferNoSchedule or NoExecute)"
                    ),
                );
            }
        }
        Ok(())
    }

    /// Rules that types alone do not express.
    fn check(&self) -> Result<(), ConfigError> {
        let rule = |key: &str, rule: &str| {
            Err(ConfigError::Rule {
                key: key.to_owned(),
                rule: rule.to_owned(),
            })
        };
        let db = &self.database;
        if !(db.is_sqlite()
            || db.url.starts_with("postgres://")
            || db.url.starts_with("postgresql://"))
        {
            return rule(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            );
        }
        if let Err(e) = url::Url::parse(&db.url) {
            return rule("database.url", &format!("is not a valid URL: {e}"));
        }
        if let Some(schema) = &db.schema {
            if db.is_sqlite() {
                return rule("database.schema", "is only for PostgreSQL");
            }
            let valid = schema.len() <= 63
                && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && schema
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return rule(
                    "database.schema",
                    "must be 1-63 characters: lower-case letters, digits and `_`, not starting with a digit",
                );
            }
        }
        if let Some(url) = &self.kubernetes.api_url
            && url::Url::parse(url).is_err()
        {
            return rule("kubernetes.api_url", "is not a valid URL");
        }
        if self.kubernetes.start_timeout_secs == 0 {
            return rule("kubernetes.start_timeout_secs", "must be at least 1");
        }
        if self.kubernetes.lease_duration_secs < 3 {
            return rule("kubernetes.lease_duration_secs", "must be at least 3");
        }
        self.validate_autoscaler()?;
        if self.kubernetes.backend == BackendKind::Kubernetes
            && let Some(model) = self
                .model_specs()?
                .into_iter()
                .find(|m| m.enabled && m.kubernetes.is_none())
        {
            return rule(
                "kubernetes.backend",
                &format!(
                    "is kubernetes, but model `{}` has no kubernetes settings (give it a `kubernetes` table, or disable it)",
                    model.id
                ),
            );
        }
        let retention = &self.retention;
        if !(60..=7 * 24 * 3600).contains(&retention.interval_secs) {
            return rule(
                "retention.interval_secs",
                "must be between 60 and 604800 (a week)",
            );
        }
        // Each id of a batch is a bound value: SQLite takes at most 32766.
        if !(1..=10_000).contains(&retention.batch_size) {
            return rule("retention.batch_size", "must be between 1 and 10000");
        }
        if db.max_connections == 0 {
            return rule("database.max_connections", "must be at least 1");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return rule("log.level", &format!("is not a valid filter: {e}"));
        }
        let auth = &self.auth;
        const TEN_YEARS: u64 = 10 * 366 * 24 * 3600;
        let lifetime_rule = "must be between 60 and 316224000 (10 years)";
        if !(60..=TEN_YEARS).contains(&auth.session_lifetime_secs) {
            return rule("auth.session_lifetime_secs", lifetime_rule);
        }
        if !(60..=TEN_YEARS).contains(&auth.anonymous_session_lifetime_secs) {
            return rule("auth.anonymous_session_lifetime_secs", lifetime_rule);
        }
        if auth.rate_limit_per_minute == 0 {
            return rule("auth.rate_limit_per_minute", "must be at least 1");
        }
        if auth.rate_limit_burst == 0 {
            return rule("auth.rate_limit_burst", "must be at least 1");
        }
        self.model_specs()?;
        let gql = &self.graphql;
        if gql.max_depth == 0 {
            return rule("graphql.max_depth", "must be at least 1");
        }
        if gql.max_complexity == 0 {
            return rule("graphql.max_complexity", "must be at least 1");
        }
        if gql.max_body_bytes < 1024 {
            return rule("graphql.max_body_bytes", "must be at least 1024");
        }
        Ok(())
    }
}

/// Turns figment's errors into one line per problem, each naming its key.
fn describe(errors: figment::Error) -> ConfigError {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            if key.is_empty() {
                e.kind.to_string()
            } else {
                format!("key `{key}`: {}", e.kind)
            }
        })
        .collect();
    ConfigError::Value(lines.join("; "))
}

/// Maps environment variables onto configuration keys.
fn env_provider(
    env: impl IntoIterator<Item = (String, String)>,
) -> Serialized<figment::value::Dict> {
    let mut dict = figment::value::Dict::new();
    let mut put = |key: String, value: String| {
        // Parsed as figment parses its own environment values, so numbers
        // and booleans keep their types.
        let parsed: figment::value::Value = match value.parse() {
            Ok(v) => v,
            Err(never) => match never {},
        };
        insert_path(&mut dict, &key, parsed);
    };
    // The general form first, so that the shorter names win when both set
    // the same key, whatever order the environment lists them in.
    let mut shorthands = Vec::new();
    for (name, value) in env {
        if name == "DATABASE_URL" {
            shorthands.push(("database.url".to_owned(), value));
        } else if let Some((_, key)) = ENV_SHORTHANDS.iter().find(|(n, _)| *n == name) {
            shorthands.push(((*key).to_owned(), value));
        } else if let Some(rest) = name.strip_prefix("MODELFLEET_")
            && rest.contains("__")
        {
            put(rest.to_ascii_lowercase().replace("__", "."), value);
        }
    }
    for (key, value) in shorthands {
        put(key, value);
    }
    Serialized::defaults(dict)
}

fn insert_path(dict: &mut figment::value::Dict, key: &str, value: figment::value::Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_owned())
                .or_insert_with(|| figment::value::Dict::new().into());
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_need_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("absent.toml");
        // An explicit missing file is an error; no file at all is not.
        assert!(Config::load_from(Some(&missing), env(&[])).is_err());
        let config = Config::load_from(None, env(&[])).expect("defaults load");
        assert_eq!(config.server.bind.to_string(), "127.0.0.1:8080");
        assert!(config.database.is_sqlite());
        assert_eq!(config.log.format, LogFormat::Text);
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "[server]\nbind = \"127.0.0.1:9000\"\n[auth]\nrate_limit_per_minute = 5\n",
        )
        .expect("write");
        let config = Config::load_from(
            Some(&path),
            env(&[
                ("MODELFLEET_BIND", "0.0.0.0:7000"),
                ("DATABASE_URL", "postgres://u@h/db"),
                ("MODELFLEET_AUTH__RATE_LIMIT_BURST", "3"),
                ("MODELFLEET_LOG_FORMAT", "json"),
                ("MODELFLEET_UNRELATED", "ignored"),
            ]),
        )
        .expect("load");
        assert_eq!(config.server.bind.to_string(), "0.0.0.0:7000");
        assert_eq!(config.database.url, "postgres://u@h/db");
        assert_eq!(config.auth.rate_limit_per_minute, 5);
        assert_eq!(config.auth.rate_limit_burst, 3);
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn models_come_from_the_file_and_a_models_toml_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = |id: &str| {
            format!(
                "[[models]]\nid = \"{id}\"\n[models.local]\ncommand = [\"run\"]\nworkdir = \"m/{id}\"\n"
            )
        };
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, model("one")).expect("write");
        std::fs::write(dir.path().join(MODELS_FILE), model("two")).expect("write");
        let config = Config::load_from(Some(&path), env(&[])).expect("load");
        let specs = config.model_specs().expect("valid");
        let ids: Vec<&str> = specs.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["one", "two"]);
        let workdir = specs[1].local.as_ref().expect("local").workdir.clone();
        assert!(
            workdir.ends_with("m/two") && workdir.is_absolute(),
            "{workdir:?}"
        );
        // The same id twice is refused, naming the second.
        std::fs::write(dir.path().join(MODELS_FILE), model("one")).expect("write");
        let err = Config::load_from(Some(&path), env(&[]))
            .expect_err("dup")
            .to_string();
        assert!(err.contains("models[1].id"), "{err}");
        // With no model anywhere, the examples are served.
        let bare = Config::load_from(None, env(&[])).expect("load");
        let ids: Vec<String> = bare
            .model_specs()
            .expect("valid")
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["iris", "sleepy"]);
    }

    #[test]
    fn written_models_read_back_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.toml");
        let examples = crate::models::example_models();
        std::fs::write(&path, models_toml(&examples).expect("toml")).expect("write");
        let config = Config::load_from(Some(&path), env(&[])).expect("load");
        let read: Vec<_> = config.model_specs().expect("valid");
        let want: Vec<_> = examples
            .into_iter()
            .map(|m| m.validate(dir.path()).expect("valid"))
            .collect();
        assert_eq!(read, want);
    }

    #[test]
    fn the_example_file_lists_valid_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/modelfleet.toml");
        let config = Config::load_from(Some(&path), env(&[])).expect("the example loads");
        assert_eq!(config.retention.requests_days, 7);
        assert_eq!(config.retention.interval_secs, 3600);
    }

    #[test]
    fn bad_values_name_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.toml");
        let cases = [
            ("[server]\nbind = \"nowhere\"\n", "server.bind"),
            ("[server]\nbnd = \"127.0.0.1:1\"\n", "bnd"),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            (
                "[auth]\nsession_lifetime_secs = -5\n",
                "auth.session_lifetime_secs",
            ),
            (
                "[auth]\nsession_lifetime_secs = 5\n",
                "auth.session_lifetime_secs",
            ),
            ("[database]\nschema = \"x\"\n", "database.schema"),
            (
                "[database]\nurl = \"postgres://h/db\"\nschema = \"Robert'); DROP\"\n",
                "database.schema",
            ),
            ("[database]\nurl = \"mysql://h/db\"\n", "database.url"),
            (
                "[database]\nurl = \"postgres://[oops/db\"\n",
                "database.url",
            ),
            (
                "[auth]\nsession_lifetime_secs = 100000000000000\n",
                "auth.session_lifetime_secs",
            ),
            (
                "[[models]]\nid = \"Bad Id\"\n[models.local]\ncommand = [\"x\"]\nworkdir = \".\"\n",
                "models[0].id",
            ),
            ("[graphql]\nmax_depth = 0\n", "graphql.max_depth"),
            (
                "[retention]\ninterval_secs = 5\n",
                "retention.interval_secs",
            ),
            ("[retention]\nbatch_size = 0\n", "retention.batch_size"),
        ];
        for (text, key) in cases {
            std::fs::write(&path, text).expect("write");
            let err = Config::load_from(Some(&path), env(&[]))
                .expect_err(text)
                .to_string();
            assert!(
                err.contains(key),
                "{text:?} gave {err:?}, which does not name {key}"
            );
        }
        let config = Config::load_from(None, env(&[("DATABASE_URL", "postgres://u:hunter2@h/db")]))
            .expect("load");
        assert!(!format!("{config:?}").contains("hunter2"));
        let err = Config::load_from(None, env(&[("MODELFLEET_BIND", "x")]))
            .expect_err("bad env")
            .to_string();
        assert!(err.contains("`server.bind`"), "{err}");
        // The example models have no pod settings: they cannot run as pods.
        let err = Config::load_from(None, env(&[("MODELFLEET_BACKEND", "kubernetes")]))
            .expect_err("no kubernetes settings")
            .to_string();
        assert!(
            err.contains("`kubernetes.backend`") && err.contains("`iris`"),
            "{err}"
        );
        for (key, value, named) in [
            (
                "MODELFLEET_KUBERNETES__API_URL",
                "not a url",
                "`kubernetes.api_url`",
            ),
            (
                "MODELFLEET_KUBERNETES__START_TIMEOUT_SECS",
                "0",
                "`kubernetes.start_timeout_secs`",
            ),
            ("MODELFLEET_BACKEND", "docker", "kubernetes.backend"),
        ] {
            let err = Config::load_from(None, env(&[(key, value)]))
                .expect_err("refused")
                .to_string();
            assert!(err.contains(named), "{key}: {err}");
        }
        let err = Config::load_from(None, env(&[("MODELFLEET_GRAPHQL__MAX_DEPTH", "abc")]))
            .expect_err("bad env")
            .to_string();
        assert!(
            err.contains("key `graphql.max_depth`") && !err.contains("src/"),
            "{err}"
        );
        let config = Config::load_from(
            None,
            env(&[
                ("MODELFLEET_BIND", "127.0.0.1:1"),
                ("MODELFLEET_SERVER__BIND", "127.0.0.1:2"),
            ]),
        )
        .expect("load");
        assert_eq!(config.server.bind.port(), 1, "the shorthand wins");
    }
}
